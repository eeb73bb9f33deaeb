"""Damaged or unusual run directories: a clear message, a non-zero exit, and never a
destroyed or silently redone label (issue 10, class 7)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import run_cli
from mlip_autopipec.cli import main
from mlip_autopipec.errors import RunEnvironmentError
from mlip_autopipec.fsutil import atomic_write
from mlip_autopipec.lifecycle.rundir import check_database
from mlip_autopipec.lifecycle.store import DB_NAME

PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or Si.pz-vbc.UPF missing"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")

RECIPE = """\
name: damaged
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: {count}}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  pseudo_dir: /usr/share/espresso/pseudo
  kspacing: 0.5
  input_data:
    system: {{ecutwfc: 12}}
execution:
  workers: 1
"""


def _labels(run_dir: Path) -> dict[int, tuple[float, float]]:
    conn = sqlite3.connect(f"file:{run_dir / DB_NAME}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT structure_id, energy, created FROM labels").fetchall()
    finally:
        conn.close()
    return {int(s): (float(e), float(t)) for s, e, t in rows}


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and "report" not in p.parts
        and not p.name.endswith(("-wal", "-shm"))  # SQLite's own, made by any reader
    }


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with 3 real labels (made once), with its recipe beside it."""
    base = tmp_path_factory.mktemp("labelled")
    (base / "r.yaml").write_text(RECIPE.format(count=2))
    assert (
        main(["run", str(base / "r.yaml"), "--run-dir", str(base / "run"), "--stage", "label"]) == 0
    )
    with sqlite3.connect(base / "run" / DB_NAME) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return base


