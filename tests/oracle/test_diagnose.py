"""Diagnosis on stored real pw.x outputs (tests/data/pwx, made by make_pwx_outputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.units import Ry

from mlip_autopipec.oracle import FailureClass, diagnose, parse_scf, scf_trend
from mlip_autopipec.oracle.diagnose import parse_version

DATA = Path(__file__).resolve().parents[1] / "data" / "pwx"
CASES = sorted(p.name for p in DATA.iterdir() if (p / "meta.json").is_file())


def _read(case: str, name: str) -> str:
    p = DATA / case / name
    return p.read_text(errors="replace") if p.is_file() else ""


def _diagnose(case: str, drop_pwo_tail: bool = False):  # type: ignore[no-untyped-def]
    meta = json.loads(_read(case, "meta.json"))
    return meta, diagnose(
        meta["returncode"],
        _read(case, "espresso.pwo"),
        _read(case, "espresso.err"),
        _read(case, "CRASH"),
        meta["timed_out"],
    )


def test_all_stored_cases_present() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES)
def test_stored_output_gets_its_class(case: str) -> None:
    meta, diag = _diagnose(case)
    assert diag.failure_class == meta["expected_class"]
    assert diag.message == meta["message"]


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("si_maxstep", "convergence NOT achieved after   3 iterations: stopping"),
        ("al_fixed_occupations", "charge is wrong: smearing is needed"),
        ("xc_conflict", "conflicting values for icorr"),
        ("fr_pp_needs_spinorbit", "FR-PP please use lspinorb=.true."),
        ("lsda_fixed_occupations", "fixed occupations and lsda need tot_magnetization"),
        ("ni2_s_matrix", "S matrix not positive definite"),
        ("ni2_max_seconds", "Maximum CPU time exceeded"),
    ],
)
def test_message_is_the_exact_pwx_line(case: str, line: str) -> None:
    _, diag = _diagnose(case)
    pwo_lines = {ln.strip() for ln in _read(case, "espresso.pwo").splitlines()}
    assert line in pwo_lines  # the line really is in pw.x's output ...
    assert diag.message.endswith(line)  # ... and kept verbatim


def test_cdiaghg_number_varies() -> None:
    pwo = _read("ni2_s_matrix", "espresso.pwo")
    for n in (1, 35, 39, 123):
        changed = pwo.replace("cdiaghg (53)", f"cdiaghg ({n})")
        d = diagnose(1, changed, "", "", False)
        assert d.failure_class == FailureClass.DIAGONALIZATION
        assert f"cdiaghg ({n})" in d.message


def test_lost_pwo_message_recovered_from_crash_file() -> None:
    """Without GFORTRAN_UNBUFFERED_ALL the .pwo stops before the error: CRASH has it."""
    pwo = _read("al_fixed_occupations", "espresso.pwo")
    cut = pwo[: pwo.index(" %%%%")]
    d = diagnose(1, cut, "", _read("al_fixed_occupations", "CRASH"), False)
    assert d.failure_class == FailureClass.CHARGE_WRONG
    assert d.message == "Error in routine electrons (1): charge is wrong: smearing is needed"


def test_error_block_wins_over_timeout() -> None:
    # pw.x printed its error and then hung in MPI_Abort: the error is the cause
    _, d = _diagnose("xc_conflict")
    d2 = diagnose(None, _read("xc_conflict", "espresso.pwo"), "", "", True)
    assert d2.failure_class == d.failure_class == FailureClass.XC_CONFLICT


def test_truncated_converged_output_is_crashed() -> None:
    pwo = _read("si_converged", "espresso.pwo")
    cut = pwo[: pwo.index("JOB DONE")]
    assert diagnose(0, cut, "", "", False).failure_class == FailureClass.CRASHED
    assert diagnose(0, pwo, "", "", False).failure_class == FailureClass.CONVERGED
    # a converged text with a non-zero exit is not trusted either
    assert diagnose(1, pwo, "", "", False).failure_class == FailureClass.CRASHED


def test_signals_and_memory() -> None:
    assert diagnose(137, "", "", "", False).failure_class == FailureClass.OUT_OF_MEMORY
    assert diagnose(-9, "", "", "", False).failure_class == FailureClass.OUT_OF_MEMORY
    oom = diagnose(1, "", "forrtl: severe (41): insufficient virtual memory\n", "", False)
    assert oom.failure_class == FailureClass.OUT_OF_MEMORY
    assert oom.message == "forrtl: severe (41): insufficient virtual memory"
    assert diagnose(-11, "", "", "", False).failure_class == FailureClass.CRASHED
    assert diagnose(None, "", "", "", False).failure_class == FailureClass.CRASHED
    assert diagnose(None, "", "", "", True).failure_class == FailureClass.WALLTIME


def test_scf_history_in_ev() -> None:
    pwo = _read("si_converged", "espresso.pwo")
    info = parse_scf(pwo)
    assert info.n_scf == 6
    assert len(info.scf_history_ev) == 6
    # first iteration line of the stored file, converted from Ry
    first = next(ln for ln in pwo.splitlines() if "estimated scf accuracy" in ln)
    assert info.scf_history_ev[0] == pytest.approx(float(first.split()[-2]) * Ry)
    assert info.scf_accuracy_ev == info.scf_history_ev[-1]
    assert info.scf_accuracy_ev is not None and info.scf_accuracy_ev < 1e-6
    assert parse_version(pwo) is not None and parse_version(pwo).startswith("6.")  # type: ignore[union-attr]


def test_not_converged_history() -> None:
    info = parse_scf(_read("si_maxstep", "espresso.pwo"))
    assert info.n_scf == 3
    assert len(info.scf_history_ev) == 3
    assert info.scf_history_ev[-1] < info.scf_history_ev[0]


@pytest.mark.parametrize(
    ("case", "trend"),
    [
        ("fe2_beta09_decreasing", "decreasing"),
        ("fe2_beta095_oscillating", "oscillating"),
        ("si8_gamma_erratic", "stagnant"),
        ("si_maxstep", "none"),
    ],
)
def test_scf_trend_of_stored_trajectories(case: str, trend: str) -> None:
    info = parse_scf(_read(case, "espresso.pwo"))
    assert scf_trend(info.scf_history_ev) == trend


def test_unprintable_accuracy_is_skipped() -> None:
    pwo = _read("si_maxstep", "espresso.pwo")
    first = next(ln for ln in pwo.splitlines() if "estimated scf accuracy" in ln)
    broken = pwo.replace(first, "     estimated scf accuracy    <   **********  Ry", 1)
    info = parse_scf(broken)
    assert info.n_scf == 3 and len(info.scf_history_ev) == 2


def test_allocation_error_block_is_out_of_memory() -> None:
    # pw.x's form of an allocation failure, spliced into a real output in place of the
    # charge error (the block layout and routine-number handling are what is tested)
    pwo = _read("al_fixed_occupations", "espresso.pwo")
    pwo = pwo.replace("Error in routine electrons (1):", "Error in routine allocate_fft (12):")
    pwo = pwo.replace("charge is wrong: smearing is needed", "cannot allocate psic")
    d = diagnose(1, pwo, "", "", False)
    assert d.failure_class == FailureClass.OUT_OF_MEMORY
    assert d.message == "Error in routine allocate_fft (12): cannot allocate psic"
