"""The local executor: a thread pool (each attempt is a pw.x subprocess, so threads only
wait) and the default number of workers."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

#: Programs recognised as MPI launchers at the start of ``oracle.command`` (the one list: the
#: Parsl engine leaves such commands alone; ranks are read from ``-np N``, ``-n N``, ...).
MPI_LAUNCHERS = frozenset(
    {"mpirun", "mpiexec", "mpiexec.hydra", "orterun", "srun", "aprun", "jsrun"}
)
_RANK_FLAGS = ("-np", "-n", "--np", "--n", "-c", "--ntasks")


def ranks_per_task(command: str | Sequence[str]) -> int:
    """MPI ranks one pw.x attempt uses, parsed from the oracle command (1 without MPI).

    ``"mpirun -np 4 pw.x"`` -> 4, ``["srun", "--ntasks=2", "pw.x"]`` -> 2, ``"pw.x"`` -> 1.
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv or os.path.basename(argv[0]) not in MPI_LAUNCHERS:
        return 1
    for i, arg in enumerate(argv[1:], start=1):
        for flag in _RANK_FLAGS:
            value = None
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            if value is not None and value.isdigit() and int(value) > 0:
                return int(value)
    return 1


def default_workers(command: str | Sequence[str], cpus: int | None = None) -> int:
    """CPU cores // ranks per pw.x, at least 1."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, cpus // ranks_per_task(command))


def local_executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool with ``workers`` threads (a context manager that waits on exit)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attempt")
