"""The machine's processes as the tests look for leftovers: read from ``/proc``.

A test that checks what a run left behind looks only at its own processes (by folder or
argument), since the suite runs in two pytest-xdist workers and the other one may be
running pw.x, Parsl or ``sleep`` of its own at that moment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """One process: its arguments joined by spaces, working directory ('' when unreadable)
    and state letter (``Z``: a zombie, dead but not yet reaped)."""

    pid: int
    args: str
    cwd: str
    state: str

    def open_files(self) -> list[str]:
        """Where its file descriptors point ([] when they cannot be read)."""
        try:
            return [os.readlink(fd) for fd in Path(f"/proc/{self.pid}/fd").iterdir()]
        except OSError:
            return []


def processes() -> Iterator[Proc]:
    """Every process whose command line and state can be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        try:
            cwd = str((entry / "cwd").resolve())
        except OSError:
            cwd = ""
        yield Proc(int(entry.name), args, cwd, state)