def _copy(labelled: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(labelled, tmp_path, dirs_exist_ok=True)
    return tmp_path / "r.yaml", tmp_path / "run"


def _run(recipe: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label"])
    return code, capsys.readouterr().err


@needs_pwx
def test_empty_database_is_refused_not_relabelled(labelled, tmp_path, capsys):
    recipe, run_dir = _copy(labelled, tmp_path)
    (run_dir / DB_NAME).write_bytes(b"")
    before = _files(run_dir)
    code, err = _run(recipe, run_dir, capsys)
    assert code == 2
    assert f"{run_dir / DB_NAME}: not a usable run database: it is empty (0 bytes" in err
    assert "--fresh" in err and "Traceback" not in err
    assert _files(run_dir) == before  # nothing recreated, no attempt run
    for command in ("status", "report", "export"):
        assert main([command, str(run_dir)]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert _files(run_dir) == before


@needs_pwx
@pytest.mark.parametrize("offset", [0, 4096, 16384])
def test_random_bytes_in_the_database(labelled, tmp_path, capsys, offset):
    recipe, run_dir = _copy(labelled, tmp_path)
    with open(run_dir / DB_NAME, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(3000))
    before = _files(run_dir)
    code, err = _run(recipe, run_dir, capsys)
    assert code == 2, err
    assert "not a usable run database" in err and ("damaged" in err or "not SQLite" in err)
    assert "Traceback" not in err
    assert _files(run_dir) == before
    for command in ("status", "report", "export"):
        code = main([command, str(run_dir)])
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err
        assert code == 0 or "database" in err


@needs_pwx
def test_missing_database_beside_attempt_folders_is_refused(labelled, tmp_path, capsys):
    recipe, run_dir = _copy(labelled, tmp_path)
    (run_dir / DB_NAME).unlink()
    code, err = _run(recipe, run_dir, capsys)
    assert code == 2 and "the run database is missing" in err
    assert not (run_dir / DB_NAME).exists()


@needs_pwx
def test_planted_recipe_link_is_replaced_not_written_through(labelled, tmp_path, capsys):
    recipe, run_dir = _copy(labelled, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite\n")
    (run_dir / "recipe.yaml").unlink()
    (run_dir / "recipe.yaml").symlink_to(target)
    (run_dir / "recipe.json").rename(tmp_path / "record.json")
    (run_dir / "recipe.json").symlink_to(tmp_path / "record.json")
    code, err = _run(recipe, run_dir, capsys)
    assert code == 2 and "recipe.json: is a symbolic link" in err
    (run_dir / "recipe.json").unlink()
    (tmp_path / "record.json").rename(run_dir / "recipe.json")
    before = _labels(run_dir)
    code, err = _run(recipe, run_dir, capsys)
    assert code == 0, err
    assert target.read_text() == "do not overwrite\n"
    assert not (run_dir / "recipe.yaml").is_symlink()
    assert (run_dir / "recipe.yaml").read_bytes() == recipe.read_bytes()
    assert _labels(run_dir) == before


@needs_pwx
def test_directory_where_the_lock_file_should_be(labelled, tmp_path, capsys):
    recipe, run_dir = _copy(labelled, tmp_path)
    (run_dir / "autopipec.lock").mkdir()
    code, err = _run(recipe, run_dir, capsys)
    assert code == 2
    assert f"{run_dir / 'autopipec.lock'}: is a directory or a link, not the lock file" in err


def test_recipe_given_as_a_fifo_or_process_substitution(tmp_path):
    fifo = tmp_path / "recipe.fifo"
    os.mkfifo(fifo)  # nobody writes: opening it would block forever
    proc = run_cli("run", str(fifo), "--run-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "is not a regular file (a pipe?)" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "r.yaml").write_text(RECIPE.format(count=2))
    sub = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m mlip_autopipec run <(cat r.yaml) --run-dir run'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sub.returncode == 2
    assert "not a pipe or <(...)" in sub.stderr and "Traceback" not in sub.stderr
    assert not (tmp_path / "run").exists()


def test_over_long_run_directory_name(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(RECIPE.format(count=2))
    run_dir = tmp_path / ("x" * 300)
    assert main(["run", str(tmp_path / "r.yaml"), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and "Traceback" not in err


@pytest.fixture
def mount(tmp_path):
    mounted: list[Path] = []

    def do(*args: str) -> None:
        proc = subprocess.run(["mount", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
        mounted.append(Path(args[-1]))

    yield do
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_pwx
@needs_root
def test_read_only_run_directory(labelled, tmp_path, capsys, mount):
    recipe, run_dir = _copy(labelled, tmp_path / "src")
    ro = tmp_path / "ro"
    ro.mkdir()
    mount("--bind", str(run_dir), str(ro))
    mount("-o", "remount,ro,bind", str(ro))
    before = _files(ro)
    code, err = _run(recipe, ro, capsys)
    assert code == 2 and f"{ro}: the run directory is not writable" in err
    assert "Traceback" not in err
    assert _files(ro) == before


@needs_pwx
@needs_root
def test_full_disk_stops_the_run_and_loses_nothing(tmp_path, mount):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(count=4))
    run_dir = disk / "run"
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip_autopipec", *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and (
            not (run_dir / DB_NAME).is_file() or len(_labels(run_dir)) < 2
        ):
            time.sleep(0.05)
        # fill the disk while attempts run
        with open(disk / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert "full" in err
    kept = _labels(run_dir)
    assert len(kept) >= 2
    (disk / "filler").unlink()
    resumed = run_cli(*argv, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert final["counts"]["labelled"] == 5 and final["counts"]["failed"] == 0
    labels = _labels(run_dir)
    assert {k: labels[k] for k in kept} == kept  # nothing lost or recomputed


def test_atomic_write_replaces_a_link_and_check_database(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "name"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert target.read_text() == "keep" and link.read_text() == "new" and not link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["name", "target"]  # no temp left
    check_database(tmp_path / "absent.sqlite")  # absent: fine (a new run)
    for content in (b"", b"not sqlite at all, just text"):
        (tmp_path / "db").write_bytes(content)
        with pytest.raises(RunEnvironmentError):
            check_database(tmp_path / "db")
