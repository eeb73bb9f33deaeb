"""Oracle v2 classes (issue 14.4) on stored real pw.x text, and what the ladder does next."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mlip_autopipec.oracle import DEFAULT_LADDERS, PERMANENT, FailureClass, diagnose, plan_next
from mlip_autopipec.oracle.ladder import base_params

DATA = Path(__file__).resolve().parents[1] / "data" / "pwx"


class Entry:
    def __init__(self, failure_class: str, message: str, params_diff: dict[str, Any]):
        self.failure_class = failure_class
        self.message = message
        self.step = None
        self.params_diff = params_diff
        self.scf_history_ev: tuple[float, ...] = ()


def _case(case: str) -> tuple[dict[str, Any], Any]:
    def read(name: str) -> str:
        p = DATA / case / name
        return p.read_text(errors="replace") if p.is_file() else ""

    meta = json.loads(read("meta.json"))
    diag = diagnose(
        meta["returncode"], read("espresso.pwo"), read("espresso.err"), read("CRASH"), False
    )
    return meta, diag


BASE = base_params(
    {"input_data": {"system": {"ecutwfc": 30}, "electrons": {"mixing_beta": 0.4}}, "kspacing": 0.3}
)


@pytest.mark.parametrize(
    ("case", "cls", "diag_in_use"),
    [
        ("broyden_factorization", FailureClass.MIXING_FAILED, None),
        ("ppcg_qr_failed", FailureClass.DIAGONALIZATION, "ppcg"),
        ("ni2_ppcg_zhegvd", FailureClass.DIAGONALIZATION, "ppcg"),
        ("dexx_negative", FailureClass.DEXX_NEGATIVE, None),
        ("npools_too_high", FailureClass.PARALLELIZATION, None),
        ("h2_ndiag_too_few_bands", FailureClass.PARALLELIZATION, None),
        ("si_more_bands_than_pws", FailureClass.INPUT_ERROR, None),
        ("g_par", FailureClass.INPUT_ERROR, None),
        # real pw.x 6.7 runs (tests/data/make_pwx_outputs.py): mpirun -np 2 with -nk/-nb/-nt
        ("si_nk4_pools_out_of_range", FailureClass.PARALLELIZATION, None),
        ("si_nb4_band_groups_out_of_range", FailureClass.PARALLELIZATION, None),
        ("si_nt4_task_groups", FailureClass.PARALLELIZATION, None),
        ("si_berry_g_par", FailureClass.INPUT_ERROR, None),
    ],
)
def test_class_and_next_step(case: str, cls: str, diag_in_use: str | None) -> None:
    meta, diag = _case(case)
    assert diag.failure_class == cls == meta["expected_class"]
    diff = {} if diag_in_use is None else {"electrons.diagonalization": diag_in_use}
    plan = plan_next(BASE, DEFAULT_LADDERS, 6, [Entry(cls, diag.message, diff)])
    if cls in PERMANENT or cls == FailureClass.INPUT_ERROR:
        # nothing in a namelist fixes these: quarantined after this one pw.x run
        assert plan is None
        return
    assert plan is not None and plan.step is not None
    changed = plan.params.get("electrons.diagonalization")
    if cls == FailureClass.MIXING_FAILED:
        # a mixing problem: the mixer changes, not the eigensolver
        assert changed is None
        assert plan.params["electrons.mixing_ndim"] == 4
        assert plan.params["electrons.mixing_beta"] == 0.2
        assert plan.restart == "scratch"
    else:
        # the eigensolver that failed is replaced by another one
        assert changed is not None and changed != diag_in_use


def test_ppcg_qr_failure_is_caught_without_an_error_block() -> None:
    """` [Q, R] = qr(X, 0) failed`, then a plain STOP: exit 0, no error block, no
    convergence line. Before it was `crashed` (output truncated)."""
    pwo = (DATA / "ppcg_qr_failed" / "espresso.pwo").read_text()
    assert "Error in routine" not in pwo and "convergence" not in pwo
    for crash in ("", "[Q, R] = qr(X, 0) failed\n"):
        diag = diagnose(0, pwo, "", crash, False)
        assert diag.failure_class == FailureClass.DIAGONALIZATION
        assert diag.message == "[Q, R] = qr(X, 0) failed"


def test_complete_converged_output_wins_over_the_walltime_flag() -> None:
    pwo = (DATA / "si_converged" / "espresso.pwo").read_text()
    for rc in (0, -9, -15, 137):
        assert diagnose(rc, pwo, timed_out=True).failure_class == FailureClass.CONVERGED
    # without JOB DONE the output is not complete: the kill decides
    cut = pwo[: pwo.index("JOB DONE")]
    assert diagnose(-9, cut, timed_out=True).failure_class == FailureClass.WALLTIME
    # a non-zero exit without the timeout is still not trusted
    assert diagnose(1, pwo).failure_class == FailureClass.CRASHED


def test_new_retryable_classes_have_no_cg_crash_retry() -> None:
    """No useless 'crashed -> cg' retry for the classes that used to be crashed."""
    for cls in (FailureClass.MIXING_FAILED,):
        steps = DEFAULT_LADDERS[cls]
        assert steps and all("diagonalization" not in str(s.get("set")) for s in steps)
    for cls in (FailureClass.DEXX_NEGATIVE, FailureClass.PARALLELIZATION):
        assert cls in PERMANENT and cls not in DEFAULT_LADDERS


def test_idle_pools_in_pwx_67_are_a_message_not_a_failure() -> None:
    """More pools than k-points: pw.x 6.4 stops (aiida's fixture, `parallelization`), 6.7
    prints `suboptimal parallelization: some nodes have no k-points` and converges. The
    same words outside an error block must not fail a good label."""
    meta, diag = _case("si_nk2_idle_pool_converged")
    pwo = (DATA / "si_nk2_idle_pool_converged" / "espresso.pwo").read_text()
    assert "some nodes have no k-points" in pwo and "Error in routine" not in pwo
    assert diag.failure_class == FailureClass.CONVERGED == meta["expected_class"]
    assert math.isfinite(meta["energy"])  # the label the run gave (ASE's reading)
    assert meta["argv"][-2:] == ["-nk", "2"]
    _, diag_old = _case("npools_too_high")
    assert diag_old.failure_class == FailureClass.PARALLELIZATION


@pytest.mark.parametrize(
    "case",
    ["si_nk4_pools_out_of_range", "si_nb4_band_groups_out_of_range", "si_nt4_task_groups"],
)
def test_parallel_option_errors_name_the_option_and_are_never_retried(case: str) -> None:
    """Real pw.x 6.7 output of a wrong -nk/-nb/-nt: the routine is pw.x's parallel setup
    (before this table knew them: `input_error` from the word 'invalid', or `crashed`),
    and the structure is quarantined after this run with the message kept."""
    meta, diag = _case(case)
    assert diag.failure_class == FailureClass.PARALLELIZATION
    assert diag.message == meta["message"]
    assert diag.message.startswith("Error in routine mp_")
    assert "-n" in meta["argv"][-2]
    assert FailureClass.PARALLELIZATION in PERMANENT


def test_berry_phase_g_par_from_a_real_run_keeps_the_pwx_block() -> None:
    """pw.x 6.7's G_par banner is followed by `Error in routine c_phase (1): wrong g`:
    the block decides (input_error); the banner line is in the output too."""
    meta, diag = _case("si_berry_g_par")
    pwo = (DATA / "si_berry_g_par" / "espresso.pwo").read_text()
    assert "probably because G_par is NOT a reciprocal lattice vector" in pwo
    assert diag.failure_class == FailureClass.INPUT_ERROR
    assert diag.message == "Error in routine c_phase (1): wrong g" == meta["message"]
