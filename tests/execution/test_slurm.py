"""Real pw.x attempts through Parsl pilot jobs on a real (single-node) Slurm.

Start one with ``.ci/slurm/start.sh`` (root, Debian); without it these tests skip and say why.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from execution_helpers import fast_parsl_cfg, si_request

from procs import processes

pytest.importorskip("parsl", reason="the cluster extra (parsl) is not installed")

from mlip_autopipec import process  # noqa: E402
from mlip_autopipec.execution.parsl_engine import (  # noqa: E402
    LostWorkerError,
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
    where = str(root)
    return [
        p.args
        for p in processes()
        if (p.cwd.startswith(where) or where in p.args)
        and p.state != "Z"
        and ("pw.x" in p.args or "process_worker_pool" in p.args)
    ]


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


def test_lost_worker_surfaces_and_a_requeue_completes(tmp_path: Path) -> None:
    """With Parsl retries off the future raises; requeueing as the runner does completes it."""
    from mlip_autopipec.oracle import run_attempt

    attempt = tmp_path / "s" / "attempt-01"
    request = si_request(attempt, **LONG)
    cfg = fast_parsl_cfg("slurm", lost_worker_retries=0)
    with make_parsl_executor(cfg, 1, run_dir=tmp_path / "parsl") as ex:
        future: Future[Any] = ex.submit(run_attempt, request)
        _cancel_when_running(attempt)
        with pytest.raises(LostWorkerError) as info:
            future.result(timeout=90)
        assert is_lost_worker_error(info.value), repr(info.value)
        # what the runner does: same request, state unchanged, not counted as a pw.x failure
        result = ex.submit(run_attempt, request).result(timeout=150)
    assert result.ok, result.message
    assert result.number == 1
    assert attempt.with_name("attempt-01.lost-1").is_dir()
    assert_nothing_left(tmp_path)


# -- a whole recipe ---------------------------------------------------------------------------

RECIPE = """\
name: si-cluster
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: 3}}
oracle:
  pseudopotentials: {{Si: {pseudo}}}
  kpts: [{k}, {k}, {k}]
  input_data:
    system: {{ecutwfc: {ecut}}}
execution:
{execution}
"""

SLURM_EXECUTION = """\
  engine: parsl
  workers: 2
  parsl:
    provider: slurm
    walltime: "00:10:00"
    worker_init: "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
