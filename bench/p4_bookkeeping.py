"""P4: 10,000 structures through the lifecycle with ASE's EMT standing in for pw.x.

    .venv/bin/python bench/p4_bookkeeping.py            # 1,000 and 10,000, each in its own process
    .venv/bin/python bench/p4_bookkeeping.py --one N    # one size (used by the above)

Everything but the physics is real: Store (SQLite, WAL), the transitions-based lifecycle,
the runner (preflight, next_request, submit, record, label/retry/quarantine) with the real
``AttemptResult`` (``to_dict`` JSON per attempt), ``labelled_atoms``, ``status_json``. Every
10th structure fails its first attempt (``scf_not_converged``) and is retried; every 100th
is quarantined by preflight. Runs are inline (one thread) so that bookkeeping time = total
time - time spent inside EMT. Times are this process's CPU time (``time.process_time``):
the machine is shared, and wall time would measure the neighbours; wall time is printed
too. Peak memory is the process's peak RSS
(interpreter, numpy and ASE included). Targets: < 30 s and < 500 MB for 10,000; time per
structure flat from 1,000 to 10,000.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_autopipec.lifecycle.runner import label_all
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import PERMANENT, AttemptResult

EMT_TIME = 0.0


@dataclass(frozen=True)
class EMTRequest:
    structure_id: str
    atoms: Atoms
    number: int
    attempt_dir: Path
    fail: bool


class EMTOracle:
    """preflight/next_request like EspressoOracle; the 'ladder' is: try again, 3 at most."""

    def preflight(self, atoms: Atoms) -> AttemptResult | None:
        if atoms.info.get("overlap"):
            return AttemptResult(0, None, "overlapping_atoms", "atoms 0 and 1 too close")
        return None

    def next_request(
        self, structure_id: str, atoms: Atoms, history: list[Any], workdir: Path
    ) -> EMTRequest | None:
        n = len(history) + 1
        if n > 3:
            return None
        fail = n == 1 and int(structure_id) % 10 == 0
        return EMTRequest(structure_id, atoms, n, workdir / f"attempt-{n:02d}", fail)


def run_emt(request: EMTRequest) -> AttemptResult:
    global EMT_TIME
    t = time.process_time()
    if request.fail:
        EMT_TIME += time.process_time() - t
        return AttemptResult(
            request.number, request.attempt_dir, "scf_not_converged", "convergence NOT achieved"
        )
    atoms = request.atoms.copy()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    EMT_TIME += time.process_time() - t
    return AttemptResult(
        request.number,
        request.attempt_dir,
        "converged",
        "",
        energy=energy,
        free_energy=energy,
        forces=forces,
        stress=stress,
        wall_time=0.0,
    )


class Inline(Executor):
    _max_workers = 2

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def structures(n: int) -> list[Atoms]:
    rng = np.random.default_rng(0)
    base = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms
    out = []
    for i in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        if (i + 1) % 100 == 0:
            atoms.info["overlap"] = True
        out.append(atoms)
    return out


def one(n: int) -> dict[str, float]:
    atoms = structures(n)
    with tempfile.TemporaryDirectory(prefix="p4-") as tmp:
        run_dir = Path(tmp)
        t0 = time.process_time()
        w0 = time.perf_counter()
        with Store.open(run_dir) as store:
            store.add_structures([(a, f"cu:{i}") for i, a in enumerate(atoms)])
            t_add = time.process_time() - t0
            t1 = time.process_time()
            counts = label_all(store, EMTOracle(), run_emt, Inline(), run_dir, permanent=PERMANENT)
            t_label = time.process_time() - t1
            t2 = time.process_time()
            labelled = store.labelled_atoms()
            t_read = time.process_time() - t2
        t3 = time.process_time()
        status = status_json(run_dir)
        t_status = time.process_time() - t3
        total = time.process_time() - t0
        wall = time.perf_counter() - w0
        db_mb = (run_dir / "autopipec.sqlite").stat().st_size / 1e6
    assert counts["labelled"] == len(labelled) == n - n // 100, counts
    assert counts["failed"] == n // 100 and len(status["structures"]) == n
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "add_s": t_add,
        "label_all_s": t_label,
        "emt_s": EMT_TIME,
        "labelled_atoms_s": t_read,
        "status_json_s": t_status,
        "total_s": total,
        "wall_s": wall,
        "bookkeeping_s": total - EMT_TIME,
        "per_structure_ms": (total - EMT_TIME) / n * 1e3,
        "peak_rss_mb": peak_mb,
        "db_mb": db_mb,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
        return
    print("P4: lifecycle bookkeeping with EMT standing in for pw.x (inline, one process per size)")
    rows = []
    for n in (1_000, 10_000):
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"  n={r['n']:>6}: CPU total {r['total_s']:6.2f} s (wall {r['wall_s']:.1f} s), "
            f"EMT {r['emt_s']:5.2f} s, "
            f"bookkeeping {r['bookkeeping_s']:6.2f} s = {r['per_structure_ms']:.3f} ms/structure"
            f" (add {r['add_s']:.2f} s, label_all {r['label_all_s']:.2f} s, "
            f"labelled_atoms {r['labelled_atoms_s']:.2f} s, status {r['status_json_s']:.2f} s); "
            f"peak RSS {r['peak_rss_mb']:.0f} MB; db {r['db_mb']:.1f} MB"
        )
    small, big = rows
    print(
        f"  10k: bookkeeping {big['bookkeeping_s']:.1f} s (target < 30 s), "
        f"peak RSS {big['peak_rss_mb']:.0f} MB (target < 500 MB); per-structure time 10k/1k = "
        f"{big['per_structure_ms'] / small['per_structure_ms']:.2f} (flat = 1.0)"
    )


if __name__ == "__main__":
    main()
