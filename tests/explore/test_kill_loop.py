"""SIGKILL the real reduced loop in explore, select, label, refit and held-out; rerun resumes.

Each kill hits the whole process group (the runner and its pw.x/pacemaker children) at a
moment read from the store: a walker recorded but not all, the selection written, pw.x
attempts running, pacemaker fitting, the second iteration's held-out labelling. Then the
same command runs to completion. It must end in the same place as the uninterrupted run
(session fixture ``ci_run``): same training set, same selections, and no walker redone.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from al_testlib import CI_RECIPE, needs_real_tools

from mlip_autopipec.lifecycle.store import DB_NAME, Store, content_hash

pytestmark = [needs_real_tools, pytest.mark.slow]

Probe = Callable[[sqlite3.Connection], bool]


def _stage(conn: sqlite3.Connection) -> tuple[int, str]:
    rows = dict(conn.execute("SELECT key, value FROM al_state").fetchall())
    # the loop writes its position after each stage; before the first, it is explore
    return int(rows.get("iteration", 1)), str(rows.get("stage", "explore"))


def _walkers(conn: sqlite3.Connection, iteration: int) -> int:
    sql = "SELECT COUNT(*) FROM al_walkers WHERE iteration = ?"
    return int(conn.execute(sql, (iteration,)).fetchone()[0])


KILL_POINTS: list[tuple[str, Probe]] = [
    ("mid-explore", lambda c: _stage(c) == (1, "explore") and _walkers(c, 1) >= 1),
    ("after select", lambda c: _stage(c) == (1, "label")),
    (
        "pw.x running",
        lambda c: (
            _stage(c) == (1, "label")
            and c.execute("SELECT COUNT(*) FROM structures WHERE state = 'running'").fetchone()[0]
            > 0
        ),
    ),
    ("refit", lambda c: _stage(c) == (1, "train")),
    ("held-out of iteration 2", lambda c: _stage(c) == (2, "heldout")),
]


def _run_until(run_dir: Path, probe: Probe | None, timeout: float = 600) -> int | None:
    """Run the loop; SIGKILL its process group once ``probe`` holds. None: it was killed."""
    proc = subprocess.Popen(
        # one worker: walkers run one after another, so "a walker recorded, explore not
        # finished" is a window the probe can hit (two parallel walkers finish together)
        [
            *(sys.executable, "-m", "mlip_autopipec", "run", str(CI_RECIPE)),
            *("--run-dir", str(run_dir), "--workers", "1"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if probe is not None and (run_dir / DB_NAME).is_file():
                try:
                    with sqlite3.connect(run_dir / DB_NAME, timeout=5) as conn:
                        hit = probe(conn)
                except sqlite3.OperationalError:  # tables not created yet
                    hit = False
                if hit:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return None
            time.sleep(0.05)
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _walker_rows(run_dir: Path) -> dict[tuple[int, str], float]:
    with sqlite3.connect(run_dir / DB_NAME) as conn:
        rows = conn.execute("SELECT iteration, key, wall_time FROM al_walkers").fetchall()
    return {(int(i), str(k)): float(w) for i, k, w in rows}


def _summary(run_dir: Path) -> dict[str, Any]:
    with Store.open(run_dir, create=False) as store:
        train = sorted(content_hash(a) for a in store.labelled_atoms())
        pot = store.latest_potential()
    with sqlite3.connect(run_dir / DB_NAME) as conn:
        decisions = conn.execute(
            "SELECT iteration, walker, frame, state, reason FROM al_candidates"
            " WHERE iteration = 1 ORDER BY walker, frame"
        ).fetchall()
        stage = _stage(conn)
    return {
        "train": train,
        "decisions": decisions,
        "stage": stage,
        "potentials": None if pot is None else pot["id"],
    }


def test_kill_anywhere_then_resume(ci_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed = []
    seen: dict[tuple[int, str], float] = {}
    for name, probe in KILL_POINTS:
        code = _run_until(run_dir, probe)
        if code is None:
            killed.append(name)
        # a walker recorded before a kill is never run again
        now = _walker_rows(run_dir) if (run_dir / DB_NAME).is_file() else {}
        for key, wall in seen.items():
            assert now.get(key) == wall, f"walker {key} was redone after the kill at {name}"
        seen = now
    assert _run_until(run_dir, None) == 0
    assert len(killed) >= 3, f"only killed at {killed}"
    for key, wall in seen.items():
        assert _walker_rows(run_dir)[key] == wall
    assert _summary(run_dir) == _summary(ci_run["run_dir"])