"""


def write_recipe(path: Path, execution: str, ecut: float = 12.0, k: int = 2) -> Path:
    from execution_helpers import SI_PSEUDO

    path.write_text(RECIPE.format(pseudo=SI_PSEUDO, k=k, ecut=ecut, execution=execution))
    return path


def labels(run_dir: Path) -> dict[str, Any]:
    """source -> (energy, forces, stress) of every labelled structure of a run."""
    from mlip_autopipec.lifecycle.store import Store

    with Store.open(run_dir, create=False) as store:
        return {
            a.info["source"]: (
                a.get_potential_energy(),
                a.get_forces(),
                a.get_stress(),
            )
            for a in store.labelled_atoms()
        }


def assert_same_labels(got: dict[str, Any], ref: dict[str, Any]) -> None:
    assert sorted(got) == sorted(ref) and len(ref) == 3
    for source, (energy, forces, stress) in ref.items():
        assert got[source][0] == pytest.approx(energy, abs=1e-8), source
        assert got[source][1] == pytest.approx(forces, abs=1e-8), source
        assert got[source][2] == pytest.approx(stress, abs=1e-8), source


def test_recipe_with_parsl_slurm_gives_the_local_labels(tmp_path: Path) -> None:
    from mlip_autopipec.cli import main

    local = write_recipe(tmp_path / "local.yaml", "  engine: local\n")
    cluster = write_recipe(tmp_path / "cluster.yaml", SLURM_EXECUTION)
    assert main(["run", str(local), "--run-dir", str(tmp_path / "local"), "--stage", "label"]) == 0
    rc = main(["run", str(cluster), "--run-dir", str(tmp_path / "slurm"), "--stage", "label"])
    assert rc == 0
    assert_same_labels(labels(tmp_path / "slurm"), labels(tmp_path / "local"))
    # Parsl's files live inside the run directory
    assert list((tmp_path / "slurm" / "parsl").glob("*/submit_scripts/parsl.autopipec.block-*"))
    assert_nothing_left(tmp_path)


def test_pilot_jobs_slurm_refuses_stop_the_run_without_failing_structures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlip_autopipec.cli import main
    from mlip_autopipec.lifecycle.store import Store

    execution = SLURM_EXECUTION.replace("provider: slurm", "provider: slurm\n    partition: nosuch")
    recipe = write_recipe(tmp_path / "bad.yaml", execution)
    run_dir = tmp_path / "run"
    try:
        assert main(["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label"]) == 1
    finally:
        # the runner's stop calls process.terminate_all(), which refuses new processes in
        # this (pytest) process until reset
        process.reset()
    err = capsys.readouterr().err
    assert "autopipec: error: the parsl engine failed: sbatch failed:" in err
    assert "invalid partition specified: nosuch" in err
    assert "Traceback" not in err
    with Store.open(run_dir, create=False) as store:
        assert store.counts()["pending"] == 3  # requeued, nothing quarantined
    assert_nothing_left(tmp_path)


def _label_recipe(recipe_path: Path, run_dir: Path, executor_cm: Any) -> dict[str, int]:
    """What the pipeline's label step does, with an executor of our choosing."""
    from mlip_autopipec.lifecycle.runner import label_all
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.oracle import EspressoOracle, run_attempt
    from mlip_autopipec.recipe import build_structures, load_recipe, resolve_pseudopotentials

    recipe = load_recipe(recipe_path)
    with Store.open(run_dir) as store:
        pseudos = resolve_pseudopotentials(recipe, run_dir / "pseudo")
        store.add_structures((s.atoms, s.source) for s in build_structures(recipe))
        oracle = EspressoOracle(recipe.oracle, pseudos)
        with executor_cm as executor:
            return label_all(store, oracle, run_attempt, executor, run_dir, handle_signals=False)


def test_scancel_during_a_recipe_run_keeps_the_labels(tmp_path: Path) -> None:
    """A pilot job cancelled mid-run: every structure still ends labelled, same labels, and
    the lost attempt is not recorded as an attempt."""
    from mlip_autopipec.execution import local_executor
    from mlip_autopipec.lifecycle.store import Store

    recipe = write_recipe(
        tmp_path / "r.yaml", "  engine: local\n", ecut=LONG["ecutwfc"], k=int(LONG["kpts"])
    )
    _label_recipe(recipe, tmp_path / "local", local_executor(2))

    run_dir = tmp_path / "slurm"
    cancelled: list[str] = []

    def cancel_first_pilot() -> None:
        first = run_dir / "structures"
        wait_for(lambda: list(first.glob("*/attempt-01/espresso.pwo")), 120, "pw.x to start")
        time.sleep(0.5)
        jobs = [job_id for job_id, state in our_jobs() if state == "RUNNING"]
        subprocess.run(["scancel", *jobs], check=True)
        cancelled.extend(jobs)

    canceller = threading.Thread(target=cancel_first_pilot, daemon=True)
    canceller.start()
    executor = make_parsl_executor(fast_parsl_cfg("slurm"), 2, run_dir=run_dir / "parsl")
    counts = _label_recipe(recipe, run_dir, executor)
    canceller.join(5)
    assert cancelled, "the pilot job was never cancelled"
    with Store.open(run_dir, create=False) as store:
        rows = [(r["source"], r["state"], r["failure"]) for r in store.structure_rows()]
    assert counts["labelled"] == 3 and counts["failed"] == 0, rows
    assert_same_labels(labels(run_dir), labels(tmp_path / "local"))
    with Store.open(run_dir, create=False) as store:
        assert store.total_attempts() == 3  # lost tries are retried, not recorded as failures
    # the lost tries' half-written folders were kept aside, not mixed with the new ones
    lost = list(run_dir.glob("structures/*/attempt-01.lost-1"))
    assert lost
    for folder in lost:
        assert "JOB DONE" not in (folder / "espresso.pwo").read_text()
        assert "JOB DONE" in (folder.with_name("attempt-01") / "espresso.pwo").read_text()
    assert_nothing_left(tmp_path)
