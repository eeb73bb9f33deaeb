"""The one module that starts external processes.

Everything else (pw.x attempts, pacemaker, pace_yaml2yace, pace_activeset) asks
:func:`run_process`. Processes get an argv list (never a shell), an explicit working
directory, files for stdout/stderr, a timeout and their own process group, so that a
timeout or a graceful stop reaches MPI launchers' children too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Without this gfortran buffers stdout and pw.x's last error lines are lost when it
#: aborts (seen with ``cdiaghg``): the output just stops.
BASE_ENV = {"GFORTRAN_UNBUFFERED_ALL": "1", "OMP_NUM_THREADS": "1"}

#: Seconds between SIGTERM and SIGKILL when stopping a process group.
KILL_GRACE = 5.0

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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
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
        )
        with _live_lock:
            _live[proc.pid] = proc
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
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
    for proc in procs:
        _kill_group(proc)
    return len(procs)


def reset() -> None:
    """Allow new processes again after :func:`terminate_all` (used by tests)."""
    _stopping.clear()


def stopping() -> bool:
    """True once a graceful stop has been requested."""
    return _stopping.is_set()
