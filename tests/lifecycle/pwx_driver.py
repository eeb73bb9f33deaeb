"""Label N small Si cells with the real pw.x through the lifecycle runner.

Used by the kill test (run as a subprocess and SIGKILLed) and by bench/p2_workers.py:

    python tests/lifecycle/pwx_driver.py RUN_DIR N_STRUCTURES WORKERS [PROFILE]

PROFILE ``fast`` (default, ~0.15 s per pw.x) or ``bench`` (denser k-mesh and cutoff, ~1 s).

Prints one JSON line with the final counts and the wall time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlip_autopipec.execution import make_executor
from mlip_autopipec.lifecycle.lock import RunLock
from mlip_autopipec.lifecycle.runner import label_all
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import EspressoOracle, run_attempt

PSEUDO_DIR = Path("/usr/share/espresso/pseudo")

#: Cheap but real: 2-atom Si, LDA norm-conserving, 12 Ry, coarse k-mesh (~0.3 s per pw.x).
ORACLE_CFG = {
    "engine": "espresso",
    "command": "pw.x",
    "pseudopotentials": {"Si": "Si.pz-vbc.UPF"},
    "kspacing": 0.5,
    "koffset": [0, 0, 0],
    "input_data": {
        "control": {"calculation": "scf", "tprnfor": True, "tstress": True},
        "system": {"ecutwfc": 12.0},
        "electrons": {"conv_thr": 1.0e-9},
    },
    "timeout": 120,
    "min_distance": 0.5,
    "retry": {"max_attempts": 3},
}


#: Heavier settings for the P2 benchmark, so pw.x start-up does not dominate.
BENCH_CFG = {
    **ORACLE_CFG,
    "kspacing": 0.12,
    "input_data": {
        "control": {"calculation": "scf", "tprnfor": True, "tstress": True},
        "system": {"ecutwfc": 30.0},
        "electrons": {"conv_thr": 1.0e-9},
    },
}


def si_cells(n: int) -> list:
    """n distinct rattled/strained Si primitive cells (deterministic)."""
    rng = np.random.default_rng(7)
    cells = []
    for i in range(n):
        atoms = bulk("Si", "diamond", a=5.43 * (1 + 0.004 * (i % 7 - 3)))
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        cells.append(atoms)
    return cells


def main(run_dir: Path, n: int, workers: int, profile: str = "fast") -> dict:
    cfg = BENCH_CFG if profile == "bench" else ORACLE_CFG
    oracle = EspressoOracle(cfg, {"Si": PSEUDO_DIR / "Si.pz-vbc.UPF"})
    start = time.monotonic()
    with RunLock(run_dir), Store.open(run_dir) as store:
        store.add_structures([(a, f"si:{i}") for i, a in enumerate(si_cells(n))])
        with make_executor({"engine": "local"}, workers) as executor:
            counts = label_all(store, oracle, run_attempt, executor, run_dir)
    return {"counts": counts, "wall_time": time.monotonic() - start}


if __name__ == "__main__":
    profile = sys.argv[4] if len(sys.argv) > 4 else "fast"
    out = main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), profile)
    print(json.dumps(out), flush=True)
