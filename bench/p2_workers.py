"""P2: the same 20-structure real pw.x workload with 1 and 2 workers; prints the speedup.

    .venv/bin/python bench/p2_workers.py [N_STRUCTURES]

Each run is a fresh run directory labelled by tests/lifecycle/pwx_driver.py (profile
``bench``: 2-atom Si, 30 Ry, kspacing 0.12 1/Å, 14 k-points, ~0.5 s per pw.x) through the
lifecycle runner and the local executor. The time is label_all's wall time (imports and
process start-up excluded). Target: speedup >= 1.8 on 2 idle cores. The load average is
printed because other work on the machine skews the ratio.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "lifecycle" / "pwx_driver.py"


def run(n: int, workers: int, base: Path) -> tuple[float, dict[int, float]]:
    run_dir = base / f"workers-{workers}"
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(run_dir), str(n), str(workers), "bench"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"driver failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["counts"]["labelled"] != n:
        raise SystemExit(f"not all labelled: {out['counts']}")
    conn = sqlite3.connect(run_dir / "autopipec.sqlite")
    energies = dict(conn.execute("SELECT structure_id, energy FROM labels"))
    conn.close()
    return float(out["wall_time"]), energies


def main() -> None:
    if shutil.which("pw.x") is None:
        raise SystemExit("pw.x not found")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(
        f"P2: {n} Si structures, real pw.x, cpu_count={os.cpu_count()}, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="p2-") as tmp:
        t1, e1 = run(n, 1, Path(tmp))
        print(f"  workers 1: {t1:7.2f} s  ({t1 / n:.3f} s/structure)")
        t2, e2 = run(n, 2, Path(tmp))
        print(f"  workers 2: {t2:7.2f} s  ({t2 / n:.3f} s/structure)")
    worst = max(abs(e1[k] - e2[k]) for k in e1)
    print(
        f"  speedup: {t1 / t2:.2f}x (target >= 1.8); "
        f"max |E(1 worker) - E(2 workers)| = {worst:.1e} eV"
    )
    print(f"  load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
