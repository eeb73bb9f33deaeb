"""Run pw.x attempts through Parsl (``execution.engine: parsl``): Slurm pilot jobs or local.

The runner stays the single writer of the store; this module only changes *where* an attempt
runs. :func:`make_parsl_executor` turns the recipe's plain-terms ``execution.parsl`` section into
a Parsl :class:`~parsl.config.Config` (a HighThroughputExecutor on a Slurm or local provider) and
yields an object whose ``submit(fn, *args)`` returns a :class:`concurrent.futures.Future`.

Parsl is an optional extra (``pip install 'mlip-autopipec[cluster]'``); it is imported lazily so
the local engine never needs it. The DataFlowKernel always lives inside a ``with`` block: leaving
it (normally or by an exception) shuts the interchange down and cancels every pilot job.

Lost workers (a pilot job scancelled or hitting its walltime mid-attempt) make the task fail
with Parsl's ``ManagerLost``/``WorkerLost``. Parsl itself retries such tasks
``lost_worker_retries`` times (only those: an attempt never raises for pw.x failures), in the
same attempt folder after setting the lost try's files aside (``attempt-NN.lost-<k>``). When the
retries are used up the future raises :class:`LostWorkerError`; any other Parsl failure (sbatch
refused the pilot job, the executor broke) raises :class:`ExecutionError`. Both are
``AutopipecError``s, so the runner stops and requeues instead of quarantining a structure; see
:func:`is_lost_worker_error` for requeueing lost attempts without stopping.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlip_autopipec import process
from mlip_autopipec.errors import AutopipecError, UsageError
from mlip_autopipec.execution.local import MPI_LAUNCHERS
from mlip_autopipec.fsutil import set_aside
from mlip_autopipec.signals import catch_signals, die_by

if TYPE_CHECKING:
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.dataflow.taskrecord import TaskRecord

#: Exception class names (from ``parsl.executors.high_throughput.errors``) that mean the worker
#: running a task disappeared: the task itself did not fail. Matched by name and module so this
#: check works without importing Parsl.
LOST_WORKER_ERRORS = frozenset({"ManagerLost", "WorkerLost"})


#: OpenMPI reads these from the environment. Inside a pilot job Slurm grants one task per node
#: (Parsl starts one worker pool per node), so OpenMPI counts one slot and ``mpirun -np 2`` fails
#: with "not enough slots". HTEX already limits how many attempts share a node
#: (cores // cores_per_task), so the slot check is redundant: allow oversubscription, and do not
#: bind ranks to cores, or two concurrent ``mpirun -np 2`` would both pin to cores 0 and 1.
#: Other MPI implementations ignore these variables.
OPENMPI_ENV = {
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
}

#: The HighThroughputExecutor's label (Parsl apps are bound to it).
LABEL = "autopipec"

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")


class ExecutionError(AutopipecError):
    """The cluster engine failed, not pw.x: pilot jobs cannot start, the executor broke.

    Futures raise it (with Parsl's exception as ``__cause__``) instead of Parsl's own types, so
    the runner stops the run and requeues the structure rather than quarantining it.
    """


class LostWorkerError(ExecutionError):
    """The worker running an attempt vanished (pilot job cancelled or out of walltime) and
    Parsl's own retries are used up. The attempt itself did not fail: requeue it."""


def as_execution_error(exc: BaseException, run_dir: Path | None = None) -> BaseException:
    """Parsl's infrastructure exceptions as :class:`ExecutionError`; anything else unchanged.

    Exceptions raised by the submitted function itself come back as their own types and are
    returned as they are.
    """
    if isinstance(exc, ExecutionError) or not type(exc).__module__.startswith("parsl."):
        return exc
    where = f" (Parsl log and pilot job output: {run_dir})" if run_dir is not None else ""
    wrapped: ExecutionError
    if is_lost_worker_error(exc):
        wrapped = LostWorkerError(f"a pilot job was lost while running an attempt: {exc}{where}")
    else:
        wrapped = ExecutionError(f"the parsl engine failed: {_summary(exc)}{where}")
    wrapped.__cause__ = exc
    return wrapped


def _summary(exc: BaseException) -> str:
    """One readable line from Parsl's block-failure reports (which repeat per block)."""
    detail = str(exc).split("\n\nError 2:")[0]
    if "stderr=" in detail:
        # sbatch refused the pilot job: its own message is what the user needs
        detail = "sbatch failed: " + detail.split("stderr=", 1)[1]
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return " / ".join(lines) or type(exc).__name__


@dataclass(frozen=True)
class ParslSettings:
    """The recipe's ``execution.parsl`` section, checked, with the schema's defaults filled in
    (:func:`parse_parsl_settings`; the defaults live only in the schema, so no field has one).
    """

    provider: str  # "slurm" or "local"
    partition: str | None
    account: str | None
    qos: str | None
    nodes_per_block: int
    max_blocks: int
    walltime: str
    cores_per_task: int
    #: Cores per node; None lets each pilot job count the cores it sees.
    cores_per_node: int | None
    #: None or "auto": ``mpirun -np {cores}`` when cores_per_task > 1, nothing otherwise.
    #: "none": never prefix. Otherwise a launcher name or a template containing ``{cores}``.
    mpi_launcher: str | None
    worker_init: str
    scheduler_options: str
    exclusive: bool
    heartbeat_period: int
    heartbeat_threshold: int
    lost_worker_retries: int
    #: How often Parsl asks Slurm (squeue/sacct) about its pilot jobs. A cancelled pilot is only
    #: replaced after the next poll, so this bounds the recovery delay after a lost block.
    status_poll_seconds: int
    #: Explicit cap on concurrent attempts per node (``execution.workers``); None: derived.
    workers_per_node: int | None


def parsl_schema() -> dict[str, Any]:
    """The schema of ``execution.parsl`` (its keys, defaults and descriptions)."""
    from mlip_autopipec.recipe.schema import load_schema

    section: dict[str, Any] = load_schema()["properties"]["execution"]["properties"]["parsl"]
    return section


def _where(key: str) -> str:
    return f"execution.parsl.{key}"


def _positive_int(raw: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{_where(key)}: expected an integer >= {minimum}, got {value!r}")
    return value


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{_where(key)}: expected a string, got {value!r}")
    return value


def parse_parsl_settings(execution_cfg: Mapping[str, Any]) -> ParslSettings:
    """Check ``execution_cfg["parsl"]`` and return it with defaults filled in.

    Raises :class:`~mlip_autopipec.errors.UsageError` naming the offending key. The recipe
    schema validates the same keys earlier; this guards direct (API) use.
    """
    raw = execution_cfg.get("parsl") or {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"execution.parsl: expected a mapping, got {raw!r}")
    from mlip_autopipec.recipe.schema import fill_defaults

    schema = parsl_schema()
    known = frozenset(schema["properties"])
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"execution.parsl: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    # a key given as null takes the schema's default, like a missing one
    raw = fill_defaults({k: v for k, v in raw.items() if v is not None}, schema)
    provider = raw["provider"]
    if provider not in ("slurm", "local"):
        raise UsageError(f"{_where('provider')}: expected 'slurm' or 'local', got {provider!r}")
    walltime = raw["walltime"]
    match = _WALLTIME.match(walltime) if isinstance(walltime, str) else None
    if match is None:
        raise UsageError(
            f"{_where('walltime')}: expected 'HH:MM:SS' or 'D-HH:MM:SS', got {walltime!r}"
        )
    days, hours, minutes, seconds = match.groups()
    # Parsl only understands HH:MM:SS: fold Slurm's day prefix into the hours.
    walltime = f"{int(days or 0) * 24 + int(hours):02d}:{minutes}:{seconds}"
    exclusive = raw["exclusive"]
    if not isinstance(exclusive, bool):
        raise UsageError(f"{_where('exclusive')}: expected true or false, got {exclusive!r}")
    cores_per_node = raw["cores_per_node"]
    if cores_per_node is not None:
        cores_per_node = _positive_int(raw, "cores_per_node")
    workers = execution_cfg.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise UsageError(f"execution.workers: expected an integer, got {workers!r}")
    settings = ParslSettings(
        provider=provider,
        partition=_optional_str(raw, "partition"),
        account=_optional_str(raw, "account"),
        qos=_optional_str(raw, "qos"),
        nodes_per_block=_positive_int(raw, "nodes_per_block"),
        max_blocks=_positive_int(raw, "max_blocks"),
        walltime=walltime,
        cores_per_task=_positive_int(raw, "cores_per_task"),
        cores_per_node=cores_per_node,
        mpi_launcher=_optional_str(raw, "mpi_launcher"),
        worker_init=_optional_str(raw, "worker_init") or "",
        scheduler_options=_optional_str(raw, "scheduler_options") or "",
        exclusive=exclusive,
        heartbeat_period=_positive_int(raw, "heartbeat_period"),
        heartbeat_threshold=_positive_int(raw, "heartbeat_threshold"),
        lost_worker_retries=_positive_int(raw, "lost_worker_retries", minimum=0),
        status_poll_seconds=_positive_int(raw, "status_poll_seconds"),
        workers_per_node=workers,
    )
    if settings.heartbeat_threshold <= settings.heartbeat_period:
        raise UsageError(
            f"{_where('heartbeat_threshold')}: must exceed heartbeat_period "
            f"({settings.heartbeat_threshold} <= {settings.heartbeat_period})"
        )
    if settings.cores_per_node is not None and settings.cores_per_node < settings.cores_per_task:
        raise UsageError(
            f"{_where('cores_per_node')}: {settings.cores_per_node} is fewer than "
            f"cores_per_task ({settings.cores_per_task})"
        )
    launcher_argv(settings)  # reject a malformed template now, not inside a worker
    return settings


def launcher_argv(settings: ParslSettings) -> list[str]:
    """The argv prefix that launches one pw.x on ``cores_per_task`` cores (may be empty).

    ``mpi_launcher`` None/"auto" means ``mpirun -np {cores}`` when cores_per_task > 1; "none"
    means no prefix; a bare launcher name gets ``-np {cores}`` (srun: ``--overlap -n {cores}
    -c 1``); a string containing ``{cores}`` is split with shlex and used as given.
    """
    cores = settings.cores_per_task
    spec = settings.mpi_launcher
    if spec is None or spec.strip().lower() == "auto":
        spec = "mpirun" if cores > 1 else "none"
    if spec.strip().lower() == "none":
        return []
    if "{" in spec:
        try:
            return [part.format(cores=cores) for part in shlex.split(spec)]
        except (ValueError, KeyError, IndexError) as exc:
            raise UsageError(f"{_where('mpi_launcher')}: cannot use {spec!r}: {exc}") from exc
    try:
        parts = shlex.split(spec)
    except ValueError as exc:
        raise UsageError(f"{_where('mpi_launcher')}: cannot split {spec!r}: {exc}") from exc
    if not parts:
        return []
    if Path(parts[0]).name == "srun":
        # --overlap: attempts sharing a pilot job run as concurrent steps; -c 1: one core per
        # rank, not the pilot's --cpus-per-task (which srun would otherwise inherit).
        return [*parts, "--overlap", "-n", str(cores), "-c", "1"]
    return [*parts, "-np", str(cores)]


def with_launcher(argv: Sequence[str], prefix: Sequence[str]) -> list[str]:
    """``prefix + argv`` unless argv already starts with an MPI launcher or prefix is empty."""
    argv = list(argv)
    if not prefix or (argv and Path(argv[0]).name in MPI_LAUNCHERS):
        return argv
    return [*prefix, *argv]


def venv_bin() -> Path:
    """The directory of the running interpreter: it holds ``process_worker_pool.py``."""
    return Path(sys.executable).parent


def build_worker_init(settings: ParslSettings) -> str:
    """Shell lines run at the start of every pilot job / local block.

    The interpreter's bin goes first on PATH (HTEX starts ``process_worker_pool.py`` from PATH,
    and the workers must unpickle this package's objects); the user's ``worker_init`` runs after
    it so an explicit activation wins.
    """
    lines = [f'export PATH={shlex.quote(str(venv_bin()))}:"$PATH"']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in OPENMPI_ENV.items()]
    if settings.worker_init.strip():
        lines.append(settings.worker_init.strip())
    return "\n".join(lines) + "\n"


def _scheduler_options(settings: ParslSettings) -> str:
    lines = []
    if settings.qos:
        lines.append(f"#SBATCH --qos={settings.qos}")
    for line in settings.scheduler_options.splitlines():
        line = line.strip()
        if not line:
            continue
        # Accept bare options ("--mem=8G") as well as full "#SBATCH --mem=8G" lines.
        lines.append(line if line.startswith("#") else f"#SBATCH {line}")
    return "\n".join(lines) + ("\n" if lines else "")


def build_config(settings: ParslSettings, workers: int, run_dir: Path) -> Config:
    """The Parsl Config for these settings; Parsl writes its logs and job scripts in run_dir.

    ``workers`` caps concurrent attempts for the local provider; on Slurm each pilot node runs
    ``cores // cores_per_task`` attempts unless ``execution.workers`` was set explicitly.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider
    from parsl.providers.base import ExecutionProvider

    worker_init = build_worker_init(settings)
    provider: ExecutionProvider
    if settings.provider == "slurm":
        provider = _slurm_provider_class()(
            settings.status_poll_seconds,
            partition=settings.partition,
            account=settings.account,
            nodes_per_block=settings.nodes_per_block,
            cores_per_node=settings.cores_per_node,
            init_blocks=1,
            min_blocks=0,
            max_blocks=settings.max_blocks,
            walltime=settings.walltime,
            scheduler_options=_scheduler_options(settings),
            worker_init=worker_init,
            exclusive=settings.exclusive,
            # One worker pool per node: srun spreads them over a multi-node block.
            launcher=(SingleNodeLauncher() if settings.nodes_per_block == 1 else SrunLauncher()),
        )
        max_workers = settings.workers_per_node
        address = None  # compute nodes try every address of the submitting host
    else:
        provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, worker_init=worker_init)
        max_workers = max(1, workers)
        address = "127.0.0.1"
    executor = HighThroughputExecutor(
        label=LABEL,
        provider=provider,
        address=address,
        cores_per_worker=settings.cores_per_task,
        max_workers_per_node=max_workers,
        heartbeat_period=settings.heartbeat_period,
        heartbeat_threshold=settings.heartbeat_threshold,
        # Started on this host with this interpreter, so PATH needs no venv here.
        interchange_launch_cmd=[sys.executable, str(_interchange_script())],
        worker_logdir_root=str(run_dir / "workers"),
    )
    return Config(
        executors=[executor],
        run_dir=str(run_dir),
        retries=settings.lost_worker_retries,
        retry_handler=_retry_only_lost_workers(settings.lost_worker_retries),
        strategy="simple",
        strategy_period=2,
        usage_tracking=0,
        exit_mode="cleanup",
    )


def _slurm_provider_class() -> type:
    """SlurmProvider with a settable status polling interval (Parsl hard-codes 60 s)."""
    from parsl.providers import SlurmProvider

    class _SlurmProvider(SlurmProvider):
        def __init__(self, poll_seconds: int, **kwargs: Any):
            super().__init__(**kwargs)
            self._poll_seconds = poll_seconds

        @property
        def status_polling_interval(self) -> int:
            return self._poll_seconds

    return _SlurmProvider


def _interchange_script() -> Path:
    import parsl.executors.high_throughput.interchange as interchange

    return Path(interchange.__file__)


def _retry_only_lost_workers(retries: int) -> Callable[[BaseException, TaskRecord], float]:
    """A Parsl retry_handler: retry lost-worker failures only, never anything else."""

    def handler(exc: BaseException, _task: TaskRecord) -> float:
        return 1.0 if is_lost_worker_error(exc) else float(retries + 1)

    return handler


def is_lost_worker_error(exc: BaseException) -> bool:
    """True when ``exc`` (raised by a future) means the worker vanished, not the attempt.

    Recognises Parsl's ``ManagerLost``/``WorkerLost`` and :class:`LostWorkerError` (which
    wraps them). Such an attempt did not fail: resubmit the same request (same number, same
    directory) without recording a result or changing the structure's state.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cls = type(current)
        if cls.__name__ in LOST_WORKER_ERRORS and cls.__module__.startswith("parsl."):
            return True
        current = current.__cause__ or current.__context__
    return False


