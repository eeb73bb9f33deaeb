"""Store schema v1 -> v2: a run directory written by mlip-autopipec 092af6a (real pw.x
labels and a real pacemaker fit, tests/data/rundir_v1) is upgraded in place when opened."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.migrations import LATEST, backup_path, origin_from_source
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import DB_NAME, Store

V1 = Path(__file__).parent.parent / "data" / "rundir_v1"


@pytest.fixture
def run_v1(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(V1, run_dir)
    return run_dir


def _raw(where: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(where if where.is_file() else where / DB_NAME)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_test_data_is_version_1() -> None:
    # immutable: reading the committed file must not leave -wal/-shm files beside it
    conn = sqlite3.connect(f"file:{V1 / DB_NAME}?immutable=1", uri=True)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    finally:
        conn.close()
    assert version == [("1",)]


def test_open_migrates_in_place_with_a_backup(run_v1: Path) -> None:
    labels_before = _raw(run_v1, "SELECT * FROM labels ORDER BY structure_id")
    attempts_before = _raw(run_v1, "SELECT structure_id, number, result FROM attempts")
    states_before = _raw(run_v1, "SELECT id, state FROM structures ORDER BY id")
    with Store.open(run_v1) as store:
        current = store.current_potential()
        rows = store.structure_rows()
        assert store.total_attempts() == len(attempts_before) == 6
    bak = backup_path(run_v1 / DB_NAME, 1)
    assert bak.name == "autopipec.sqlite.v1.bak"
    assert _raw(bak, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    assert _raw(run_v1, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(LATEST),)]
    # labels, attempts and states are untouched; the new label columns are empty
    labels_after = _raw(
        run_v1,
        "SELECT structure_id, attempt_number, energy, free_energy, forces, stress, created,"
        " theory_key, theory, magmoms FROM labels ORDER BY structure_id",
    )
    assert [r[:7] for r in labels_after] == labels_before
    assert all(r[7:] == (None, None, None) for r in labels_after)
    assert _raw(run_v1, "SELECT structure_id, number, result FROM attempts") == attempts_before
    assert _raw(run_v1, "SELECT id, state FROM structures ORDER BY id") == states_before
    # provenance from the v1 source strings
    assert rows[0]["origin"] == {
        "kind": "recipe",
        "source": "bulk[0] Si diamond strain=-0.020",
        "generator": "bulk",
        "entry": 0,
        "strain": -0.02,
    }
    assert rows[1]["origin"]["rattle"] == 1
    assert {r["iteration"] for r in rows} == {0}
    assert {r["parent_potential"] for r in rows} == {None}
    # the one record of the current potential, paths relative to the (moved) run dir
    assert current is not None
    assert current["id"] == 1
    assert current["path"] == "trainer/fit-001/output_potential.yace"
    assert current["fit_dir"] == "trainer/fit-001"
    assert current["settings"] is None and current["iteration"] == 0
    assert (run_v1 / current["path"]).is_file()
    dirs = _raw(run_v1, "SELECT attempt_dir FROM attempts ORDER BY id")
    assert [d for (d,) in dirs][:2] == [
        "structures/000001/attempt-01",
        "structures/000002/attempt-01",
    ]
    # a second open has nothing to do and leaves the first backup alone
    before = bak.stat().st_mtime_ns
    with Store.open(run_v1, create=False):
        pass
    assert bak.stat().st_mtime_ns == before


def test_status_reads_a_v1_run(run_v1: Path) -> None:
    data = status_json(run_v1)
    assert data["counts"]["trained"] == 6
    pot = data["potential"]
    assert Path(pot["path"]).is_file()
    assert pot["path"] == str(run_v1 / "trainer/fit-001/output_potential.yace")
    assert pot["n_train"] == 6 and pot["n_test"] == 0


def test_a_newer_schema_is_refused(run_v1: Path) -> None:
    conn = sqlite3.connect(run_v1 / DB_NAME)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(UsageError, match="newer mlip-autopipec"):
        Store.open(run_v1, create=False)


def test_a_failed_migration_leaves_version_1(run_v1: Path, monkeypatch) -> None:
    from mlip_autopipec.lifecycle import migrations

    def broken(conn: sqlite3.Connection, run_dir: Path) -> None:
        migrations._v1_to_v2(conn, run_dir)
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(migrations, "MIGRATIONS", ((2, broken),))
    with pytest.raises(UsageError, match="injected"):
        Store.open(run_v1)
    assert _raw(run_v1, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    cols = [r[1] for r in _raw(run_v1, "PRAGMA table_info(structures)")]
    assert "origin" not in cols
    monkeypatch.undo()
    with Store.open(run_v1) as store:
        assert store.current_potential() is not None


def test_a_fresh_store_has_the_same_schema_as_a_migrated_one(run_v1: Path, tmp_path) -> None:
    Store.open(run_v1).close()
    Store.open(tmp_path / "fresh").close()
    assert not backup_path(tmp_path / "fresh" / DB_NAME, 1).exists()

    def schema(run_dir: Path) -> dict[str, list[tuple]]:
        tables = [t for (t,) in _raw(run_dir, "SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: _raw(run_dir, f"PRAGMA table_info({t})") for t in sorted(tables)}

    assert schema(run_v1) == schema(tmp_path / "fresh")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "bulk[2] Si diamond supercell=2x2x2 strain=+0.010 rattle=3",
            {"generator": "bulk", "entry": 2, "supercell": "2x2x2", "strain": 0.01, "rattle": 3},
        ),
        ("file data/frames.traj@4", {"generator": "file", "file": "data/frames.traj", "frame": 4}),
        ("md walker 3", {}),
    ],
)
def test_origin_from_source(source: str, expected: dict) -> None:
    origin = origin_from_source(source)
    assert origin == {"kind": "recipe", "source": source, **expected}
    assert json.loads(json.dumps(origin)) == origin


def test_rerun_of_a_v1_run_resumes_without_redoing_anything(
    run_v1: Path, tmp_path: Path, capsys
) -> None:
    from mlip_autopipec.cli import main
    from mlip_autopipec.trainer.calculator import find_fit

    labels_before = _raw(run_v1, "SELECT structure_id, energy, forces, stress FROM labels")
    recipe = shutil.copy(run_v1 / "recipe.yaml", tmp_path / "recipe.yaml")
    rc = main(["run", str(recipe), "--run-dir", str(run_v1), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "already covers every labelled structure" in err
    assert _raw(run_v1, "SELECT COUNT(*) FROM attempts") == [(6,)]  # no attempt redone
    assert _raw(run_v1, "SELECT structure_id, energy, forces, stress FROM labels") == labels_before
    assert not (run_v1 / "trainer" / "fit-002").exists()  # no refit
    assert (run_v1 / "report" / "index.html").is_file()
    with Store.open(run_v1, create=False) as store:
        stages_run = [(r["iteration"], r["stage"], r["status"]) for r in store.loop_rows()]
    assert stages_run == [(0, "build", 0), (0, "label", 0), (0, "train", 0), (0, "report", 0)]
    # status and load_calculator name the same potential
    pot = status_json(run_v1)["potential"]
    assert Path(pot["path"]).parent == find_fit(run_v1)
