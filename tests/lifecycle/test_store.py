"""Store round trips, idempotent adds, labels as ASE Atoms, potentials, status, export."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.export import export
from mlip_autopipec.lifecycle.machine import Lifecycle
from mlip_autopipec.lifecycle.status import render_table, status_json
from mlip_autopipec.lifecycle.store import DB_NAME, Store, content_hash

from .scripted import PERMANENT, ScriptedResult, scripted_atoms


def _label(store: Store, sid: int, energy: float) -> ScriptedResult:
    life = Lifecycle(store, PERMANENT)
    n = len(store.attempts_of(sid)) + 1
    atoms = store.atoms_of(sid)
    life.fire(sid, "start", number=n)
    result = ScriptedResult(
        n,
        f"attempt-{n:02d}",
        "converged",
        energy=energy,
        free_energy=energy - 0.01,
        forces=(np.arange(len(atoms) * 3).reshape(-1, 3) * 0.01).tolist(),
        stress=[0.1, 0.2, 0.3, 0.01, 0.02, 0.03],
    )
    life.fire(sid, "label", result=result)
    return result


def test_wal_mode_and_tables(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "structures",
        "transitions",
        "attempts",
        "labels",
        "potentials",
        "potential_members",
    } <= tables


def test_content_hash_is_stable_and_discriminating():
    a = bulk("Si", "diamond", a=5.43)
    b = a.copy()
    b.positions += 1e-9  # below the rounding
    assert content_hash(a) == content_hash(b)
    c = a.copy()
    c.positions[0, 0] += 1e-3
    assert content_hash(a) != content_hash(c)
    d = a.copy()
    d.set_initial_magnetic_moments([1.0, 0.0])
    assert content_hash(a) != content_hash(d)
    e = a.copy()
    e.pbc = [True, True, False]
    assert content_hash(a) != content_hash(e)
    f = a.copy()
    f.positions[0, 0] = -0.0  # -0.0 and 0.0 are the same geometry
    assert content_hash(a) == content_hash(f)


def test_add_structure_is_idempotent_and_appends(tmp_path):
    store = Store.open(tmp_path)
    first = [scripted_atoms(i, ["converged"]) for i in range(3)]
    ids = store.add_structures([(a, "recipe:0") for a in first])
    assert ids == [1, 2, 3]
    _label(store, ids[0], -10.0)
    # rerun of a recipe with one structure appended: same ids, labels kept, one new
    again = store.add_structures([(a, "recipe:0") for a in [*first, scripted_atoms(9, [])]])
    assert again == [1, 2, 3, 4]
    assert store.add_structure(first[1].copy(), "elsewhere") == 2
    assert store.counts()["labelled"] == 1
    assert store.counts()["pending"] == 3
    store.close()


def test_atoms_round_trip(tmp_path):
    store = Store.open(tmp_path)
    atoms = bulk("Fe", "bcc", a=2.87, cubic=True)
    atoms.set_initial_magnetic_moments([2.0, -2.0])
    atoms.info["note"] = "afm"
    sid = store.add_structure(atoms, "file:fe.xyz")
    back = store.atoms_of(sid)
    assert back == atoms
    assert np.allclose(back.get_initial_magnetic_moments(), [2.0, -2.0])
    assert back.info["note"] == "afm"
    store.close()


def test_labelled_atoms_carry_all_labels(tmp_path):
    store = Store.open(tmp_path)
    sid = store.add_structure(scripted_atoms(1, []), "s")
    store.add_structure(scripted_atoms(2, []), "s")  # stays pending: not exported
    result = _label(store, sid, -15.5)
    (atoms,) = store.labelled_atoms()
    assert atoms.info["structure_id"] == sid
    assert atoms.get_potential_energy() == pytest.approx(-15.5, abs=0)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(-15.51)
    assert np.allclose(atoms.get_forces(), result.forces)
    assert np.allclose(atoms.get_stress(), result.stress)
    assert isinstance(atoms.calc, SinglePointCalculator)
    stored = store.attempts_of(sid)
    assert ScriptedResult.from_dict(stored[0]) == result
    store.close()


def test_potentials_members_and_trained(tmp_path):
    store = Store.open(tmp_path)
    ids = [store.add_structure(scripted_atoms(i, []), "s") for i in range(5)]
    for sid in ids[:4]:
        _label(store, sid, -1.0 * sid)
    pid = store.record_potential(
        path=tmp_path / "potential.yace",
        metrics={
            "rmse_energy_mev_per_atom": {"train": 1.0, "test": 2.5},
            "rmse_forces_mev_per_ang": {"train": 30.0, "test": 45.0},
        },
        baseline={"type": "none"},
        pacemaker_version="0.4.0rc1",
        train_ids=ids[:3],
        test_ids=ids[3:4],
    )
    assert store.mark_trained(ids[:4], pid) == 4
    assert store.counts()["trained"] == 4
    assert len(store.labelled_atoms()) == 4
    assert store.labelled_atoms(state=("labelled",)) == []
    with pytest.raises(Exception, match="cannot train structures in state"):
        store.mark_trained([ids[4]], pid)
    assert store.state_of(ids[4]) == "pending"
    data = status_json(tmp_path)
    assert set(data) == {"counts", "structures", "potential", "theories"}
    assert data["potential"] == {
        "path": str(tmp_path / "potential.yace"),
        "rmse_energy_mev_per_atom": 2.5,
        "rmse_forces_mev_per_ang": 45.0,
        "n_train": 3,
        "n_test": 1,
    }
    assert data["counts"] == {
        "pending": 1,
        "running": 0,
        "scf_retry": 0,
        "labelled": 0,
        "failed": 0,
        "trained": 4,
    }
    row = data["structures"][1]
    assert row == {
        "id": 2, "state": "trained", "attempts": 1, "failure": None, "energy_ev": -2.0,
        "theory_key": None, "in_training_set": True,  # a label of no recorded theory
    }  # fmt: skip
    json.dumps(data)
    table = render_table(data)
    assert "test-set RMSE: energy 2.50 meV/atom, forces 45.0 meV/Å" in table
    assert "trained: 4" in table
    store.close()


def test_status_of_a_failed_structure(tmp_path):
    store = Store.open(tmp_path)
    sid = store.add_structure(scripted_atoms(1, []), "s")
    Lifecycle(store, PERMANENT).fire(
        sid,
        "quarantine",
        result=ScriptedResult(0, "", "overlapping_atoms", "too close"),
        preflight=True,
    )
    store.close()
    data = status_json(tmp_path)
    assert data["structures"] == [
        {
            "id": sid,
            "state": "failed",
            "attempts": 0,
            "failure": "overlapping_atoms: too close",
            "energy_ev": None,
            "theory_key": None,  # no label, no theory
            "in_training_set": None,
        }
    ]
    assert data["potential"] is None
    assert "potential: none fitted yet" in render_table(data)


def test_status_of_a_non_run_directory(tmp_path):
    with pytest.raises(UsageError, match="no such run directory"):
        status_json(tmp_path / "nope")
    with pytest.raises(UsageError, match="not a run directory"):
        status_json(tmp_path)
    assert not (tmp_path / DB_NAME).exists()  # status must not create a store
    (tmp_path / DB_NAME).write_bytes(b"")  # empty file: sqlite opens it, but no tables
    with pytest.raises(UsageError, match="not a usable run database"):
        status_json(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"garbage " * 1000)
    with pytest.raises(UsageError, match="not a usable run database"):
        status_json(tmp_path)
    with pytest.raises(UsageError, match="not a usable run database"):
        Store.open(tmp_path)


def test_export_extxyz(tmp_path):
    store = Store.open(tmp_path)
    ids = [store.add_structure(scripted_atoms(i, []), "s") for i in range(3)]
    for sid in ids[:2]:
        _label(store, sid, -3.0 * sid)
    store.close()
    out = export(tmp_path, "extxyz", None)
    assert out == tmp_path / "export" / "labels.extxyz"
    frames = read(out, ":")
    assert [f.info["structure_id"] for f in frames] == ids[:2]
    assert [f.get_potential_energy() for f in frames] == [-3.0, -6.0]
    assert np.allclose(frames[1].get_forces(), np.arange(6).reshape(-1, 3) * 0.01)
    with pytest.raises(UsageError, match="unknown format"):
        export(tmp_path, "cif", None)


def test_export_pacemaker(tmp_path):
    pd = pytest.importorskip("pandas")
    store = Store.open(tmp_path)
    sid = store.add_structure(scripted_atoms(1, []), "s")
    _label(store, sid, -9.0)
    store.close()
    out = export(tmp_path, "pacemaker", tmp_path / "ds.pkl.gz")
    df = pd.read_pickle(out, compression="gzip")
    # the trainer fits the free energy (the one the forces are derivatives of, with smearing);
    # the scripted label's free energy is energy - 0.01
    assert list(df["energy"]) == [-9.01]
    assert list(df["energy_corrected"]) == [-9.01]


def test_bulk_10k_is_one_transaction_and_one_lookup(tmp_path):
    """What keeps a 10k-structure recipe quick, counted rather than timed: one fsync'd
    transaction for all of them, one query for the known hashes, one INSERT each."""
    store = Store.open(tmp_path)
    atoms = [scripted_atoms(i, []) for i in range(10_000)]
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    ids = store.add_structures([(a, "s") for a in atoms])
    store._conn.set_trace_callback(None)
    assert len(set(ids)) == 10_000
    verbs = [s.split(None, 1)[0].upper() for s in statements]
    assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1
    assert verbs.count("SELECT") <= 2
    assert verbs.count("INSERT") == 10_000
    assert len(statements) < 10_000 + 10
    store.close()


def test_status_says_whether_the_fit_converged(tmp_path):
    """The optimizer verdict the fit folder's potential.json recorded (issue 11.4): the status
    table says NOT converged for a fit stopped by its iteration limit."""
    import json

    from mlip_autopipec.lifecycle.status import fit_verdict, render_table

    store = Store.open(tmp_path)
    ids = [store.add_structure(scripted_atoms(i, []), "s") for i in range(3)]
    for sid in ids:
        _label(store, sid, -1.0 * sid)
    fit_dir = tmp_path / "trainer" / "fit-001"
    fit_dir.mkdir(parents=True)
    (fit_dir / "potential.json").write_text(
        json.dumps(
            {
                "converged": False,
                "iterations": 20,
                "status_message": "Maximum number of iterations has been exceeded.",
                "notes": [],
            }
        )
    )
    store.record_potential(
        path=fit_dir / "output_potential.yace",
        metrics={"rmse_energy_mev_per_atom": {"train": 1.0}, "rmse_forces_mev_per_ang": {}},
        baseline={"type": "none"},
        pacemaker_version="0.4.0rc1",
        train_ids=ids,
        test_ids=[],
        fit_dir="trainer/fit-001",
    )
    store.close()
    fit = fit_verdict(tmp_path)
    assert fit == {
        "converged": False,
        "iterations": 20,
        "message": "Maximum number of iterations has been exceeded.",
        "notes": [],
    }
    data = status_json(tmp_path)
    assert set(data) == {"counts", "structures", "potential", "theories"}  # --json keeps its keys
    assert "optimizer: NOT converged after 20 iterations" in render_table(data, fit)


def test_a_kill_while_the_store_is_created_leaves_no_empty_database(tmp_path):
    """SIGKILL in the middle of creating the store (seen in the kill-anywhere test: the group
    killed right after the start left a 0-byte database every rerun refused as truncated)."""
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from mlip_autopipec.lifecycle import migrations, store\n"
        "def killed(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "migrations.migrate = killed\n"
        "store.Store.open(sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / DB_NAME).exists()
    leftovers = list(tmp_path.glob(f".{DB_NAME}.*"))
    assert leftovers  # the half-made store, under its private name
    store = Store.open(tmp_path)  # the rerun starts cleanly...
    sid = store.add_structure(scripted_atoms(1, []), "s")
    store.close()
    assert not any(p.exists() for p in leftovers)  # ...and clears what the kill left
    reopened = Store.open(tmp_path, create=False)
    assert reopened.ids_in_state("pending") == [sid]
    reopened.close()
