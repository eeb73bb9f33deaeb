"""Tasks the run's executor runs besides pw.x attempts, and where a task ran.

Every task is a module-level function of plain picklable arguments, so the same call runs
in the local thread pool or in a Parsl pilot job (``execution.engine: parsl``): the fit's
execute step (pacemaker, pace_yaml2yace, pace_activeset) via :func:`execute_fit`, MD
walkers via ``explore.md.run_walker``, the isolated atoms of ``trainer.reference:
isolated_atoms`` via ``oracle.isolated.label_isolated_atom``. A task never touches the
store: it writes files in its own folder and returns a result the driver records.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from mlip_autopipec.fsutil import atomic_write_json

#: The file in a fit folder that says which process ran the fit's programs.
EXECUTION_JSON = "execution.json"


def where() -> dict[str, Any]:
    """The process running this code: host, pid, thread name (the local executor's workers
    are threads of the driver) and the Slurm job id (None outside Slurm)."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def execute_fit(trainer: Any, workdir: Path, profile: Any) -> dict[str, Any]:
    """``trainer.execute(workdir, profile)`` in this process; returns (and records in
    ``workdir / execution.json``) where it ran and for how long."""
    record: dict[str, Any] = {**where(), "started": time.time()}
    atomic_write_json(Path(workdir) / EXECUTION_JSON, record)
    trainer.execute(Path(workdir), profile)
    record["seconds"] = time.time() - record["started"]
    atomic_write_json(Path(workdir) / EXECUTION_JSON, record)
    return record
