"""``status``, ``export`` and the report show the theory of every label and the relabel
(issue 11.3), on a real run store: 2-atom Si cells labelled by the real pw.x, one rescued
with smearing, the others relabelled with it (``theory_runs.py``; ~10 s of pw.x)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlip_autopipec.lifecycle.status import render_table, status_json
from mlip_autopipec.lifecycle.theories import run_theories

from .pwx_driver import PSEUDO_DIR
from .theory_runs import TheoryRun, record_fit

pytestmark = pytest.mark.skipif(
    shutil.which("pw.x") is None or not (PSEUDO_DIR / "Si.pz-vbc.UPF").is_file(),
    reason="pw.x or Si.pz-vbc.UPF missing",
)

FIXED = "LDA ecut=12/48Ry fixed nspin=1"
SMEARED = "LDA ecut=12/48Ry mv:0.02Ry nspin=1"
PHASES = ("labelled", "pending", "failed", "relabelled", "fitted")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the run directory after each phase (module text of theory_runs.py)."""
    root = tmp_path_factory.mktemp("theories")
    work = root / "run"
    out: dict[str, Path] = {}
    with ThreadPoolExecutor(2) as executor:
        run = TheoryRun(work, executor)
        run.labelled()
        for phase in PHASES:
            if phase in ("pending", "failed"):
                run.relabel(phase)
            elif phase == "relabelled":
                run.relabel("labelled")
            elif phase == "fitted":
                record_fit(work)
            out[phase] = root / phase
            shutil.copytree(work, out[phase])
    return out


def _table(run_dir: Path) -> str:
    return render_table(status_json(run_dir), None, run_theories(run_dir))


def test_status_before_the_relabel_shows_both_theories(runs: dict[str, Path]) -> None:
    data = status_json(runs["labelled"])
    json.dumps(data)
    assert {"counts", "structures", "potential"} <= set(data)  # the documented keys stay
    by_id = {s["id"]: s for s in data["structures"]}
    assert by_id[1]["theory_key"].endswith(SMEARED)  # the rescue
    assert by_id[2]["theory_key"].endswith(FIXED) and by_id[3]["theory_key"].endswith(FIXED)
    # exclude (no relabel decision): the fit takes the dominant theory, the rescue is out
    assert [by_id[i]["in_training_set"] for i in (1, 2, 3)] == [False, True, True]
    assert all("relabel" not in s for s in data["structures"])
    t1, t2 = data["theories"]
    assert (t1["tag"], t1["labels"], t1["training_set"]) == ("T1", 1, False)
    assert (t2["tag"], t2["labels"], t2["in_training_set"], t2["training_set"]) == (
        "T2", 2, 2, True,
    )  # fmt: skip
    table = _table(runs["labelled"])
    assert "T1 (left out)" in table
    assert f"theories: T1 = {by_id[1]['theory_key']} (1 label, not fitted)" in table
    assert f"T2 = {by_id[2]['theory_key']} (2 labels, to be fitted)" in table


def test_status_shows_a_pending_and_a_failed_relabel(runs: dict[str, Path]) -> None:
    for phase in ("pending", "failed"):
        data = status_json(runs[phase])
        by_id = {s["id"]: s for s in data["structures"]}
        assert "relabel" not in by_id[1]  # the rescue is the target theory
        for sid in (2, 3):
            rel = by_id[sid]["relabel"]
            assert rel["state"] == phase and rel["theory_key"] is None and rel["energy"] is None
            assert f"{sid}  labelled" in _table(runs[phase])
        table = _table(runs[phase])
        assert table.count(f"T2 relabel {phase}") == 2
    # a failed relabel keeps the old label: the fit stays on the dominant (old) theory
    view = run_theories(runs["failed"])
    assert view.training_key is not None and view.training_key.endswith(FIXED)
    assert view.structures[1]["left_out"] == "theory"


def test_status_shows_the_relabels_and_the_fitted_theory(runs: dict[str, Path]) -> None:
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.oracle.relabel import RELABEL_DIR

    with Store.open(runs["relabelled"] / RELABEL_DIR, create=False) as rstore:
        energies = {r["origin"]["structure"]: r["energy_ev"] for r in rstore.structure_rows()}
    data = status_json(runs["relabelled"])
    by_id = {s["id"]: s for s in data["structures"]}
    target = by_id[1]["theory_key"]
    for sid in (2, 3):
        rel = by_id[sid]["relabel"]
        assert rel["state"] == "labelled" and rel["theory_key"] == target
        assert rel["energy"] == energies[sid]
        assert rel["energy"] != by_id[sid]["energy_ev"]  # a new pw.x label, not the old one
        assert by_id[sid]["theory_key"].endswith(FIXED)  # the old label is kept
    assert all(s["in_training_set"] for s in data["structures"])
    t1, t2 = data["theories"]
    assert (t1["labels"], t1["relabels"], t1["in_training_set"], t1["training_set"]) == (
        1, 2, 3, True,
    )  # fmt: skip
    assert (t2["labels"], t2["relabels"], t2["training_set"]) == (2, 0, False)
    assert data["potential"] is None
    table = _table(runs["relabelled"])
    assert f"T2->T1 relabelled {energies[2]:.6f} eV" in table
    assert "(1 label, 2 relabels, to be fitted)" in table

    fitted = status_json(runs["fitted"])
    assert fitted["potential"]["theory_key"] == target
    assert [t["fitted"] for t in fitted["theories"]] == [True, False]
    table = _table(runs["fitted"])
    assert "(1 label, 2 relabels, fitted)" in table and "(2 labels, not fitted)" in table
    assert "  fitted on theory T1" in table
