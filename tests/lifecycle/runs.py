"""Helpers for the tests that kill a real ``autopipec run`` child and inspect what is left."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from mlip_autopipec import process
from mlip_autopipec.lifecycle.store import DB_NAME


def of_run(run_dir: Path) -> list[int]:
    """PIDs of live processes started for ``run_dir`` by any runner (by their tag)."""
    where = str(run_dir.resolve())
    return process.tagged_processes(lambda tag: tag.partition(":")[2] == where)


def start_run(recipe: Path, run_dir: Path, stage: str = "label") -> subprocess.Popen[str]:
    """``autopipec run RECIPE --run-dir RUN_DIR --stage STAGE`` in its own session, so that
    a test can kill its whole process group as a batch system or ``kill -KILL -PGID`` does."""
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--stage", stage]
    return subprocess.Popen(
        [sys.executable, "-m", "mlip_autopipec", *argv],
        cwd=recipe.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def query(run_dir: Path, sql: str) -> list[tuple]:
    """Rows of a read-only query on the run's store ([] before it has its tables)."""
    if not (run_dir / DB_NAME).is_file():
        return []
    conn = sqlite3.connect(f"file:{run_dir / DB_NAME}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def labels(run_dir: Path) -> dict[int, tuple[float, float]]:
    """structure id -> (energy, time the label was committed)."""
    rows = query(run_dir, "SELECT structure_id, energy, created FROM labels")
    return {int(s): (float(e), float(t)) for s, e, t in rows}
