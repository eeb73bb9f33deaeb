"""``status``, ``export`` and the report show the theory of every label and the relabel
(issue 11.3), on a real run store: 2-atom Si cells labelled by the real pw.x, one rescued
with smearing, the others relabelled with it (``theory_runs.py``; ~10 s of pw.x)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
import pandas as pd
import pytest

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.export import export
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


def _frames(path: Path) -> dict[int, Any]:
    return {int(f.info["structure_id"]): f for f in ase.io.read(path, ":")}


def test_export_writes_the_labels_the_fit_uses(runs: dict[str, Path], tmp_path: Path) -> None:
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.oracle.relabel import RELABEL_DIR, relabelled_training_set

    run_dir = runs["relabelled"]
    with Store.open(run_dir, create=False) as store:
        recorded = {int(a.info["structure_id"]): a for a in store.labelled_atoms()}
        fitted = {  # what the trainer fits on (stages.train)
            int(a.info["structure_id"]): a
            for a in relabelled_training_set(store.labelled_atoms(), run_dir)
        }
    with Store.open(run_dir / RELABEL_DIR, create=False) as rstore:
        rids = {r["origin"]["structure"]: r["id"] for r in rstore.structure_rows()}
    frames = _frames(export(run_dir, "extxyz", tmp_path / "t.extxyz"))
    target = recorded[1].info["theory_key"]
    assert sorted(frames) == [1, 2, 3]
    for sid, frame in frames.items():
        assert frame.info["in_training_set"] is True
        assert frame.info["theory_key"] == target  # one level of theory
        assert frame.get_potential_energy() == pytest.approx(fitted[sid].get_potential_energy())
        assert np.allclose(frame.get_forces(), fitted[sid].get_forces())
        assert np.allclose(frame.get_stress(), fitted[sid].get_stress())
    for sid in (2, 3):
        assert frames[sid].info["relabelled_from_theory_key"] == recorded[sid].info["theory_key"]
        assert frames[sid].info["relabel_id"] == rids[sid]
        assert frames[sid].info["source"] == f"relabel of {sid}"
        assert abs(frames[sid].get_potential_energy() - recorded[sid].get_potential_energy()) > 1e-3
    assert "relabelled_from_theory_key" not in frames[1].info

    # ase.db: the same keys, and the relabel's own theory record
    with ase.db.connect(export(run_dir, "asedb", tmp_path / "t.db")) as db:
        row = db.get(structure_id=2)
        assert row.relabelled_from_theory_key == recorded[2].info["theory_key"]
        assert row.in_training_set and row.data["theory"]["occupations"] == "smearing"
        assert row.data["origin"] == {"kind": "relabel", "structure": 2}
    table = pd.read_pickle(export(run_dir, "pacemaker", tmp_path / "t.pkl.gz"), compression="gzip")
    by_name = dict(zip(map(int, table["name"]), table["energy"], strict=True))
    assert by_name == pytest.approx(
        {sid: a.get_potential_energy(force_consistent=True) for sid, a in fitted.items()}
    )

    # --labels recorded: the run store's own labels, as computed, as before relabels existed
    frames = _frames(export(run_dir, "extxyz", tmp_path / "r.extxyz", labels="recorded"))
    for sid, frame in frames.items():
        assert frame.get_potential_energy() == recorded[sid].get_potential_energy()
        assert frame.info["theory_key"] == recorded[sid].info["theory_key"]
        assert "in_training_set" not in frame.info
        assert "relabelled_from_theory_key" not in frame.info


def test_export_marks_the_labels_the_fit_leaves_out(runs: dict[str, Path], tmp_path: Path) -> None:
    # exclude: the smearing rescue is not fitted; failed relabels: the same, old labels kept
    for phase, state in (("labelled", None), ("failed", "failed"), ("pending", "pending")):
        frames = _frames(export(runs[phase], "extxyz", tmp_path / f"{phase}.extxyz"))
        assert [frames[i].info["in_training_set"] for i in (1, 2, 3)] == [False, True, True]
        assert [frames[i].info.get("relabel_state") for i in (1, 2, 3)] == [None, state, state]
        assert all(frames[i].info["theory_key"].endswith(FIXED) for i in (2, 3))
        path = export(runs[phase], "pacemaker", tmp_path / f"{phase}.pkl.gz")
        assert sorted(map(int, pd.read_pickle(path, compression="gzip")["name"])) == [2, 3]
    # the recorded labels keep today's pacemaker set: every label that is not pruned
    path = export(runs["failed"], "pacemaker", tmp_path / "all.pkl.gz", labels="recorded")
    assert sorted(map(int, pd.read_pickle(path, compression="gzip")["name"])) == [1, 2, 3]


def test_export_labels_option_on_the_command_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlip_autopipec.cli import main

    out = tmp_path / "r.extxyz"
    assert main(["export", str(runs["fitted"]), "--labels", "recorded", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "in_training_set" not in ase.io.read(out, 0).info
    with pytest.raises(SystemExit) as exc:
        main(["export", str(runs["fitted"]), "--labels", "mine"])
    assert exc.value.code == 2
    assert "invalid choice: 'mine'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="unknown --labels 'mine'"):
        export(runs["fitted"], "extxyz", None, labels="mine")


def test_report_theory_section(runs: dict[str, Path], tmp_path: Path) -> None:
    from mlip_autopipec.report import write_report

    for phase in ("pending", "fitted"):
        run_dir = tmp_path / phase
        shutil.copytree(runs[phase], run_dir)
        page = write_report(run_dir).read_text()
        data = json.loads((run_dir / "report" / "report.json").read_text())
        section = data["dft"]["label_theories"]
        keys = {s["id"]: s["theory_key"] for s in data["structures"]}
        t1, t2 = section["theories"]
        assert (t1["tag"], t1["theory_key"], t1["labels"]) == ("T1", keys[1], 1)
        assert (t2["tag"], t2["theory_key"], t2["labels"]) == ("T2", keys[2], 2)
        assert keys[2] == keys[3] and keys[2].endswith(FIXED) and keys[1].endswith(SMEARED)
        relabelled = {r["id"]: r for r in section["relabelled"]}
        assert sorted(relabelled) == [2, 3]
        for sid, r in relabelled.items():
            assert (r["from"], r["from_tag"], r["to_tag"]) == (keys[sid], "T2", "T1")
        assert "Levels of theory of the labels" in page
        assert "Relabelled structures (old theory → new theory)" in page
        assert "T2 → T1" in page
        by_id = {s["id"]: s for s in data["structures"]}
        if phase == "pending":
            assert all(r["state"] == "pending" and r["energy"] is None for r in relabelled.values())
            assert (t1["relabels"], t1["fitted"], t2["training_set"]) == (0, False, True)
            assert section["potential_theory_key"] is None
            assert by_id[1]["in_training_set"] is False and by_id[1]["theory_tag"] == "T1"
            assert "(left out of the fit)" in page and "T2 relabel pending" in page
        else:
            assert all(r["state"] == "trained" and r["to"] == keys[1] for r in relabelled.values())
            assert (t1["relabels"], t1["fitted"], t2["fitted"]) == (2, True, False)
            assert section["potential_theory_key"] == keys[1]
            assert "fitted (the current potential)" in page
            assert by_id[2]["relabel"]["energy"] == relabelled[2]["energy"]
            assert all(by_id[i]["in_training_set"] for i in (1, 2, 3))
            assert "T2 relabelled" in page


def test_a_run_of_one_theory_shows_it_on_every_label(tmp_path: Path) -> None:
    from mlip_autopipec.lifecycle.store import Store

    from .pwx_driver import ORACLE_CFG
    from .theory_runs import cells, labeller

    with ThreadPoolExecutor(2) as executor, Store.open(tmp_path) as store:
        store.add_structures([(a, "fixed") for a in cells()[1:]])
        labeller(executor)(store, tmp_path, ORACLE_CFG)
    data = status_json(tmp_path)
    assert set(data) == {"counts", "structures", "potential", "theories"}
    documented = {"id", "state", "attempts", "failure", "energy_ev", "theory_key"}
    assert all(set(s) == documented | {"in_training_set"} for s in data["structures"])
    view = run_theories(tmp_path)
    (key,) = view.tags
    assert all(s["theory_key"] == key and s["in_training_set"] for s in data["structures"])
    assert [t["theory_key"] for t in data["theories"]] == [key]
    assert key.endswith(FIXED) and view.training_key == key
    table = render_table(data, None, view)
    assert f"theories: T1 = {key} (2 labels, to be fitted)" in table
    rows = [line for line in table.splitlines() if "  labelled  " in line]
    assert len(rows) == 2 and all(line.endswith("  T1") for line in rows)  # theory column
    record_fit(tmp_path)
    assert status_json(tmp_path)["potential"]["theory_key"] == key


def test_the_fitted_theory_is_the_one_recorded_with_the_fit(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """A kill between recording a fit and marking its relabels fitted: the relabels are
    still ``labelled``, so the members' own labels (T2) would name the wrong theory; the
    theory recorded with the fit (``settings.theory_key``, as ``stages.record_fit`` writes
    it) names the right one (T1)."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["relabelled"], run_dir)
    view = run_theories(run_dir)
    ids = sorted(i for i, s in view.structures.items() if s["in_training_set"])
    assert ids == [1, 2, 3] and view.structures[2]["relabel"]["state"] == "labelled"
    training = view.training_key
    assert training is not None and training.endswith(SMEARED)
    record_fit(run_dir, {"theory_key": training}, relabels_fitted=False)
    assert run_theories(run_dir).potential_theory_key == training
    assert status_json(run_dir)["potential"]["theory_key"] == training
    # the same record without the key: worked out from the members, the relabels not yet
    # marked fitted, it names their old theory (what the record prevents)
    record_fit(run_dir, relabels_fitted=False)
    derived = run_theories(run_dir).potential_theory_key
    assert derived is not None and derived.endswith(FIXED)
