"""``autopipec export --format asedb`` read back with ase.db; the guard against ase.db on the store.

Two two-atom Si cells are labelled by the real pw.x (ecutwfc 12 Ry, about a second each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest

from mlip_autopipec.cli import main
from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.export import export, foreign_tables, foreign_tables_message
from mlip_autopipec.lifecycle.store import DB_NAME, Store
from mlip_autopipec.pipeline import run

PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
RECIPE = """\
name: export-tiny
structures:
  - bulk: {element: Si, crystal: diamond, a: 5.43}
    strain: {min: -0.01, max: 0.01, count: 2}
oracle:
  pseudopotentials: {Si: Si.pz-vbc.UPF}
  kpts: [2, 2, 2]
  input_data: {system: {ecutwfc: 12}}
execution: {workers: 2}
"""

pytestmark = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or Si.pz-vbc.UPF missing"
)


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "r.yaml").write_text(RECIPE)
    run_dir = root / "run"
    assert run(root / "r.yaml", run_dir=run_dir, stage="label") == 0
    return run_dir


def test_asedb_has_the_stored_labels(labelled_run: Path, tmp_path: Path) -> None:
    with Store.open(labelled_run, create=False) as store:
        stored = store.labelled_atoms()
    assert len(stored) == 3
    out = export(labelled_run, "asedb", tmp_path / "labels.db")
    with ase.db.connect(out) as db:
        rows = list(db.select())
        assert len(rows) == 3
        for atoms in stored:
            (row,) = db.select(structure_id=atoms.info["structure_id"])
            assert row.source == atoms.info["source"]
            assert row.energy == atoms.get_potential_energy()
            assert np.array_equal(row.forces, atoms.get_forces())
            assert np.array_equal(row.stress, atoms.get_stress())
            back = row.toatoms()
            assert np.allclose(back.positions, atoms.positions)
            assert back.get_potential_energy(force_consistent=True) == pytest.approx(
                atoms.get_potential_energy(force_consistent=True)
            )
    # exporting again replaces the database instead of appending rows to it
    export(labelled_run, "asedb", out)
    with ase.db.connect(out) as db:
        assert db.count() == 3


def test_extxyz_carries_the_same_keys(labelled_run: Path, tmp_path: Path) -> None:
    out = export(labelled_run, "extxyz", tmp_path / "labels.extxyz")
    frames = ase.io.read(out, index=":")
    with Store.open(labelled_run, create=False) as store:
        stored = {a.info["structure_id"]: a for a in store.labelled_atoms()}
    for frame in frames:
        atoms = stored[frame.info["structure_id"]]
        assert frame.info["source"] == atoms.info["source"]
        assert frame.get_potential_energy() == pytest.approx(atoms.get_potential_energy())
        assert np.allclose(frame.get_stress(), atoms.get_stress())


def test_cli_default_output_and_store_guard(
    labelled_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(labelled_run), "--format", "asedb"]) == 0
    assert capsys.readouterr().out.strip() == str(labelled_run / "export" / "labels.db")
    with pytest.raises(UsageError, match="the run's store"):
        export(labelled_run, "asedb", labelled_run / DB_NAME)


def test_ase_db_connect_on_the_store_is_detected(labelled_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(labelled_run, copy)
    assert foreign_tables(copy / DB_NAME) == []
    assert foreign_tables_message(copy) is None
    # what a user does by mistake: ASE takes any SQLite file for its own database (ASE 3.29
    # wants type="db" for a .sqlite name; older versions guessed it)
    with ase.db.connect(copy / DB_NAME, type="db") as db:
        db.count()
    assert "systems" in foreign_tables(copy / DB_NAME)
    message = foreign_tables_message(copy)
    assert message is not None and "ase.db.connect()" in message and "--format asedb" in message
    # autopipec's own tables are untouched: the labels read back the same
    with Store.open(copy, create=False) as store:
        assert len(store.labelled_atoms()) == 3
    # and the report says so at the top
    from mlip_autopipec.report import write_report

    assert "ase.db.connect() was run on the run&#x27;s store" in write_report(copy).read_text()
