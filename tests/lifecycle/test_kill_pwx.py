"""SIGKILL a real pw.x labelling run at random moments; the rerun must give the same labels.

The run is the real command, ``python -m mlip_autopipec run RECIPE --stage label
--workers 2``, labelling a few dozen small Si cells. It is killed (SIGKILL: no cleanup at
all) when a random number of labels has been committed, plus a random delay, several
times; then the same command runs to completion and is compared with an uninterrupted run.
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

PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")

#: Cheap but real: 2-atom Si, LDA norm-conserving, 12 Ry, 1 k-point (~0.15 s per pw.x).
RECIPE = """\
name: si-kill
structures:
  - bulk: {element: Si, crystal: diamond, a: 5.43}
    strain: {min: -0.02, max: 0.02, count: 5}
    rattle: {stdev: 0.05, count: 4, seed: 3}
oracle:
  pseudopotentials: {Si: Si.pz-vbc.UPF}
  pseudo_dir: /usr/share/espresso/pseudo
  kspacing: 0.5
  input_data:
    system: {ecutwfc: 12}
    electrons: {conv_thr: 1.0e-9}
trainer:
  cutoff: 5.0
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.pwx,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed"),
    pytest.mark.skipif(not PSEUDO.is_file(), reason=f"{PSEUDO} not installed"),
]


def _start(run_dir: Path) -> subprocess.Popen[str]:
    recipe = run_dir.parent / "si-kill.yaml"
    recipe.write_text(RECIPE)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlip_autopipec",
            "run",
            str(recipe),
            "--run-dir",
            str(run_dir),
            "--stage",
            "label",
            "--workers",
            "2",
        ],
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


def _finish(run_dir: Path) -> dict[str, int]:
    proc = _start(run_dir)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    status = subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", "status", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(status.stdout)["counts"]


def test_sigkill_at_random_moments_loses_and_redoes_nothing(tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill-test seed {seed}")

    (tmp_path / "reference").mkdir()
    reference = _finish(tmp_path / "reference" / "run")
    ref = _labels(tmp_path / "reference" / "run")
    n = reference["labelled"]
    assert n >= 20 and reference["failed"] == 0

    (tmp_path / "killed").mkdir()
    run_dir = tmp_path / "killed" / "run"
    committed: dict[int, tuple[float, float]] = {}
    kills_mid_run = 0
    for _ in range(3):
        target = min(n - 2, len(committed) + rng.randint(1, 6))
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
    assert len(committed) < n

    final = _finish(run_dir)
    assert final == reference
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
