"""The one module that starts external processes.

Everything else (pw.x attempts, pacemaker, pace_yaml2yace, pace_activeset) asks
:func:`run_process`. Processes get an argv list (never a shell), an explicit working
directory, files for stdout/stderr, a timeout and their own process group, so that a
timeout or a graceful stop reaches MPI launchers' children too.

Children die with the runner, SIGKILL included (a child in its own session would otherwise
live on with parent 1 and keep writing into an attempt folder the next run sets aside):

* every child gets ``PR_SET_PDEATHSIG(SIGKILL)``: the kernel kills it when the thread that
  started it dies (our worker threads wait for their child, so that is the runner's death);
* every child, and everything it starts (MPI ranks, ``orted``, a daemon that re-parented to
  init), carries :data:`RUN_TAG_ENV` = ``<runner pid>:<run dir>`` in its environment;
  :class:`ChildGuard` (held with the run lock) starts a small guardian process in its own
  session that kills every process carrying the runner's tag the moment the runner is gone,
  and a new runner of the same run directory first kills whatever a dead runner left
  (:func:`reap_orphans`), before any attempt folder is set aside.

Run as ``python process.py --guardian TAG`` this file is the guardian (standard library only).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Without this gfortran buffers stdout and pw.x's last error lines are lost when it
#: aborts (seen with ``cdiaghg``): the output just stops.
BASE_ENV = {"GFORTRAN_UNBUFFERED_ALL": "1", "OMP_NUM_THREADS": "1"}

#: Seconds between SIGTERM and SIGKILL when stopping a process group.
KILL_GRACE = 5.0

#: Environment variable every child of a runner carries: ``<runner pid>:<run dir>``.
RUN_TAG_ENV = "AUTOPIPEC_RUN"

_PR_SET_PDEATHSIG = 1

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()
_stopping = threading.Event()


@dataclass(frozen=True)
class ProcessResult:
    """What happened to one external process."""

    argv: tuple[str, ...]
    cwd: Path
    returncode: int
    wall_time: float
    timed_out: bool
    stdout_path: Path | None
    stderr_path: Path | None
    #: True when the process was stopped by :func:`terminate_all` (graceful shutdown).
    stopped: bool = False

    @property
    def killed_by_signal(self) -> int | None:
        """The signal number if the process died from a signal, else None."""
        if self.returncode < 0:
            return -self.returncode
        # MPI launchers and shells report 128 + signal.
        if self.returncode > 128 and self.returncode - 128 < 65:
            return self.returncode - 128
        return None


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once here, so the child between fork and exec only makes one C call.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL this child when the thread that forked it dies."""
    prctl = _prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # the parent may have died between fork and prctl: then nobody would kill us
        if os.getppid() != parent_pid:
            os._exit(128 + signal.SIGKILL)

    return preexec


