"""Helpers for the execution tests: pw.x requests, Slurm detection, fast Parsl settings."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ase.build import bulk

PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
SI_PSEUDO = "Si.pz-vbc.UPF"


def pwx_missing_reason() -> str | None:
    """Why pw.x tests cannot run here, or None."""
    if shutil.which("pw.x") is None:
        return "pw.x not on PATH (apt-get install quantum-espresso)"
    if not (PSEUDO_DIR / SI_PSEUDO).is_file():
        return f"{PSEUDO_DIR / SI_PSEUDO} missing (apt-get install quantum-espresso-data)"
    return None


def slurm_missing_reason() -> str | None:
    """Why the Slurm tests cannot run here, or None when a controller answers with a node."""
    if shutil.which("sinfo") is None:
        return "Slurm client (sinfo) not installed; start a test Slurm with .ci/slurm/start.sh"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no Slurm controller reachable (.ci/slurm/start.sh starts one)"
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        return (
            f"no Slurm controller reachable (sinfo: {msg[-1] if msg else proc.returncode}); "
            "start one with .ci/slurm/start.sh"
        )
    states = proc.stdout.split()
    if not any(s.rstrip("*~#") in {"idle", "mixed", "allocated"} for s in states):
        return f"Slurm answers but no usable node (states: {states}); see .ci/slurm/start.sh"
    return None


def si_request(
    attempt_dir: Path,
    *,
    strain: float = 0.0,
    ecutwfc: float = 12.0,
    kpts: int = 2,
    argv: tuple[str, ...] = ("pw.x",),
) -> Any:
    """A real pw.x attempt on 2-atom Si (Si.pz-vbc), sized by ecutwfc and the k grid."""
    from mlip_autopipec.oracle import AttemptRequest

    atoms = bulk("Si", "diamond", a=5.43 * (1.0 + strain))
    return AttemptRequest(
        structure_id="1",
        atoms=atoms,
        argv=argv,
        pseudo_dir=PSEUDO_DIR,
        pseudopotentials={"Si": SI_PSEUDO},
        input_data={
            # what the oracle always sets: a label needs forces and stress
            "control": {"tprnfor": True, "tstress": True},
            "system": {"ecutwfc": ecutwfc},
            "electrons": {"conv_thr": 1.0e-8},
        },
        kspacing=None,
        kpts=(kpts, kpts, kpts),
        koffset=(0, 0, 0),
        timeout=300,
        attempt_dir=attempt_dir,
    )


def fast_parsl_cfg(provider: str, **extra: Any) -> dict[str, Any]:
    """An ``execution`` section tuned for fast tests: quick heartbeats and status polls."""
    worker_init = ""
    if os.geteuid() == 0:
        # CI runs as root; OpenMPI refuses that unless told (irrelevant for real users).
        worker_init = "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    parsl: dict[str, Any] = {
        "provider": provider,
        "walltime": "00:10:00",
        "heartbeat_period": 2,
        # low enough for quick lost-worker tests, high enough for a loaded 2-core CI machine
        "heartbeat_threshold": 10,
        "status_poll_seconds": 2,
        "worker_init": worker_init,
    }
    if provider == "slurm":
        # Share the one CI node with other jobs instead of waiting for it to be empty.
        parsl["exclusive"] = False
    parsl.update(extra)
    return {"engine": "parsl", "parsl": parsl}
