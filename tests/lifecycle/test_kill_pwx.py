"""SIGKILL a real pw.x labelling run at random moments; the rerun must give the same labels.

The run is a subprocess (tests/lifecycle/pwx_driver.py) labelling a few dozen small Si cells
with 2 workers. It is killed (SIGKILL: no cleanup at all) when a random number of labels
has been committed, plus a random delay, several times; then run to completion and
compared with an uninterrupted run of the same cells.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlip_autopipec.lifecycle.store import DB_NAME

DRIVER = Path(__file__).with_name("pwx_driver.py")
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
N = 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.pwx,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed"),
    pytest.mark.skipif(not PSEUDO.is_file(), reason=f"{PSEUDO} not installed"),
]


def _start(run_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(run_dir), str(N), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _labels(run_dir: Path) -> dict[int, tuple[float, float]]:
    """structure id -> (energy, time the label was committed)."""
    path = run_dir / DB_NAME
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {
            int(s): (float(e), float(t))
            for s, e, t in conn.execute("SELECT structure_id, energy, created FROM labels")
        }
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        conn.close()


def _finish(run_dir: Path) -> dict:
    proc = _start(run_dir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_at_random_moments_loses_and_redoes_nothing(tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill-test seed {seed}")

    reference = _finish(tmp_path / "reference")
    assert reference["counts"]["labelled"] == N
    ref = _labels(tmp_path / "reference")

    run_dir = tmp_path / "killed"
    committed: dict[int, tuple[float, float]] = {}
    kills_mid_run = 0
    for _ in range(3):
        target = min(N - 2, len(committed) + rng.randint(1, 6))
        proc = _start(run_dir)
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(_labels(run_dir)) < target:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills_mid_run += 1
        proc.communicate(timeout=30)
        now = _labels(run_dir)
        # nothing committed before is lost or recomputed (same energy, same commit time)
        assert {k: now[k] for k in committed} == committed
        committed = now
    assert kills_mid_run >= 1
    assert len(committed) < N

    final = _finish(run_dir)
    assert final["counts"] == reference["counts"]
    labels = _labels(run_dir)
    assert {k: labels[k] for k in committed} == committed  # never recomputed
    assert labels.keys() == ref.keys()
    for sid, (energy, _) in ref.items():
        assert labels[sid][0] == pytest.approx(energy, abs=1e-8)
    # interrupted attempt folders were kept aside; the kept attempt-NN folders all converged
    conn = sqlite3.connect(run_dir / DB_NAME)
    recorded = {Path(p) for (p,) in conn.execute("SELECT attempt_dir FROM attempts")}
    conn.close()
    for folder in run_dir.glob("structures/*/attempt-*"):
        assert folder.name.startswith("attempt-")
        if ".interrupted-" not in folder.name:
            assert folder in recorded
    print(
        f"kills mid-run: {kills_mid_run}, set aside: "
        f"{len(list(run_dir.glob('structures/*/attempt-*.interrupted-*')))}"
    )
