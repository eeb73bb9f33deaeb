"""Isolated-atom references (oracle/isolated.py): the box search, pw.x on the run's executor,
the box convergence record, and a resumed search that relabels nothing it has."""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracle_testlib import PSEUDO, needs_pwx, oracle_cfg

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.execution.local import local_executor
from mlip_autopipec.execution.tasks import EXECUTION_JSON
from mlip_autopipec.oracle.isolated import (
    RECORD_FILE,
    REFERENCE_DIR,
    box_search,
    isolated_atom_references,
    reference_summary,
    run_isolated_attempt,
)
from mlip_autopipec.signals import Caught
from mlip_autopipec.stages import isolated_atoms_on

# -- the box search (pure) ---------------------------------------------------------------


def _search(first: float, step: float, largest: float, energy: Any, tol: float) -> Any:
    """Run :func:`box_search` to the end with ``energy(box)``; returns (outcome, asked)."""
    known: dict[float, float] = {}
    asked: list[float] = []
    while True:
        missing, outcome = box_search(first, step, largest, known, tol)
        if outcome is not None:
            return outcome, asked
        assert missing and not set(missing) & set(known)
        asked += missing
        known.update({b: energy(b) for b in missing})


@given(
    first=st.floats(5, 20),
    step=st.floats(0.5, 6),
    extra=st.integers(1, 6),
    amplitude=st.floats(-2.0, 2.0),
    decay=st.floats(0.3, 5.0),
    tol=st.floats(1e-5, 1e-2),
)
def test_box_search_stops_at_the_first_converged_pair(
    first: float, step: float, extra: int, amplitude: float, decay: float, tol: float
) -> None:
    largest = first + extra * step + 1e-7

    def energy(box: float) -> float:  # a neutral atom: exponential approach to the limit
        return -100.0 + amplitude * math.exp(-box / decay)

    outcome, asked = _search(first, step, largest, energy, tol)
    boxes = outcome.boxes
    assert list(boxes) == sorted(set(asked)) and len(boxes) >= 2
    assert all(b <= largest + 1e-6 for b in boxes)
    assert all(abs(b - a - step) < 1e-5 for a, b in zip(boxes, boxes[1:], strict=False))
    assert (outcome.checked, outcome.used) == boxes[-2:]
    assert outcome.difference_ev == pytest.approx(energy(boxes[-1]) - energy(boxes[-2]))
    # every earlier pair was not converged; the last one is, unless the cap came first
    for a, b in zip(boxes, boxes[1:-1], strict=False):
        assert abs(energy(b) - energy(a)) > tol
    assert outcome.converged == (abs(outcome.difference_ev) <= tol)
    if not outcome.converged:
        assert boxes[-1] + step > largest


def test_box_search_needs_a_second_box() -> None:
    with pytest.raises(ValueError, match="no box to compare"):
        box_search(12, 4, 14, {}, 0.001)


# -- real pw.x: one isolated Si atom in 6 and 7 Å boxes, labelled on a local executor -----

THEORY = {"ecutwfc": 15, "ecutrho": 60, "occupations": "fixed", "other": {}}
PSEUDOS = {"Si": PSEUDO / "Si.pz-vbc.UPF"}
BOXES = {"first": 6.0, "step": 1.0, "largest": 7.0, "tolerance_mev": 500.0}


def _cfg() -> dict[str, Any]:
    return oracle_cfg(system={"ecutwfc": 15}, electrons={"conv_thr": 1e-9})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("isolated")
    with local_executor(2) as executor:
        run = isolated_atoms_on(executor, Caught())
        records = isolated_atom_references(["Si"], THEORY, _cfg(), PSEUDOS, run_dir, BOXES, run)
    return run_dir, records


def _refuse(requests: Any) -> list[Any]:
    raise AssertionError(f"pw.x was asked to run again: {requests}")


@pytest.mark.pwx
@needs_pwx
def test_isolated_atoms_ran_on_the_executor(labelled: tuple[Path, dict[str, Any]]) -> None:
    run_dir, records = labelled
    record = records["Si"]
    assert [lab["box"] for lab in record["labels"]] == [6.0, 7.0]
    for lab in record["labels"]:
        ran = lab["execution"]
        # a worker of the run's executor (local: a thread of the pool), not the driver's
        assert ran["thread"].startswith("attempt"), ran
        assert ran["thread"] != threading.current_thread().name
        assert ran["seconds"] > 0
        workdir = run_dir / lab["workdir"]
        assert json.loads((workdir / EXECUTION_JSON).read_text()) == ran
        assert "JOB DONE" in (workdir / "attempt-01" / "espresso.pwo").read_text()
    assert record["execution"] == record["labels"][-1]["execution"]


@pytest.mark.pwx
@needs_pwx
def test_box_convergence_is_recorded(labelled: tuple[Path, dict[str, Any]]) -> None:
    run_dir, records = labelled
    record = records["Si"]
    small, big = (lab["energy"] for lab in record["labels"])
    conv = record["box_convergence"]
    assert conv["boxes_ang"] == [6.0, 7.0] and conv["energies_ev"] == [small, big]
    assert (conv["checked_box_ang"], conv["used_box_ang"]) == (6.0, 7.0)
    assert conv["difference_mev"] == pytest.approx((big - small) * 1000)
    assert conv["converged"] and conv["tolerance_mev"] == 500.0
    # the reference is the larger box's energy, an isolated Si atom's: about -102 eV (LDA vbc)
    assert record["energy"] == big and -104 < big < -100
    assert record["settings"]["box_ang"] == pytest.approx([7.0, 7.35, 7.7])
    on_disk = json.loads((run_dir / REFERENCE_DIR / RECORD_FILE).read_text())
    assert on_disk["Si"] == record
    summary = reference_summary(records)["elements"]["Si"]
    assert summary["difference_mev"] == conv["difference_mev"] and summary["energy"] == big


