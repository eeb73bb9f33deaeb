"""Real pw.x attempts through Parsl pilot jobs on a real (single-node) Slurm.

Start one with ``.ci/slurm/start.sh`` (root, Debian); without it these tests skip and say why.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from execution_helpers import fast_parsl_cfg, si_request

pytest.importorskip("parsl", reason="the cluster extra (parsl) is not installed")

from mlip_autopipec.execution.parsl_engine import (  # noqa: E402
    is_lost_worker_error,
    make_parsl_executor,
)

pytestmark = [pytest.mark.slurm, pytest.mark.pwx, pytest.mark.usefixtures("slurm", "pwx")]

#: A 2-atom Si SCF that takes several seconds, so a pilot job can be cancelled mid-run.
LONG = {"ecutwfc": 50.0, "kpts": 8}


def our_jobs() -> list[tuple[str, str]]:
    """(job id, state) of the pilot jobs Parsl submitted for this package's executor."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, name, state = line.split()
        if name.startswith("parsl.autopipec."):
            jobs.append((job_id, state))
    return jobs


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit_script(parsl_dir: Path) -> str:
    """The first sbatch script Parsl wrote for a pilot job."""
    scripts = [
        p
        for p in parsl_dir.glob("*/submit_scripts/parsl.autopipec.block-*")
        if p.suffix not in (".stdout", ".stderr")
    ]
    assert scripts, f"no submit script under {parsl_dir}"
    return sorted(scripts)[0].read_text()


def ours_alive(root: Path) -> list[str]:
    """Live pw.x / worker pool processes of this test (cwd or arguments under ``root``)."""
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = str((proc / "cwd").resolve())
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mine = cwd.startswith(str(root)) or str(root) in args
        if mine and state != "Z" and ("pw.x" in args or "process_worker_pool" in args):
            alive.append(args)
    return alive


def assert_nothing_left(root: Path) -> None:
    wait_for(lambda: not our_jobs(), 30, "the pilot jobs to end")
    wait_for(lambda: not ours_alive(root), 15, f"no process left: {ours_alive(root)}")


def test_pwx_attempts_in_pilot_jobs_match_direct_runs(tmp_path: Path) -> None:
    from mlip_autopipec.oracle import run_attempt

    strains = (-0.02, 0.02)
    direct = [
        run_attempt(si_request(tmp_path / f"d{i}" / "attempt-01", strain=s))
        for i, s in enumerate(strains)
    ]
    cfg = fast_parsl_cfg("slurm", max_blocks=1)
    with make_parsl_executor(cfg, 2, run_dir=tmp_path / "parsl") as ex:
        futures = [
            ex.submit(run_attempt, si_request(tmp_path / f"p{i}" / "attempt-01", strain=s))
            for i, s in enumerate(strains)
        ]
        results = [f.result(timeout=120) for f in futures]
    for ref, got in zip(direct, results, strict=True):
        assert ref.ok and got.ok, (ref.message, got.message)
        assert got.energy == pytest.approx(ref.energy, abs=1e-8)
        assert got.stress == pytest.approx(ref.stress, abs=1e-8)
    # the attempts really went through sbatch, with the venv put on PATH for the worker pool
    text = submit_script(tmp_path / "parsl")
    assert "#SBATCH --time=10" in text and "export PATH=" in text
    assert_nothing_left(tmp_path)


def test_two_mpi_ranks_inside_a_one_task_pilot_job(tmp_path: Path) -> None:
    """cores_per_task 2: ``mpirun -np 2 pw.x`` in a ``--ntasks-per-node=1`` block works."""
    from mlip_autopipec.oracle import run_attempt

    serial = run_attempt(si_request(tmp_path / "serial" / "attempt-01"))
    cfg = fast_parsl_cfg("slurm", cores_per_task=2)
    with make_parsl_executor(cfg, 1, run_dir=tmp_path / "parsl") as ex:
        result = ex.submit(run_attempt, si_request(tmp_path / "mpi" / "attempt-01")).result(120)
    assert result.ok, result.message
    pwo = (tmp_path / "mpi" / "attempt-01" / "espresso.pwo").read_text()
    assert re.search(r"running on\s+2 processors", pwo), "pw.x did not run on 2 MPI ranks"
    assert result.energy == pytest.approx(serial.energy, abs=1e-6)
    script = submit_script(tmp_path / "parsl")
    assert "#SBATCH --ntasks-per-node=1" in script  # the case that fails without our knobs
    assert_nothing_left(tmp_path)


def _cancel_when_running(attempt_dir: Path) -> str:
    """scancel the pilot job as soon as pw.x has started writing its output."""
    wait_for(lambda: (attempt_dir / "espresso.pwo").exists(), 90, "pw.x to start in the pilot")
    time.sleep(0.5)
    jobs = [job_id for job_id, state in our_jobs() if state == "RUNNING"]
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", jobs[0]], check=True)
    return jobs[0]


def test_scancelled_pilot_is_replaced_and_the_attempt_retried(tmp_path: Path) -> None:
    """Parsl's own retry (lost_worker_retries, default 2) re-runs the lost attempt."""
    from mlip_autopipec.oracle import run_attempt

    attempt = tmp_path / "s" / "attempt-01"
    cfg = fast_parsl_cfg("slurm")
    with make_parsl_executor(cfg, 1, run_dir=tmp_path / "parsl") as ex:
        future = ex.submit(run_attempt, si_request(attempt, **LONG))
        cancelled = _cancel_when_running(attempt)
        result = future.result(timeout=150)
        assert cancelled not in {job_id for job_id, _ in our_jobs()}
    reference = run_attempt(si_request(tmp_path / "ref" / "attempt-01", **LONG))
    assert result.ok, result.message
    assert result.energy == pytest.approx(reference.energy, abs=1e-8)
    # the lost try's half-written folder was kept aside, not mixed with the new one
    lost = attempt.with_name("attempt-01.lost-1")
    assert lost.is_dir()
    assert "JOB DONE" not in (lost / "espresso.pwo").read_text()
    assert "JOB DONE" in (attempt / "espresso.pwo").read_text()
    assert_nothing_left(tmp_path)


def test_lost_worker_surfaces_and_a_requeue_completes(tmp_path: Path) -> None:
    """With Parsl retries off the future raises; requeueing as the runner does completes it."""
    from mlip_autopipec.oracle import run_attempt

    attempt = tmp_path / "s" / "attempt-01"
    request = si_request(attempt, **LONG)
    cfg = fast_parsl_cfg("slurm", lost_worker_retries=0)
    with make_parsl_executor(cfg, 1, run_dir=tmp_path / "parsl") as ex:
        future: Future[Any] = ex.submit(run_attempt, request)
        _cancel_when_running(attempt)
        with pytest.raises(Exception) as info:
            future.result(timeout=90)
        assert is_lost_worker_error(info.value), repr(info.value)
        # what the runner does: same request, state unchanged, not counted as a pw.x failure
        result = ex.submit(run_attempt, request).result(timeout=150)
    assert result.ok, result.message
    assert result.number == 1
    assert attempt.with_name("attempt-01.lost-1").is_dir()
    assert_nothing_left(tmp_path)
