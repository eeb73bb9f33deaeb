"""SIGKILL of the runner's whole process group leaves no child of the run alive.

Children run in their own session (so a timeout reaches MPI ranks), so a group kill does not
reach them; they must die anyway (``PR_SET_PDEATHSIG`` + the guardian of ``process.py``) and a
resumed run must not recompute what was finished.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlip_autopipec import process
from mlip_autopipec.lifecycle.lock import RunLock
from mlip_autopipec.lifecycle.store import DB_NAME

from .runs import labels, of_run, start_run

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or Si.pz-vbc.UPF missing"
)

#: Three 2-atom cells (~0.2 s each), then an 8-atom cell (~1 s idle, several when busy).
RECIPE = """\
name: orphans
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: 2}}
  - bulk: {{element: Si, crystal: diamond, a: 5.43, cubic: true}}
oracle:
  command: {command}
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  pseudo_dir: /usr/share/espresso/pseudo
  kspacing: 0.5
  timeout: 600
  input_data:
    system: {{ecutwfc: 12}}
    electrons: {{conv_thr: 1.0e-9}}
execution:
  workers: 1
"""


def _wait(condition, proc: subprocess.Popen[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def _gone_within(run_dir: Path, pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (of_run(run_dir) or any(process.alive(p) for p in pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert of_run(run_dir) == []
    assert [p for p in pids if process.alive(p)] == []


def test_sigterm_ignoring_grandchild_in_its_own_session_dies_with_the_runner(tmp_path):
    command = json.dumps([sys.executable, str(FAKES / "pw_orphan_grandchild.py")])
    recipe = tmp_path / "fake.yaml"
    recipe.write_text(RECIPE.format(command=command))
    run_dir = tmp_path / "run"
    proc = start_run(recipe, run_dir)
    pid_file = run_dir / "structures" / "000001" / "attempt-01" / "grandchild.pid"
    try:
        _wait(pid_file.is_file, proc, 120, "grandchild")
        grandchild = int(pid_file.read_text())
        tagged = of_run(run_dir)
        assert grandchild in tagged and len(tagged) >= 2  # the fake and its grandchild
        _kill_group(proc)
        _gone_within(run_dir, [grandchild, *tagged], 5.0)
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_orphans_of_a_dead_runner_are_reaped_when_the_lock_is_taken(tmp_path):
    # the guardian can be killed too (OOM killer, a kill of every process of the user):
    # then the next runner of the run directory kills what is left before touching it
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tag = process.run_tag(run_dir, pid=999_999_999)  # a runner that is gone
    env = {**os.environ, process.RUN_TAG_ENV: tag}
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while orphan.pid not in of_run(run_dir):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with RunLock(run_dir) as lock:
            assert lock.reaped == [orphan.pid]
            assert orphan.wait(timeout=5) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


@needs_pwx
def test_real_pwx_dies_with_the_runner_and_the_resume_redoes_nothing(tmp_path):
    recipe = tmp_path / "real.yaml"
    recipe.write_text(RECIPE.format(command="pw.x"))
    run_dir = tmp_path / "run"
    proc = start_run(recipe, run_dir)
    try:
        # the three small cells are labelled, the big one is in pw.x (which has written
        # its banner: a process of the run that is still alive could be what pw.x's MPI
        # singleton start left behind from the small cells)
        pwo = run_dir / "structures" / "000004" / "attempt-01" / "espresso.pwo"

        def big_cell_running() -> bool:
            return pwo.is_file() and pwo.stat().st_size > 0 and bool(of_run(run_dir))

        _wait(big_cell_running, proc, 180, "big cell")
        assert len(labels(run_dir)) == 3
        running = of_run(run_dir)
        _kill_group(proc)
        _gone_within(run_dir, running, 5.0)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    before = labels(run_dir)
    resumed = start_run(recipe, run_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    after = labels(run_dir)
    assert len(after) == 4
    assert {k: after[k] for k in before} == before  # same energy, same commit time
    conn = sqlite3.connect(run_dir / DB_NAME)
    attempts = conn.execute(
        "SELECT structure_id, COUNT(*) FROM attempts GROUP BY structure_id"
    ).fetchall()
    conn.close()
    assert all(n == 1 for _, n in attempts)
    big = next(s for s in after if s not in before)
    folders = sorted(p.name for p in (run_dir / "structures" / f"{big:06d}").iterdir())
    assert folders == ["attempt-01", "attempt-01.interrupted-1"], (folders, running, err)


def test_stopping_sigterm_ignoring_children_takes_one_grace_period_not_one_each(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(process, "KILL_GRACE", 1.0)
    # each child notes when SIGTERM reached it, ignores it, and is SIGKILLed after the grace
    script = (
        "import signal, sys, time\n"
        "def note(*_):\n"
        "    open(sys.argv[1], 'w').write(repr(time.time()))\n"
        "signal.signal(signal.SIGTERM, note)\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "time.sleep(3600)\n"
    )
    returned: dict[int, float] = {}

    def run(i: int) -> None:
        process.run_process([sys.executable, "-c", script, str(tmp_path / f"term-{i}")], tmp_path)
        returned[i] = time.time()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("*.ready"))) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert process.terminate_all() == 3
        for t in threads:
            t.join(60)
    finally:
        process.reset()
    termed = [float((tmp_path / f"term-{i}").read_text()) for i in range(3)]
    # every child got SIGTERM before any of them was killed: the grace periods overlap
    assert max(termed) < min(returned.values())
