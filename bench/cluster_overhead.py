#!/usr/bin/env python3
"""Cluster overhead: the same N pw.x attempts on the local pool and on Parsl + Slurm.

Both engines run the identical workload (N strained/rattled 2-atom Si cells, real pw.x) with
the same number of concurrent attempts; each timing includes starting and stopping the
executor (for Parsl: the interchange, an sbatch pilot job, the worker pool, scancel at the
end). Prints both wall times, their ratio, the fixed start/stop cost of Parsl and the
per-task overhead that remains once that fixed cost is taken out. Labels of both runs are
compared (they must be identical). Needs a reachable Slurm (``.ci/slurm/start.sh``).

    .venv/bin/python bench/cluster_overhead.py --n 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
from ase.build import bulk

from mlip_autopipec.execution import local_executor
from mlip_autopipec.oracle import AttemptRequest, AttemptResult, run_attempt
from mlip_autopipec.process import run_process

PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
PSEUDO = "Si.pz-vbc.UPF"


def requests(n: int, root: Path, ecutwfc: float, kpts: int) -> list[AttemptRequest]:
    """N distinct 2-atom Si cells (isotropic strain + small rattle), fixed seed."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", a=5.43 * (1.0 + 0.03 * (2 * i / max(1, n - 1) - 1)))
        atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
        out.append(
            AttemptRequest(
                structure_id=str(i),
                atoms=atoms,
                argv=("pw.x",),
                pseudo_dir=PSEUDO_DIR,
                pseudopotentials={"Si": PSEUDO},
                input_data={"system": {"ecutwfc": ecutwfc}, "electrons": {"conv_thr": 1e-8}},
                kspacing=None,
                kpts=(kpts, kpts, kpts),
                koffset=(0, 0, 0),
                timeout=600,
                attempt_dir=root / f"{i:03d}" / "attempt-01",
            )
        )
    return out


def run_all(
    executor_cm: AbstractContextManager[Any], reqs: list[AttemptRequest]
) -> tuple[float, float, float, list[AttemptResult]]:
    """(total wall, seconds until the first result, seconds to shut down, results)."""
    t0 = time.perf_counter()
    first: list[float] = []
    with executor_cm as executor:
        futures: list[Future[AttemptResult]] = [executor.submit(run_attempt, r) for r in reqs]
        for f in futures:
            f.add_done_callback(lambda _f: first.append(time.perf_counter()))
        results = [f.result() for f in futures]
        t_done = time.perf_counter()
    t_end = time.perf_counter()
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(
            f"{len(bad)} attempt(s) failed, e.g. {bad[0].failure_class}: {bad[0].message}"
        )
    return t_end - t0, min(first) - t0, t_end - t_done, results


def slurm_reason() -> str | None:
    """Why Slurm cannot be used here, or None."""
    if shutil.which("sinfo") is None:
        return "sinfo not found (Slurm client not installed)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sinfo.out"
        proc = run_process(["sinfo", "-h", "-o", "%T"], Path(tmp), stdout=out, timeout=15)
        if proc.returncode != 0 or proc.timed_out or not out.read_text().strip():
            return "no Slurm controller reachable"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="number of structures (default 20)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ecutwfc", type=float, default=12.0, help="Ry (default 12: ~1 s per SCF)")
    ap.add_argument("--kpts", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    reason = slurm_reason()
    if reason is not None:
        print(f"cluster_overhead: {reason}; start one with .ci/slurm/start.sh (as root)")
        return 2
    from mlip_autopipec.execution.parsl_engine import make_parsl_executor

    worker_init = ""
    if os.geteuid() == 0:
        worker_init = "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    parsl_cfg = {
        "engine": "parsl",
        "workers": args.workers,
        "parsl": {
            "provider": "slurm",
            "walltime": "00:30:00",
            "worker_init": worker_init,
            "exclusive": False,
        },
    }
    with tempfile.TemporaryDirectory(prefix="cluster-overhead-") as tmp:
        root = Path(tmp)
        local_reqs = requests(args.n, root / "local", args.ecutwfc, args.kpts)
        parsl_reqs = requests(args.n, root / "parsl", args.ecutwfc, args.kpts)
        t_local, first_local, stop_local, res_local = run_all(
            local_executor(args.workers), local_reqs
        )
        t_parsl, first_parsl, stop_parsl, res_parsl = run_all(
            make_parsl_executor(parsl_cfg, args.workers, run_dir=root / "parsl-run"), parsl_reqs
        )
    d_energy = max(abs(a.energy - b.energy) for a, b in zip(res_local, res_parsl, strict=True))
    pw_mean = statistics.mean(r.wall_time for r in res_local + res_parsl)
    # Fixed cost: Parsl's wait for the first result beyond local's, plus its longer shutdown.
    fixed = (first_parsl - first_local) + (stop_parsl - stop_local)
    per_task = (t_parsl - t_local) / args.n
    per_task_steady = max(0.0, t_parsl - t_local - fixed) * args.workers / args.n
    figures = {
        "parsl_first_result_s": round(first_parsl, 2),
        "local_first_result_s": round(first_local, 2),
        "parsl_stop_s": round(stop_parsl, 2),
        "structures": args.n,
        "workers": args.workers,
        "pwx_mean_s": round(pw_mean, 3),
        "local_wall_s": round(t_local, 2),
        "parsl_slurm_wall_s": round(t_parsl, 2),
        "ratio": round(t_parsl / t_local, 3),
        "fixed_start_stop_s": round(fixed, 2),
        "per_task_overhead_s": round(per_task, 3),
        "per_task_overhead_steady_s": round(per_task_steady, 3),
        "max_abs_energy_difference_eV": d_energy,
    }
    print(
        f"{args.n} pw.x attempts (~{pw_mean:.2f} s each), {args.workers} at a time\n"
        f"  local thread pool : {t_local:7.2f} s\n"
        f"  parsl + slurm     : {t_parsl:7.2f} s   (ratio {t_parsl / t_local:.2f})\n"
        f"  fixed start/stop  : {fixed:7.2f} s   (interchange, pilot job, scancel)\n"
        f"  per-task overhead : {per_task:7.3f} s   amortised over {args.n} tasks;"
        f" {per_task_steady:.3f} s per task without the fixed cost\n"
        f"  labels identical  : max |dE| = {d_energy:.2e} eV"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if d_energy < 1e-8 else 1


if __name__ == "__main__":
    sys.exit(main())