@pytest.mark.pwx
@needs_pwx
def test_a_resumed_search_labels_only_the_missing_box(
    labelled: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, records = labelled
    # the same settings again: every box is in isolated_atoms.json, no pw.x runs
    again = isolated_atom_references(["Si"], THEORY, _cfg(), PSEUDOS, run_dir, BOXES, _refuse)
    assert again == records
    # a tolerance no 7 Å box meets: only the 8 Å box is labelled, then the cap stops it
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ran: list[float] = []

    def count(requests: Any) -> list[Any]:
        ran.extend(float(req.atoms.cell[0][0]) for req in requests)
        return [run_isolated_attempt(req) for req in requests]

    tight = {**BOXES, "largest": 8.0, "tolerance_mev": 1e-9}
    with pytest.raises(TrainerError, match="not converged with the box") as caught:
        isolated_atom_references(["Si"], THEORY, _cfg(), PSEUDOS, copy, tight, count)
    assert ran == [8.0]
    assert "reference_box_max" in str(caught.value) and "8 Å" in str(caught.value)
    kept = json.loads((copy / REFERENCE_DIR / RECORD_FILE).read_text())["Si"]
    assert [lab["box"] for lab in kept["labels"]] == [6.0, 7.0, 8.0]
    # a changed setting (the cutoff) is another atom: nothing cached applies
    other = {**THEORY, "ecutwfc": 16, "ecutrho": 64}
    with pytest.raises(AssertionError, match="asked to run again"):
        isolated_atom_references(["Si"], other, _cfg(), PSEUDOS, run_dir, BOXES, _refuse)


@pytest.mark.pwx
@needs_pwx
def test_a_record_of_before_the_box_check_is_reused(
    labelled: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, records = labelled
    small = records["Si"]["labels"][0]
    # what the previous version wrote: one record per element, the box in its settings
    old = {k: v for k, v in small.items() if k not in ("box", "execution")}
    folder = tmp_path / REFERENCE_DIR
    folder.mkdir()
    (folder / RECORD_FILE).write_text(json.dumps({"Si": old}))
    ran: list[float] = []

    def count(requests: Any) -> list[Any]:
        ran.extend(float(req.atoms.cell[0][0]) for req in requests)
        return [run_isolated_attempt(req) for req in requests]

    again = isolated_atom_references(["Si"], THEORY, _cfg(), PSEUDOS, tmp_path, BOXES, count)
    assert ran == [7.0]  # the 6 Å atom of the old record is not labelled again
    assert again["Si"]["labels"][0]["energy"] == small["energy"]
    assert again["Si"]["energy"] == pytest.approx(records["Si"]["energy"], abs=1e-6)


@pytest.mark.pwx
@pytest.mark.slow
@needs_pwx
def test_a_fixed_occupation_atom_is_rescued_within_its_theory(tmp_path: Path) -> None:
    """Si with fixed occupations and a short attempt budget (electron_maxstep 12): in the 9 Å
    box its occupations flip between near-degenerate p orbitals and the SCF fails. The labels'
    ladder would add smearing at the second attempt (a reference of another theory, refused);
    the atom's ladder skips those steps and converges with the ones that keep the theory."""
    from mlip_autopipec.oracle.ladder import DEFAULT_LADDERS, theory_preserving

    cfg = oracle_cfg(system={"ecutwfc": 15}, electrons={"conv_thr": 1e-9, "electron_maxstep": 12})
    boxes = {"first": 8.0, "step": 1.0, "largest": 9.0, "tolerance_mev": 500.0}
    with local_executor(2) as executor:
        run = isolated_atoms_on(executor, Caught())
        record = isolated_atom_references(["Si"], THEORY, cfg, PSEUDOS, tmp_path, boxes, run)
    hard = record["Si"]["labels"][1]
    assert hard["box"] == 9.0 and hard["attempts"] > 2
    pwis = sorted((tmp_path / hard["workdir"]).glob("attempt-*/espresso.pwi"))
    assert len(pwis) == hard["attempts"]
    for pwi in pwis:
        text = pwi.read_text()
        assert "occupations      = 'fixed'" in text and "smearing" not in text, pwi
    first = (tmp_path / hard["workdir"] / "attempt-01" / "espresso.pwo").read_text()
    assert "convergence NOT achieved after  12 iterations" in first
    assert hard["theory_key"] == record["Si"]["labels"][0]["theory_key"]
    assert hard["theory_key"].endswith("fixed nspin=2 +tot_magnetization")
    assert hard["settings"]["occupations"] == "fixed"
    # what was left out: exactly the steps marked as changing the theory
    kept = theory_preserving(DEFAULT_LADDERS)
    for cls, steps in DEFAULT_LADDERS.items():
        assert len(kept[cls]) == sum(1 for s in steps if not s.get("changes_theory"))
        assert not any(s.get("changes_theory") for s in kept[cls])