def _set_aside_lost_try(args: Sequence[Any]) -> None:
    """Rename an ``attempt_dir`` a lost try of this same task left behind (``.lost-<k>``).

    The runner sets aside any stale folder before it submits, so on the worker the folder only
    exists when Parsl is retrying this task after a lost worker: its half-written output must
    not be mixed with the new try's. Names other than ``attempt-NN`` are never read back.
    """
    for arg in args:
        attempt_dir = getattr(arg, "attempt_dir", None)
        if attempt_dir is None or not Path(attempt_dir).exists():
            continue
        set_aside(attempt_dir, "lost")


def run_task(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """What a Parsl worker runs: ``fn(*args, **kwargs)`` with pw.x cleanup on SIGTERM.

    ``process.run_process`` starts pw.x in its own session (so a timeout reaches MPI ranks),
    which also means killing the worker's process group (local provider scale-in, some Slurm
    setups) would leave pw.x running. So ``fn`` runs in a thread while the worker's main thread
    waits; on SIGTERM it stops every pw.x this worker started, then dies from the signal as it
    would have without us.
    """
    _set_aside_lost_try(args)
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the worker's main thread below
            outcome["error"] = exc

    with catch_signals((signal.SIGTERM,)) as received:
        thread = threading.Thread(target=target, name="autopipec-task", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.2)
                if received:
                    process.terminate_all()
                    thread.join(process.KILL_GRACE + 1)
                    die_by(signal.SIGTERM)
        except KeyboardInterrupt:
            # Ctrl-C reaches a local-provider worker too (same terminal process group), but
            # not pw.x in its own session.
            process.terminate_all()
            thread.join(process.KILL_GRACE + 1)
            raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class ParslExecutor:
    """What :func:`make_parsl_executor` yields: ``submit(fn, *args)`` -> Future.

    The futures are plain :class:`concurrent.futures.Future` objects mirroring Parsl's
    AppFutures, so ``cancel()`` works as the runner expects (Parsl's raises): a cancelled future
    is forgotten here, and the remote attempt stops when the pilot jobs are cancelled on exit.
    """

    def __init__(
        self,
        dfk: DataFlowKernel,
        settings: ParslSettings,
        max_workers: int,
        run_dir: Path | None = None,
    ):
        self._dfk = dfk
        self._run_dir = run_dir
        self._settings = settings
        self._prefix = launcher_argv(settings)
        self._app: Callable[..., Future[Any]] | None = None
        #: Attempts that can run at once; the runner's default in-flight limit reads this.
        self._max_workers = max_workers

    @property
    def settings(self) -> ParslSettings:
        """The settings this executor was built from."""
        return self._settings

    @property
    def max_workers(self) -> int:
        """How many attempts the configured blocks run at once (an estimate on Slurm)."""
        return self._max_workers

    def prepare(self, arg: Any) -> Any:
        """Add the MPI launcher to a request's ``argv`` (a copy; requests are frozen)."""
        # only pw.x requests (argv + attempt_dir): a fit's TrainerProfile also has an argv
        if (
            dataclasses.is_dataclass(arg)
            and not isinstance(arg, type)
            and hasattr(arg, "argv")
            and hasattr(arg, "attempt_dir")
        ):
            argv = with_launcher(arg.argv, self._prefix)
            if list(argv) != list(arg.argv):
                return dataclasses.replace(arg, argv=type(arg.argv)(argv))
        return arg

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a Parsl worker; fn must be importable (module level)."""
        if self._app is None:
            from parsl import python_app

            self._app = python_app(run_task, data_flow_kernel=self._dfk, executors=[LABEL])
        inner = self._app(fn, *(self.prepare(a) for a in args), **kwargs)
        outer: Future[Any] = Future()

        def mirror(done: Future[Any]) -> None:
            try:
                exc = done.exception()
                if exc is None:
                    outer.set_result(done.result())
                else:
                    outer.set_exception(as_execution_error(exc, self._run_dir))
            except InvalidStateError:  # the runner cancelled ``outer`` meanwhile
                pass

        inner.add_done_callback(mirror)
        return outer


def _cancel_leftover_blocks(dfk: DataFlowKernel) -> None:
    """Cancel pilot jobs Parsl left running (it skips scaling in an executor in bad state)."""
    from parsl.executors.status_handling import BlockProviderExecutor

    for executor in dfk.executors.values():
        if not isinstance(executor, BlockProviderExecutor) or executor.provider is None:
            continue
        live = [
            executor.blocks_to_job_id[block_id]
            for block_id, status in executor.status_facade.items()
            if not status.terminal and block_id in executor.blocks_to_job_id
        ]
        if live:
            executor.provider.cancel(live)


def _capacity(settings: ParslSettings, workers: int) -> int:
    if settings.provider == "local":
        return max(1, workers)
    per_node = settings.workers_per_node
    if per_node is None:
        # Unknown until a pilot starts; assume nodes like this one unless told cores_per_node.
        cores = settings.cores_per_node or os.cpu_count() or 1
        per_node = max(1, cores // settings.cores_per_task)
    return settings.max_blocks * settings.nodes_per_block * per_node


@contextmanager
def make_parsl_executor(
    execution_cfg: dict[str, Any], workers: int | None = None, *, run_dir: Path | None = None
) -> Iterator[ParslExecutor]:
    """Start Parsl for ``execution_cfg`` and yield an executor; stop everything on exit.

    ``run_dir`` holds Parsl's logs, pilot job scripts and their stdout/stderr (on a cluster it
    must be on a filesystem the compute nodes see; the runner passes ``<run dir>/parsl``); None
    uses a temporary directory removed on exit. ``workers`` caps concurrent attempts for the
    local provider (None: cores // cores_per_task). Raises UsageError when Parsl is not
    installed or the settings are wrong.
    """
    settings = parse_parsl_settings(execution_cfg)
    try:
        from parsl.dataflow.dflow import DataFlowKernel
    except ImportError as exc:
        raise UsageError(
            "execution.engine: parsl needs the 'cluster' extra: "
            "pip install 'mlip-autopipec[cluster]'"
        ) from exc
    with ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parsl-")))
        run_dir.mkdir(parents=True, exist_ok=True)
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // settings.cores_per_task)
        dfk = DataFlowKernel(build_config(settings, workers, run_dir))
        try:
            yield ParslExecutor(dfk, settings, _capacity(settings, workers), run_dir)
        finally:
            try:
                # Job status polling stops here, so read the block states before cleanup.
                dfk.cleanup()
            finally:
                _cancel_leftover_blocks(dfk)
