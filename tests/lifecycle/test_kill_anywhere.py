"""Kill the runner's whole process group (SIGKILL, as a batch system or `kill -KILL -PGID`
does) at random points, resume, and check: labels identical to an uninterrupted run, no
recorded attempt recomputed, and no process of the killed run alive afterwards.

The default part labels four 2-atom Si cells with the real pw.x; the `long` part also
kills during training (real pacemaker) and the report (40-50 s; kills of the loop during
pacemaker's fit and labelling, and between a fit and its record, are in the default
suite: tests/explore/test_loop_real.py, tests/test_pipeline_kill.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .runs import labels, of_run, query, start_run

PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
pytestmark = [
    pytest.mark.pwx,
    pytest.mark.skipif(
        shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or pseudo missing"
    ),
]

RECIPE = """\
name: kill-anywhere
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.03, max: 0.03, count: {count}}}
{rattle}oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  pseudo_dir: /usr/share/espresso/pseudo
  kspacing: 0.5
  input_data:
    system: {{ecutwfc: 12}}
    electrons: {{conv_thr: 1.0e-9}}
trainer:
  cutoff: 4.0
  max_epochs: 5
  max_basis_size: 8
execution:
  workers: 2
"""


def _attempts(run_dir: Path) -> dict[tuple[int, int], float]:
    """(structure, attempt number) -> when it was recorded."""
    rows = query(run_dir, "SELECT structure_id, number, created FROM attempts")
    return {(int(s), int(n)): float(t) for s, n, t in rows}


def _kill_group_and_check(proc: subprocess.Popen[str], run_dir: Path) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while of_run(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert of_run(run_dir) == [], "a process of the killed run is still alive"


def _finish(recipe: Path, run_dir: Path, stage: str) -> None:
    proc = start_run(recipe, run_dir, stage)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err
    assert of_run(run_dir) == []


def _kill_anywhere(tmp_path: Path, stage: str, count: int, rattle: int, kills: int) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill-anywhere seed {seed}")
    recipe = tmp_path / "r.yaml"
    extra = f"    rattle: {{stdev: 0.04, count: {rattle}, seed: 5}}\n" if rattle else ""
    recipe.write_text(RECIPE.format(count=count, rattle=extra))
    reference = tmp_path / "reference"
    _finish(recipe, reference, "label")
    ref = labels(reference)
    n = len(ref)

    run_dir = tmp_path / "run"
    recorded: dict[tuple[int, int], float] = {}
    for _ in range(kills):
        proc = start_run(recipe, run_dir, stage)
        # a random point: after a random number of new labels (or into training), + jitter
        target = min(n, len(labels(run_dir)) + rng.randint(0, 3))
        deadline = time.monotonic() + 300
        while proc.poll() is None and len(labels(run_dir)) < target:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0 if stage == "label" else 8.0))
        _kill_group_and_check(proc, run_dir)
        now = _attempts(run_dir)
        assert {k: now[k] for k in recorded} == recorded  # nothing recorded was redone
        recorded = now
    _finish(recipe, run_dir, stage)
    final_labels = labels(run_dir)
    assert final_labels.keys() == ref.keys()
    for sid, (energy, _) in ref.items():
        assert final_labels[sid][0] == pytest.approx(energy, abs=1e-8)
    final = _attempts(run_dir)
    assert {k: final[k] for k in recorded} == recorded
    assert {s for s, _ in final} == set(ref) and len(final) == n  # one attempt each
    status = subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", "status", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    counts = json.loads(status.stdout)["counts"]
    assert counts["running"] == counts["scf_retry"] == counts["failed"] == 0
    if stage == "all":
        assert counts["trained"] == n
        potentials = query(run_dir, "SELECT id, path FROM potentials")
        assert len(potentials) >= 1
        fits = sorted(p.name for p in (run_dir / "trainer").glob("fit-*"))
        assert all(
            (run_dir / "trainer" / f / "potential.json").is_file()
            for f in fits
            if ".interrupted-" not in f
        ), fits


def test_kill_the_group_anywhere_in_labelling(tmp_path):
    _kill_anywhere(tmp_path, "label", count=4, rattle=0, kills=2)


@pytest.mark.long
@pytest.mark.pacemaker
@pytest.mark.skipif(shutil.which("pacemaker") is None, reason="pacemaker not installed")
def test_kill_the_group_anywhere_in_labelling_training_and_report(tmp_path):
    _kill_anywhere(tmp_path, "all", count=4, rattle=2, kills=4)
