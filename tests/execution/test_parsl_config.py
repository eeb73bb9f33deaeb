"""The Parsl Config builder and helpers, without starting Parsl (pure, fast)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the cluster extra (parsl) is not installed")

from parsl.executors import HighThroughputExecutor  # noqa: E402
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost  # noqa: E402
from parsl.providers import LocalProvider, SlurmProvider  # noqa: E402

from mlip_autopipec.errors import AutopipecError, UsageError  # noqa: E402
from mlip_autopipec.execution import parsl_engine as pe  # noqa: E402

SLURM = {
    "engine": "parsl",
    "parsl": {
        "provider": "slurm",
        "partition": "short",
        "account": "proj42",
        "qos": "normal",
        "nodes_per_block": 1,
        "max_blocks": 4,
        "walltime": "02:30:00",
        "cores_per_task": 4,
        "cores_per_node": 32,
        "worker_init": "module load qe/7.2",
        "scheduler_options": "--mem=60G\n#SBATCH --constraint=cpu",
    },
}


def _executor(cfg: dict, workers: int = 2, run_dir: Path = Path("/tmp/x")):
    config = pe.build_config(pe.parse_parsl_settings(cfg), workers, run_dir)
    (executor,) = config.executors
    assert isinstance(executor, HighThroughputExecutor)
    return config, executor


def test_slurm_config_carries_the_plain_terms(tmp_path: Path) -> None:
    config, executor = _executor(SLURM, run_dir=tmp_path)
    provider = executor.provider
    assert isinstance(provider, SlurmProvider)
    assert provider.partition == "short"
    assert provider.account == "proj42"
    assert provider.walltime == "02:30:00"
    assert provider.nodes_per_block == 1
    assert provider.max_blocks == 4
    assert provider.init_blocks == 1 and provider.min_blocks == 0
    assert provider.cores_per_node == 32
    assert provider.exclusive is True
    assert [line for line in provider.scheduler_options.splitlines() if line] == [
        "#SBATCH --qos=normal",
        "#SBATCH --mem=60G",
        "#SBATCH --constraint=cpu",
        "#SBATCH --exclusive",
        "#SBATCH --partition=short",
        "#SBATCH --account=proj42",
    ]
    assert executor.cores_per_worker == 4
    assert executor.max_workers_per_node == float("inf")  # derived on the node: 32 // 4
    assert config.run_dir == str(tmp_path)
    assert config.retries == 2
    # the interchange runs with this interpreter, whatever PATH says
    assert executor.interchange_launch_cmd[0] == sys.executable


def test_worker_init_puts_the_venv_first_then_the_users_lines() -> None:
    _, executor = _executor(SLURM)
    lines = [line for line in executor.provider.worker_init.splitlines() if line]
    venv_bin = str(Path(sys.executable).parent)
    assert lines[0] == f'export PATH={venv_bin}:"$PATH"'
    assert "export OMPI_MCA_rmaps_base_oversubscribe=1" in lines
    assert "export OMPI_MCA_hwloc_base_binding_policy=none" in lines
    assert lines[-1] == "module load qe/7.2"
    # the worker pool HTEX starts from PATH is the one next to this interpreter
    assert (Path(venv_bin) / "process_worker_pool.py").is_file()


def test_worker_init_path_really_finds_the_worker_pool(tmp_path: Path) -> None:
    """Run the generated lines in a shell with a PATH lacking the venv."""
    _, executor = _executor({"engine": "parsl", "parsl": {"provider": "local"}})
    script = executor.provider.worker_init + "command -v process_worker_pool.py\n"
    out = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(Path(sys.executable).parent / "process_worker_pool.py")


def test_local_provider_caps_workers_and_listens_on_loopback() -> None:
    cfg = {"engine": "parsl", "parsl": {"provider": "local", "cores_per_task": 2}}
    _, executor = _executor(cfg, workers=3)
    assert isinstance(executor.provider, LocalProvider)
    assert executor.max_workers_per_node == 3
    assert executor.cores_per_worker == 2
    assert executor.loopback_address == "127.0.0.1"


def test_explicit_workers_cap_slurm_nodes() -> None:
    cfg = {"engine": "parsl", "workers": 5, "parsl": dict(SLURM["parsl"])}
    _, executor = _executor(cfg)
    assert executor.max_workers_per_node == 5


def test_multi_node_blocks_use_srun_to_start_one_pool_per_node() -> None:
    cfg = {"engine": "parsl", "parsl": {**SLURM["parsl"], "nodes_per_block": 3}}
    _, executor = _executor(cfg)
    assert type(executor.provider.launcher).__name__ == "SrunLauncher"
    assert executor.provider.nodes_per_block == 3


def test_status_poll_interval_is_settable() -> None:
    cfg = {"engine": "parsl", "parsl": {"provider": "slurm", "status_poll_seconds": 3}}
    _, executor = _executor(cfg)
    assert executor.provider.status_polling_interval == 3


@pytest.mark.parametrize(
    ("given", "parsl_form"),
    [("00:30:00", "00:30:00"), ("1-02:00:00", "26:00:00"), ("2-00:00:30", "48:00:30")],
)
def test_walltime_day_prefix_is_folded_into_hours(given: str, parsl_form: str) -> None:
    settings = pe.parse_parsl_settings({"parsl": {"walltime": given}})
    assert settings.walltime == parsl_form


def test_defaults_when_section_is_missing() -> None:
    settings = pe.parse_parsl_settings({"engine": "parsl"})
    assert settings.provider == "local"
    assert settings.cores_per_task == 1
    assert settings.walltime == "01:00:00"
    assert pe.launcher_argv(settings) == []


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("provider", "pbs", "execution.parsl.provider"),
        ("walltime", "90", "execution.parsl.walltime"),
        ("walltime", "1:99:00", "execution.parsl.walltime"),
        ("cores_per_task", 0, "execution.parsl.cores_per_task"),
        ("cores_per_task", True, "execution.parsl.cores_per_task"),
        ("max_blocks", "2", "execution.parsl.max_blocks"),
        ("partition", 7, "execution.parsl.partition"),
        ("exclusive", "yes", "execution.parsl.exclusive"),
        ("heartbeat_threshold", 10, "execution.parsl.heartbeat_threshold"),
        ("mpi_launcher", 'mpirun "-np', "execution.parsl.mpi_launcher"),
        ("mpi_launcher", "mpirun -np {ranks}", "execution.parsl.mpi_launcher"),
        ("cores_per_node", 1, "execution.parsl.cores_per_node"),
        ("nodes", 2, "unknown key(s) nodes"),
    ],
)
def test_bad_settings_name_the_key(key: str, value: object, needle: str) -> None:
    parsl = {"provider": "slurm", "cores_per_task": 2, key: value}
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        pe.parse_parsl_settings({"engine": "parsl", "parsl": parsl})


@pytest.mark.parametrize(
    ("launcher", "cores", "expected"),
    [
        (None, 1, []),
        (None, 2, ["mpirun", "-np", "2"]),
        ("mpirun", 4, ["mpirun", "-np", "4"]),
        ("mpiexec --bind-to core", 4, ["mpiexec", "--bind-to", "core", "-np", "4"]),
        ("srun --mpi=pmix", 8, ["srun", "--mpi=pmix", "--overlap", "-n", "8", "-c", "1"]),
        ("auto", 2, ["mpirun", "-np", "2"]),
        ("auto", 1, []),
        ("mpirun -n {cores} --map-by core", 3, ["mpirun", "-n", "3", "--map-by", "core"]),
        ("none", 4, []),
    ],
)
def test_launcher_argv(launcher: str | None, cores: int, expected: list[str]) -> None:
    parsl = {"cores_per_task": cores, "mpi_launcher": launcher}
    settings = pe.parse_parsl_settings({"parsl": parsl})
    assert pe.launcher_argv(settings) == expected


def test_with_launcher_leaves_user_launchers_alone() -> None:
    prefix = ["mpirun", "-np", "2"]
    assert pe.with_launcher(["pw.x", "-nk", "2"], prefix) == [*prefix, "pw.x", "-nk", "2"]
    assert pe.with_launcher(["/opt/ompi/bin/mpirun", "-np", "8", "pw.x"], prefix) == [
        "/opt/ompi/bin/mpirun",
        "-np",
        "8",
        "pw.x",
    ]
    assert pe.with_launcher(["pw.x"], []) == ["pw.x"]


@dataclass(frozen=True)
class _Request:
    argv: tuple[str, ...]
    attempt_dir: Path


def test_prepare_copies_a_frozen_request_with_the_launcher() -> None:
    settings = pe.parse_parsl_settings({"parsl": {"cores_per_task": 2}})
    executor = pe.ParslExecutor(dfk=None, settings=settings, max_workers=1)  # type: ignore[arg-type]
    request = _Request(("pw.x",), Path("/tmp/a"))
    prepared = executor.prepare(request)
    assert prepared.argv == ("mpirun", "-np", "2", "pw.x")
    assert request.argv == ("pw.x",)  # the caller's request is untouched
    assert executor.prepare(7) == 7


def test_lost_worker_errors_are_recognised() -> None:
    assert pe.is_lost_worker_error(ManagerLost(b"abc123", "node1"))
    assert pe.is_lost_worker_error(WorkerLost(3, "node1"))
    try:
        try:
            raise WorkerLost(1, "node2")
        except WorkerLost as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert pe.is_lost_worker_error(wrapped)
    assert not pe.is_lost_worker_error(ValueError("pw.x input"))

    class ManagerLostLookalike(Exception):
        pass

    ManagerLostLookalike.__name__ = "ManagerLost"
    assert not pe.is_lost_worker_error(ManagerLostLookalike())


def test_parsl_failures_become_execution_errors() -> None:
    from parsl.executors.errors import BadStateException

    lost = pe.as_execution_error(ManagerLost(b"abc", "node7"), Path("/runs/x/parsl"))
    assert isinstance(lost, pe.LostWorkerError)
    assert isinstance(lost, AutopipecError)  # the runner stops and requeues, never quarantines
    assert pe.is_lost_worker_error(lost)
    assert "/runs/x/parsl" in str(lost)

    report = Exception(
        "Error 1:\n\tFailed to start block 0: Could not read job ID; recode=1, stdout=, "
        "stderr=sbatch: error: invalid partition specified: gpu9\n"
        "sbatch: error: Batch job submission failed\n\nError 2:\n\tFailed to start block 1: ..."
    )

    class _Executor:
        label = "autopipec"

    broken = pe.as_execution_error(BadStateException(_Executor(), report))  # type: ignore[arg-type]
    assert type(broken) is pe.ExecutionError
    assert not pe.is_lost_worker_error(broken)
    assert str(broken) == (
        "the parsl engine failed: sbatch failed: sbatch: error: invalid partition specified: "
        "gpu9 / sbatch: error: Batch job submission failed"
    )
    # errors raised by the attempt function itself are left alone
    own = ValueError("bad input")
    assert pe.as_execution_error(own) is own


def test_retry_handler_retries_only_lost_workers() -> None:
    handler = pe._retry_only_lost_workers(2)
    assert handler(ManagerLost(b"m", "h"), {}) == 1.0  # type: ignore[arg-type]
    assert handler(ValueError("x"), {}) > 2  # type: ignore[arg-type]


def test_run_task_sets_aside_a_lost_try_and_returns_the_value(tmp_path: Path) -> None:
    attempt = tmp_path / "attempt-01"
    attempt.mkdir()
    (attempt / "espresso.pwo").write_text("half written\n")
    result = pe.run_task(lambda r, k: (r.attempt_dir.exists(), k), _Request(("pw.x",), attempt), 5)
    assert result == (False, 5)
    assert (tmp_path / "attempt-01.lost-1" / "espresso.pwo").read_text() == "half written\n"


def test_run_task_reraises_the_functions_error(tmp_path: Path) -> None:
    def boom() -> None:
        raise KeyError("bad")

    with pytest.raises(KeyError, match="bad"):
        pe.run_task(boom)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_task_stops_pw_x_children_on_sigterm_and_sigint(tmp_path: Path, signum: int) -> None:
    """A worker stopped by a signal must not leave its (own-session) child process running."""
    marker = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from mlip_autopipec.execution.parsl_engine import run_task
        from mlip_autopipec.process import run_process
        argv = ["bash", "-c", "echo $$ > {marker}; exec sleep 60"]
        run_task(run_process, argv, Path("{tmp_path}"))
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.05)
    child = int(marker.read_text())
    worker.send_signal(signum)
    assert worker.wait(timeout=30) == -signum  # died from the signal, as without run_task
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)