def _stop_groups(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group at once, SIGKILL what is left after ONE grace period."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + KILL_GRACE
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()


def run_process(
    argv: Sequence[str],
    cwd: Path,
    *,
    stdout: Path | None = None,
    stderr: Path | None = None,
    stdin: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run ``argv`` in ``cwd`` and wait for it.

    stdout/stderr go to the given files (``/dev/null`` when None); ``env`` entries are
    added to the current environment on top of :data:`BASE_ENV`. A process still running
    after ``timeout`` seconds has its whole process group terminated and the result has
    ``timed_out=True``. Raises ``FileNotFoundError`` when the program does not exist.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("empty command")
    if _stopping.is_set():
        return ProcessResult(tuple(argv), cwd, -signal.SIGTERM, 0.0, False, stdout, stderr, True)
    full_env = dict(os.environ)
    full_env.update(BASE_ENV)
    if env:
        full_env.update(env)
    cwd.mkdir(parents=True, exist_ok=True)
    out_f = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    err_f = open(stderr, "wb") if stderr else subprocess.DEVNULL  # noqa: SIM115
    in_f = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
            argv,
            cwd=cwd,
            stdin=in_f,
            stdout=out_f,
            stderr=err_f,
            env=full_env,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - one C call, see above
        )
        with _live_lock:
            _live[proc.pid] = proc
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_groups([proc])
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
    finally:
        for f in (out_f, err_f, in_f):
            if not isinstance(f, int):
                f.close()
    wall = time.monotonic() - start
    return ProcessResult(
        tuple(argv),
        cwd,
        proc.returncode,
        wall,
        timed_out,
        stdout,
        stderr,
        stopped=_stopping.is_set() and not timed_out,
    )


def terminate_all() -> int:
    """Stop every running child (graceful shutdown); returns how many were signalled.

    After this call :func:`run_process` refuses to start new processes until
    :func:`reset` is called.
    """
    _stopping.set()
    with _live_lock:
        procs = list(_live.values())
    _stop_groups(procs)
    return len(procs)


def reset() -> None:
    """Allow new processes again after :func:`terminate_all` (used by tests)."""
    _stopping.clear()


def stopping() -> bool:
    """True once a graceful stop has been requested."""
    return _stopping.is_set()


# -- children of a dead runner ----------------------------------------------------------


def run_tag(run_dir: Path, pid: int | None = None) -> str:
    """The :data:`RUN_TAG_ENV` value of the runner ``pid`` (default: this process)."""
    return f"{os.getpid() if pid is None else pid}:{Path(run_dir).resolve()}"


def _tag_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone, or not ours
        return None
    prefix = RUN_TAG_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def tagged_processes(match: Callable[[str], bool]) -> list[int]:
    """PIDs of live processes whose :data:`RUN_TAG_ENV` satisfies ``match`` (not this one)."""
    own = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: nothing we can find
        return []
    for name in names:
        if not name.isdigit() or int(name) == own:
            continue
        tag = _tag_of(int(name))
        if tag is not None and match(tag) and alive(int(name)):
            found.append(int(name))
    return sorted(found)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def kill_tagged(match: Callable[[str], bool], timeout: float = 5.0) -> list[int]:
    """SIGKILL every process whose tag satisfies ``match``, until none is left (or
    ``timeout``); returns the PIDs killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while pids := tagged_processes(match):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in killed:
                killed.append(pid)
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return killed


def reap_orphans(run_dir: Path) -> list[int]:
    """Kill what earlier (dead) runners of ``run_dir`` left running; returns the PIDs.

    Call with the run lock held: then no other runner of ``run_dir`` is alive.
    """
    where = str(Path(run_dir).resolve())
    own = str(os.getpid())

    def match(tag: str) -> bool:
        pid, _, path = tag.partition(":")
        return path == where and pid != own

    return kill_tagged(match)


class ChildGuard:
    """While held, children are tagged and die with this process (see the module doc).

    ``start`` first kills the leftovers of dead runners of ``run_dir``; ``stop`` kills any
    tagged child still alive and restores the environment.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.tag = run_tag(self.run_dir)
        self.reaped: list[int] = []
        self._previous: str | None = None
        self._guardian: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None

    def start(self) -> ChildGuard:
        self.reaped = reap_orphans(self.run_dir)
        self._previous = os.environ.get(RUN_TAG_ENV)
        # os.environ, not just run_process's env: parsl's worker pools inherit it too.
        os.environ[RUN_TAG_ENV] = self.tag
        read_end, self._pipe = os.pipe()
        try:
            self._guardian = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-I", "-S", str(Path(__file__)), "--guardian", self.tag],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a kill of our process group must not reach it
                env={k: v for k, v in os.environ.items() if k != RUN_TAG_ENV},
            )
        except OSError:
            os.close(self._pipe)
            self._pipe = None
        finally:
            os.close(read_end)
        return self

    def stop(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)  # EOF: the guardian kills what is left and exits
            self._pipe = None
        if self._guardian is not None:
            try:
                self._guardian.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._guardian.kill()
                self._guardian.wait()
            self._guardian = None
        if self._previous is None:
            os.environ.pop(RUN_TAG_ENV, None)
        else:
            os.environ[RUN_TAG_ENV] = self._previous

    def __enter__(self) -> ChildGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _guardian_main(tag: str) -> None:
    """Wait until the runner is gone (stdin at EOF, or re-parented), then kill its tag."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    runner = int(tag.partition(":")[0])
    stdin = sys.stdin.fileno()
    while os.getppid() == runner:
        # a forked (not exec'd) child of the runner may hold the pipe: poll the parent too
        ready, _, _ = select.select([stdin], [], [], 0.2)
        if ready and not os.read(stdin, 4096):
            break
    kill_tagged(lambda t: t == tag, timeout=30.0)


if __name__ == "__main__" and sys.argv[1:2] == ["--guardian"]:
    _guardian_main(sys.argv[2])
