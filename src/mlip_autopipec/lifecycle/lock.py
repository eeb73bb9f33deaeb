"""One runner per run directory.

The lock is ``RUN_DIR/autopipec.lock`` held with ``fcntl.flock``: the kernel releases it when
the holder dies, SIGKILL included, so a lock file left by a dead runner is simply taken
over. The file holds the holder's PID, host and start time, for the message a second
runner prints.

Holding the lock also holds a :class:`~mlip_autopipec.process.ChildGuard`: taking the lock
over from a dead runner first kills whatever that runner's children left running (an
orphaned pw.x, MPI daemons, pacemaker), and the holder's own children die with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlip_autopipec import process
from mlip_autopipec.errors import RunEnvironmentError, RunLockedError

LOCK_NAME = "autopipec.lock"


def read_lock_info(run_dir: Path) -> dict[str, Any] | None:
    """The PID/host/start time written by the current (or last) holder, if readable."""
    try:
        data = json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """Exclusive lock on a run directory; use as a context manager or acquire()/release()."""

    #: The run directory of the last lock this process took (where the CLI writes the
    #: traceback of an internal error and requeues what was in flight).
    last_run_dir: Path | None = None

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._guard: process.ChildGuard | None = None
        #: PIDs of a dead runner's children killed when this lock was taken.
        self.reaped: list[int] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming the holder's PID."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                # never through a planted link: flock and the PID record stay in this folder
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                what = (
                    "is a directory or a link, not the lock file; remove it"
                    if isinstance(exc, IsADirectoryError) or self.path.is_symlink()
                    else f"cannot be created ({exc.strerror}); is the run directory writable?"
                )
                raise RunEnvironmentError(f"{self.path}: {what}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                info = read_lock_info(self.run_dir) or {}
                pid = info.get("pid", "?")
                host = info.get("hostname", "?")
                since = info.get("started", "?")
                raise RunLockedError(
                    f"{self.run_dir}: run directory locked by PID {pid} on {host} "
                    f"(since {since}); wait for it to finish or stop it first"
                ) from None
            # The previous holder may have unlinked the file between our open() and
            # flock(); then we hold a lock on an orphan inode and must start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        try:
            self._guard = process.ChildGuard(self.run_dir).start()
        except BaseException:
            self.release()
            raise
        self.reaped = self._guard.reaped
        RunLock.last_run_dir = self.run_dir
        return self

    def release(self) -> None:
        """Release the lock and remove the lock file."""
        if self._fd is None:
            return
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
