"""Benchmark: time from 50 labelled Si cells to a fitted potential with the default settings.

    python bench/train_time.py [--n 50] [--cache DIR] [--workdir DIR]

The dataset is 2-, 4- and 8-atom strained + rattled diamond Si cells labelled with the real
pw.x (cached in ``--cache``; labelling is not part of the timing). The fit uses
``mlip_autopipec.trainer.DEFAULTS`` unchanged (pyace backend) and includes the .yace
conversion and the active set. Prints one JSON record. Target: < 60 s on 2 cores.

Measured 2026-11-22 on the shared 2-core VM (load average ~3 from other work): fit 42.8 s wall,
33.9 s CPU (pacemaker fit loop 34.6 s, start-up 2.5 s, predictions + plots 3 s, .yace 3 s,
active set 1 s); 40 train / 10 test; RMSE energy 16.6 / 29.1 meV/atom, forces 109 / 100 meV/Å.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "trainer"))

from si_data import labelled_si_dataset, pwx_available  # noqa: E402

from mlip_autopipec.trainer import DEFAULTS, fit_potential, load_calculator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "autopipec-bench"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not pwx_available():
        print("pw.x or the Si pseudopotential is missing", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    atoms = labelled_si_dataset(args.n, args.cache)
    label_time = time.monotonic() - t0
    run_dir = args.workdir or Path(tempfile.mkdtemp(prefix="train-time-"))
    load_before = os.getloadavg()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    fit = fit_potential(atoms, {}, run_dir / "trainer" / "fit-001")
    wall = time.monotonic() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    calc = load_calculator(run_dir)
    probe = atoms[0].copy()
    probe.calc = calc
    probe.get_potential_energy()
    record = {
        "n_structures": len(atoms),
        "atoms_per_structure": sorted({len(a) for a in atoms}),
        "labelling_s_or_cached": round(label_time, 1),
        "fit_wall_s": round(wall, 1),
        "fit_cpu_s": round(
            (children.ru_utime - children_before.ru_utime)
            + (children.ru_stime - children_before.ru_stime),
            1,
        ),
        "target_s": 60,
        "rmse_energy_mev_per_atom": fit.rmse_energy_mev_per_atom,
        "rmse_forces_mev_per_ang": fit.rmse_forces_mev_per_ang,
        "n_train": len(fit.train_ids),
        "n_test": len(fit.test_ids),
        "settings": {k: DEFAULTS[k] for k in ("backend", "max_basis_size", "max_epochs", "kappa")},
        "cpus": os.cpu_count(),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "pacemaker_version": fit.pacemaker_version,
        "fit_dir": str(fit.workdir),
    }
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
