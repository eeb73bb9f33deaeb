"""Benchmark: pw.x calls to reach held-out targets, active learning vs random vs one-shot.

    python bench/active_learning.py [--recipe recipes/si_active_learning.yaml] [--out DIR]
                                    [--iterations N] [--test-frames 12] [--workers 2]
                                    [--test-structures OUT/testset]

Three ways to spend pw.x calls on the same Si system and DFT settings (the recipe's):

- ``dopt``: the recipe's active-learning loop (D-optimal selection by gamma);
- ``random``: the same loop with ``selection: random`` (random picks among its candidates);
- ``oneshot``: the recipe's seed structures plus rattled copies of the 8-atom cell, as many as
  the ``dopt`` run labelled in total, fitted once (the usual hand-made recipe).

The fixed test set: 1000 K Langevin MD frames of 8- and 16-atom cells, driven by the final
``dopt`` potential (the only potential at hand that survives 1000 K; this favours no method's
*training* set, but its frames come from the dopt potential's MD), labelled once with pw.x.
Every potential each run produced is scored on it (RMSE energy per atom, force components)
against the pw.x calls spent up to that fit (labels of the training set and, for the loops,
of their own held-out sets). Prints one table and one JSON record. Targets (issue 13):
energy <= 5 meV/atom, forces <= 150 meV/Å; the loop within <= 60 pw.x calls, random >= 1.5x.

Measured 2026-12-01 on the shared 2-core VM (load average ~11), ``--iterations 2
--test-frames 10``, 59 min wall: RMSE on the fixed test set, E meV/atom / F meV/Å at pw.x calls

    dopt     6: 43.4 / 420   15: 25.3 / 289   24: 24.2 / 242
    random   6: 43.4 / 420   15: 17.7 / 240   24: 18.4 / 204
    oneshot 18: 29.9 / 280

No method reached the targets; random was not worse than D-optimal here. The 4-refit run of
the recipe (33 calls) scored 28.0 / 221. Every fit's own train energy RMSE was ~20 meV/atom
(trainer defaults, max_epochs 50), so the fits, not the selection, bound the energy error.

2026-12-02, offline, on the labels of that run (no new pw.x calls; fits on 24 of its 8-atom
frames, scored on the same fixed test set; E meV/atom / F meV/Å, 8-atom | 16-atom frames):

    kappa 0.3,  50 iterations   +17..+25 / 57-104   |  -20..+20 / 125-294   (all 17.8 / 187)
    kappa 0.3, 400 iterations    -6..-2  / 60-108   |  -52..-24 / 211-335   (all 28.9 / 239)
    kappa 0.05, 50 iterations    -1..+8  / 63-119   |  -56..-4  / 103-323   (all 22.8 / 188)

So the train error was not the limit (400 iterations: train 4.3 meV/atom, test worse): the
8-atom test frames reach the energy target with kappa 0.05, the 16-atom ones miss both
targets because no 16-atom cell was ever explored or labelled (the recipe now explores
them). The two sizes have equivalent k-point sets (2x2x2 and 1x2x2 at kspacing 0.15: the
same k-points of the 8-atom cell's reciprocal lattice), one theory. Pool-based selection
over the same labelled frames (6 seeds, 6 picks per refit, kappa 0.05): D-optimal 12: 16.3 /
184, 18: 20.5 / 202; random 12: 16.1 / 211, 18: 17.8 / 188, i.e. still no advantage for
D-optimal on this test set. The full three-way bench was not re-run this round (about an
hour on the shared machine).

2026-12-02, the real loop with this round's recipe (seeds rattled 0.1 Å, kappa 0.05, 8- and
16-atom 1000 K walkers, fill_from_explored), its potentials scored on that fixed test set,
E meV/atom / F meV/Å at pw.x calls (seeds, selections and held-out labels all counted):

    dopt     6: 25.1 / 280   15:  9.6 / 142   27:  8.8 / 138
    random   6: 25.1 / 280   15: 13.5 / 161   25: 12.8 / 143

(last round at 24 calls: dopt 24.2 / 242, random 18.4 / 204). After one refit the dopt
potential's six walkers all ran 1000 fs below gamma 3; the random one's 16-atom walkers
halted at gamma 25 after 216 and 868 fs. The energy target (5) is not reached on this test
set by 27 calls. The dopt loop itself stopped *converged* by its stop rule after 33 pw.x
calls (its own held-out sets at iterations 4-5: 1.8 / 124 and 4.9 / 92 with potential 3;
every walker of both iterations ran 1000 fs below gamma 2), 35 min wall under load 4-7
with a second loop running beside it, resumed twice after SIGTERM. The random loop (budget
2 refits) stopped not converged at 28 calls: held-out 7.2 / 125, walkers up to gamma 18.8;
so random needs more than 28 calls, but how many (the 1.5x target) was not measured.
(Those labels used the unshifted 2x2x2 k-grid, since found 86 meV/atom and 299 meV/Å off.)

2026-12-02 (session 3), the full three-way bench with this round's recipe (shifted 3x3x3
k-points, 80 functions / 150 iterations, walkers rotating through the seeds), ``python
bench/active_learning.py --test-structures <the earlier test set>``: the earlier 10 test
frames (5 of 8 and 5 of 16 atoms, 1000 K MD of an earlier potential: no method's own MD)
labelled again at the recipe's settings. The two loops ran side by side (4 pw.x on 2
cores), 63 min wall for all three arms. E meV/atom / F meV/Å at pw.x calls:

    dopt     6: 16.5 / 213   15: 7.4 / 119   24: 3.9 / 105   29: 4.8 / 102
    random   6: 16.5 / 213   15: 5.9 /  99   24: 3.3 /  88   28: 3.2 /  93   37: 6.4 / 88
    oneshot 20: 10.6 / 149   (8-atom frames 2.0 / 36, 16-atom 14.9 / 181)

Both loops reach the targets (E <= 5, F <= 150) at 24 pw.x calls (target <= 60: met); the
one-shot recipe of rattled 8-atom cells does not at 20 (its 16-atom error is 3x the loops').
Random selection from the loop's candidates needs as many calls as D-optimal here (1.0x,
target >= 1.5x: NOT met): the candidate pools are small (105 frames in iteration 1, 0-2
above gamma 5 later, when explored frames are promoted for both), so the exploration, not
the pick among its frames, does the work on this system. The dopt loop stopped converged by
its own rule at 32 calls (held-out 4.6 / 47 and 2.8 / 47 in iterations 3-4; every walker of
iterations 2-4 ran 1000 fs, max gamma 2.7 in the last) after 51 min wall beside the random
loop (fits 710 s of it); its last potential ran the 64-atom 1000 K 5 ps test (min distance
2.05 Å, NVE drift 0.05 meV/atom). The random loop ran to its budget (4 refits, 37 calls).
The recipe alone (``autopipec run``, idle machine) took 30 min wall to the same 32 calls and
result (fits 417 s of it).

2026-12-02 (session 4), the recipe now with the norm-conserving Si.pbe-rrkj.UPF at 20 Ry (a
16-atom label 36-39 s instead of 120-146 s; converged, see the recipe), the same command and
the same 10 test frames labelled again at these settings; 25 min wall for all three arms:

    dopt     6: 12.3 / 188   15: 4.1 / 100   26: 4.5 /  90
    random   6: 12.3 / 188   15: 8.1 / 121   24: 3.1 /  98
    oneshot 17: 9.8 / 150   (8-atom frames 2.4 / 36, 16-atom 13.7 / 182)

The loop reaches the targets at 15 pw.x calls, random selection at 24 (1.6x at the loops'
fit points; between two fit points no potential exists, so the true ratio is between 16/15
and 24/15), the one-shot recipe not at 17. In iteration 1 both loops picked 6 of the same
71 candidates (gamma > 5; 4 of 6 walkers halted at gamma 25): D-optimal's 6 left no frame
above gamma 5 in iteration 2 (max 3.5), random's left 6 (max 9.1) and a held-out error of
8.1 meV/atom. The dopt loop stopped by its 4-iteration budget at 32 calls, not converged
(held-out 2.9 then 6.4 meV/atom in iterations 4-5, 3 frames each, same potential); the
random loop converged by its rule at 30 calls. The recipe alone (idle machine): 12 min 2 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sqlite3
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]
TARGET_E, TARGET_F = 5.0, 150.0


def _write_recipe(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")  # JSON is YAML
    return path


def _run(recipe: Path, run_dir: Path, workers: int, stage: str = "all") -> float:
    from mlip_autopipec.pipeline import run

    start = time.monotonic()
    run(recipe, run_dir=run_dir, workers=workers, stage=stage)
    return time.monotonic() - start


def _potentials(run_dir: Path) -> list[dict[str, Any]]:
    """Each potential of a run with the pw.x calls spent before it was fitted."""
    with sqlite3.connect(run_dir / "autopipec.sqlite") as conn:
        pots = conn.execute("SELECT id, path, created FROM potentials ORDER BY id").fetchall()
        attempts = [float(t) for (t,) in conn.execute("SELECT created FROM attempts")]
    held = run_dir / "heldout" / "autopipec.sqlite"
    if held.is_file():
        with sqlite3.connect(held) as conn:
            attempts += [float(t) for (t,) in conn.execute("SELECT created FROM attempts")]
    out = []
    for pid, path, created in pots:
        fit_dir = Path(path).parent if Path(path).is_absolute() else run_dir / Path(path).parent
        calls = sum(1 for t in attempts if t <= float(created))
        out.append({"id": int(pid), "fit_dir": fit_dir, "pwx_calls": calls})
    return out


def _md_frames(fit_dir: Path, n: int, seed: int) -> list[Atoms]:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mlip_autopipec.trainer.calculator import load_calculator

    frames: list[Atoms] = []
    cells = [
        bulk("Si", "diamond", a=5.43, cubic=True),
        bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1)),
    ]
    rng = np.random.default_rng(seed)
    for i, cell in enumerate(cells):
        atoms = cell.copy()
        atoms.calc = load_calculator(fit_dir)
        MaxwellBoltzmannDistribution(atoms, temperature_K=1000, rng=rng)
        dyn = Langevin(atoms, 2 * units.fs, temperature_K=1000, friction=0.01 / units.fs, rng=rng)
        dyn.run(200)  # equilibrate 0.4 ps
        per_cell = n // len(cells) + (1 if i < n % len(cells) else 0)
        for _ in range(per_cell):
            dyn.run(50)
            frames.append(
                Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
            )
    return frames


def _label_test_set(
    base: dict[str, Any], frames: list[Atoms], out: Path, workers: int
) -> list[Atoms]:
    """Label ``frames`` once with the recipe's oracle: a label-only run (``stage="label"``)
    of a recipe that reads them from an extxyz file (resumable; a rerun labels nothing)."""
    from ase.io import write

    from mlip_autopipec.lifecycle.store import Store

    test_dir = out / "testset"
    frames_file = out / "testset.extxyz"
    if not frames_file.is_file():
        write(frames_file, frames, format="extxyz")
    data = {
        "name": f"{base['name']}-testset",
        "structures": [{"file": str(frames_file)}],
        "oracle": copy.deepcopy(base["oracle"]),
    }
    _run(_write_recipe(data, out / "testset.yaml"), test_dir, workers, stage="label")
    with Store.open(test_dir, create=False) as store:
        return store.labelled_atoms()


def _score(fit_dir: Path, test: list[Atoms]) -> tuple[float, float]:
    from mlip_autopipec.trainer.calculator import load_calculator

    calc = load_calculator(fit_dir)
    de, df = [], []
    for atoms in test:
        probe = atoms.copy()
        probe.calc = calc
        de.append((probe.get_potential_energy() - atoms.get_potential_energy()) / len(atoms))
        df.append((probe.get_forces() - atoms.get_forces()).ravel())
    e = 1000 * float(np.sqrt(np.mean(np.square(de))))
    f = 1000 * float(np.sqrt(np.mean(np.square(np.concatenate(df)))))
    return e, f


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "si_active_learning.yaml")
    parser.add_argument("--out", type=Path, default=Path("bench-al"))
    parser.add_argument("--iterations", type=int, default=None, help="refit budget per loop")
    parser.add_argument("--test-frames", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--test-structures",
        type=Path,
        default=None,
        help="take the test frames from an earlier test set (its OUT/testset directory) and "
        "label them with this recipe's settings (instead of MD with the final dopt potential)",
    )
    args = parser.parse_args()

    from ruamel.yaml import YAML

    base = json.loads(json.dumps(YAML(typ="safe").load(args.recipe.read_text())))
    out = args.out.resolve()
    walls: dict[str, float] = {}
    runs: dict[str, Path] = {}
    recipes: dict[str, Path] = {}
    for mode in ("dopt", "random"):
        data = copy.deepcopy(base)
        data["name"] = f"{base['name']}-{mode}"
        data["active_learning"]["selection"] = mode
        if args.iterations is not None:
            data["active_learning"].setdefault("budget", {})["iterations"] = args.iterations
        recipes[mode] = _write_recipe(data, out / f"{mode}.yaml")
        runs[mode] = out / mode
    # the two loops side by side (one process each): a fit of one overlaps pw.x of the other
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = {m: pool.submit(_run, recipes[m], runs[m], args.workers) for m in recipes}
        walls.update({m: f.result() for m, f in futures.items()})
    # the one-shot recipe: as many labels as the dopt loop's training set, no loop
    with sqlite3.connect(runs["dopt"] / "autopipec.sqlite") as conn:
        n_dopt = int(conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0])
    data = copy.deepcopy(base)
    data["name"] = f"{base['name']}-oneshot"
    del data["active_learning"]
    extra = max(n_dopt - _seed_count(args.recipe), 1)
    data["structures"].append(
        {
            "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43, "cubic": True},
            "rattle": {"stdev": 0.1, "count": extra, "seed": 11},
        }
    )
    recipe = _write_recipe(data, out / "oneshot.yaml")
    runs["oneshot"] = out / "oneshot"
    walls["oneshot"] = _run(recipe, runs["oneshot"], args.workers)

    if args.test_structures is not None:
        from mlip_autopipec.lifecycle.store import Store

        # the frames of an earlier test set, labelled again here with this recipe's settings
        with Store.open(args.test_structures.resolve(), create=False) as store:
            frames = [
                Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
                for a in store.labelled_atoms()
            ]
    else:
        final = _potentials(runs["dopt"])[-1]["fit_dir"]
        frames = _md_frames(final, args.test_frames, seed=2026)
    test = _label_test_set(base, frames, out, args.workers)

    sizes = sorted({len(a) for a in test})
    record: dict[str, Any] = {"test_frames": len(test), "wall_seconds": walls, "runs": {}}
    print(f"fixed test set: {len(test)} 1000 K MD frames (8 and 16 atoms), pw.x-labelled")
    print(f"{'method':8} {'pw.x calls':>10} {'E meV/atom':>11} {'F meV/Å':>9}  reached")
    for mode, run_dir in runs.items():
        rows = []
        for pot in _potentials(run_dir):
            e, f = _score(pot["fit_dir"], test)
            by_size = {n: _score(pot["fit_dir"], [a for a in test if len(a) == n]) for n in sizes}
            reached = e <= TARGET_E and f <= TARGET_F
            rows.append(
                {"potential": pot["id"], "pwx_calls": pot["pwx_calls"], "e": e, "f": f}
                | {f"e{n}": v[0] for n, v in by_size.items()}
                | {f"f{n}": v[1] for n, v in by_size.items()}
            )
            parts = "  ".join(f"{n} atoms {v[0]:.1f} / {v[1]:.0f}" for n, v in by_size.items())
            print(
                f"{mode:8} {pot['pwx_calls']:>10} {e:>11.2f} {f:>9.1f}  "
                f"{'yes' if reached else '   '}  ({parts})"
            )
        first = next((r for r in rows if r["e"] <= TARGET_E and r["f"] <= TARGET_F), None)
        record["runs"][mode] = {
            "potentials": rows,
            "pwx_calls_to_targets": None if first is None else first["pwx_calls"],
        }
    print("pw.x calls to reach E <= 5 meV/atom and F <= 150 meV/Å on the test set:")
    for mode, r in record["runs"].items():
        reached = r["pwx_calls_to_targets"]
        print(f"  {mode:8} {reached if reached is not None else 'not reached'}")
    print(json.dumps(record, default=str))
    return 0


def _seed_count(recipe_path: Path) -> int:
    from mlip_autopipec.recipe import build_structures, load_recipe

    return len(build_structures(load_recipe(recipe_path)))


if __name__ == "__main__":
    sys.exit(main())
