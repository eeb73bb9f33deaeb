"""Benchmark: how well the shipped recipes' potentials reproduce DFT's equation of state.

    python bench/fit_quality.py [--recipes si_quickstart sic_zbl] [--work DIR]
                                [--max-epochs N [N ...]] [--dft-only]
                                [--trainer JSON] [--tag NAME]

For every recipe: label its structures with the real pw.x (``autopipec run --stage label``,
cached in ``--work``), fit with the recipe's trainer section (or each ``--max-epochs`` value),
and compare an E-V curve of the potential with pw.x at the recipe's own oracle settings:
9 points of -5 % .. +5 % linear strain of the recipe's reference crystal, each fitted with a
Birch-Murnaghan equation of state (ase.eos). Prints one JSON line per fit: lattice constant
ratio (ACE/DFT), bulk modulus ratio, optimizer iterations, converged flag, fit wall time.

Measured 2026-12-01 on the shared 2-core machine (load average ~11 from other work, so fit
times are ~4x an idle machine's). DFT (pw.x, recipe settings): si_quickstart V0 20.865 Å^3/atom,
B 87.64 GPa; sic_zbl V0 10.511 Å^3/atom, B 210.85 GPa.

    recipe          max_epochs  iterations  converged  a ratio   B ratio  fit time
    si_quickstart   50 (old)    50          no         1.00108   0.564    207 s
    si_quickstart   200         200         no         1.00073   0.929    402 s
    si_quickstart   1000 (def.) 369         yes (*)    1.00046   1.008    954 s
    sic_zbl         150 (rec.)  150         no         1.00089   1.001    819 s
    sic_zbl         1000        999 (**)    no         1.00039   0.970    3277 s
    al_metal        1000 (def.) 247         yes (*)    1.00023   0.993    236 s  (***)
    sic_zbl         2000, early 729         yes (****) 0.99970   0.975    960 s
    sic_zbl 40 Ry   2000, early 672         yes (*****) 1.00043  0.979    925 s

The two sic_zbl rows of 2026-12-01 were measured on labels made before the recipe had its
k-point scan (koffset 0, kspacing 0.12), with the DFT E-V at the same settings.

(*) BFGS stopped on its own ("Desired error not necessarily achieved due to precision loss",
scipy status 2): the loss cannot be lowered further along its search direction. Test RMSE
0.17 meV/atom. With pacemaker's iteration limit as the stop (issue 11: 60 iterations) the bulk
modulus was -54 %; during the converging run it wandered between -8 % and +1 % from iteration
120 on (the E-V points at +-5 % lie outside the recipe's +-3 % strains), so only a converged
fit is a reproducible figure.
(**) sic_zbl (20 functions x 2 elements, 21 cells) does not converge within 1000 iterations:
it is reported as not converged; its E-V figures are within 0.1 % / 3 % all the same. The log
parser counts 999 of the 1000 iterations there (an off-by-one at the iteration limit, not
investigated).

(***) Measured 2026-12-03 with the converged 13x13x13 grid (15 labels in 14 min 34 s on the
idle machine; the fit had another run beside it for 3 of its 4 minutes): DFT V0 15.527
Å^3/atom, B 82.91 GPa; test RMSE 0.25 meV/atom.

(****) The recipe as shipped since 2026-12-03: early stop (min_loss_change 1e-3, patience 50)
with max_epochs 2000 as a ceiling, on the 21 labels at the scan's kspacing 0.07 (13 min 18 s
to label); DFT at kspacing 0.07: V0 10.493 Å^3/atom, B 210.79 GPa; test RMSE 2.6 meV/atom;
the fit ran beside the test suite. Its interim potentials (pacemaker's interim_potential_0,
copied once a minute) gave at iterations 486 / 532 / 581 / 628 / 679 / 729: a x1.00028 /
1.00048 / 1.00052 / 1.00048 / 0.99955 / 0.99973, B x0.977 / 0.994 / 0.987 / 0.985 / 0.973 /
0.974: the curve no longer moves by more than 0.1 % / 2 %.

(*****) The recipe as shipped since 2026-12-03, session 8: the same at 40/320 Ry (30 Ry was
up to 5.7 meV/atom off 60 Ry in energy differences, 40 Ry 1.29): 21 labels in 21 min 50 s
with the k-scan (again 0.07); DFT V0 10.481 Å^3/atom, B 211.69 GPa; test RMSE 2.6 meV/atom.

The bench fits with the reference energies the trainer fits (``trainer.reference: fit``).
Measured once by hand (same cached sic_zbl labels, 150 iterations, load ~6) with pw.x
isolated-atom references instead (Si -134.497 eV, C -147.378 eV): a x1.0051, B x1.207,
test RMSE 12.2 meV/atom, 504 s: ACE must then carry the ~6 eV/atom binding and 150
iterations are not enough for it, which is why sic_zbl keeps fitted references.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]

#: The crystal whose E-V curve is compared, per recipe (the recipe's own bulk entry).
REFERENCE: dict[str, dict[str, Any]] = {
    "si_quickstart": {"name": "Si", "crystalstructure": "diamond", "a": 5.43},
    "sic_zbl": {"name": "SiC", "crystalstructure": "zincblende", "a": 4.36},
    "al_metal": {"name": "Al", "crystalstructure": "fcc", "a": 3.98, "cubic": True},
}
STRAINS = np.linspace(-0.05, 0.05, 9)


def reference_cells(recipe_stem: str) -> list[Atoms]:
    """The reference crystal at every strain of :data:`STRAINS` (linear strain)."""
    base = bulk(**REFERENCE[recipe_stem])
    cells = []
    for eps in STRAINS:
        atoms = base.copy()
        atoms.set_cell(base.cell * (1 + eps), scale_atoms=True)
        cells.append(atoms)
    return cells


def dft_ev(recipe_path: Path, work: Path, run_dir: Path | None = None) -> list[tuple[float, float]]:
    """(volume per atom, energy per atom) from pw.x at the settings the recipe's structures
    were labelled with: its oracle section, with the k-points (and cutoffs) its
    ``oracle.converge`` scan chose where ``run_dir`` holds that record; cached."""
    from mlip_autopipec.oracle import EspressoOracle
    from mlip_autopipec.oracle.converge import CONVERGE_FILE, apply_converged
    from mlip_autopipec.oracle.espresso import label_serially
    from mlip_autopipec.recipe.pseudo import resolve_pseudopotentials
    from mlip_autopipec.recipe.validate import load_recipe

    recipe = load_recipe(recipe_path)
    oracle_cfg = dict(recipe.oracle)
    tag = recipe_path.stem
    record_path = run_dir / CONVERGE_FILE if run_dir is not None else None
    if recipe.oracle.get("converge"):
        if record_path is None or not record_path.is_file():
            raise RuntimeError(f"{recipe_path.name} converges its settings: label it first")
        record = json.loads(record_path.read_text())
        oracle_cfg = apply_converged(oracle_cfg, record)
        tag += f"-k{record['kspacing']}"
    cache = work / f"dft-ev-{tag}.json"
    if cache.is_file():
        return [tuple(p) for p in json.loads(cache.read_text())]  # type: ignore[misc]
    pseudos = resolve_pseudopotentials(recipe, work / "pseudo")
    oracle = EspressoOracle(oracle_cfg, pseudos)
    points = []
    for i, atoms in enumerate(reference_cells(recipe_path.stem)):
        history = label_serially(oracle, str(i), atoms, work / f"ev-{tag}" / f"{i}")
        last = history[-1]
        if not last.ok or last.energy is None:
            raise RuntimeError(f"pw.x failed on E-V point {i}: {last.message}")
        points.append((atoms.get_volume() / len(atoms), float(last.energy) / len(atoms)))
    cache.write_text(json.dumps(points))
    return points


def eos(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Equilibrium volume per atom (Å^3) and bulk modulus (GPa) of a Birch-Murnaghan fit."""
    from ase.eos import EquationOfState
    from ase.units import GPa

    v, e = np.array(points).T
    v0, _, b = EquationOfState(v, e, eos="birchmurnaghan").fit()
    return float(v0), float(b / GPa)


def label(recipe_path: Path, work: Path) -> Path:
    """Run directory with every structure of the recipe labelled (resumes)."""
    run_dir = work / f"run-{recipe_path.stem}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_autopipec",
            "run",
            str(recipe_path),
            "--run-dir",
            str(run_dir),
            "--stage",
            "label",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return run_dir


def ace_ev(fit_dir: Path, recipe_stem: str) -> list[tuple[float, float]]:
    """(volume per atom, energy per atom) of the fitted potential on the reference cells."""
    from mlip_autopipec.trainer import load_calculator

    calc = load_calculator(fit_dir)
    points = []
    for atoms in reference_cells(recipe_stem):
        atoms.calc = calc
        points.append((atoms.get_volume() / len(atoms), atoms.get_potential_energy() / len(atoms)))
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["si_quickstart"])
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "autopipec-fit-quality"
    )
    parser.add_argument("--max-epochs", type=int, nargs="+", default=None)
    parser.add_argument("--dft-only", action="store_true")
    parser.add_argument(
        "--trainer",
        type=json.loads,
        default={},
        help='trainer settings over the recipe\'s (JSON), e.g. {"min_loss_change": 1e-4}',
    )
    parser.add_argument("--tag", default="", help="prefix of the fit folders (with --trainer)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.recipe.validate import load_recipe
    from mlip_autopipec.trainer import fit_potential

    for stem in args.recipes:
        recipe_path = ROOT / "recipes" / f"{stem}.yaml"
        run_dir = label(recipe_path, args.work)
        dft = dft_ev(recipe_path, args.work, run_dir)
        v_dft, b_dft = eos(dft)
        if args.dft_only:
            print(json.dumps({"recipe": stem, "dft_v0": v_dft, "dft_B_GPa": b_dft}))
            continue
        with Store.open(run_dir, create=False) as store:
            atoms_list = store.labelled_atoms()
        trainer = load_recipe(recipe_path).trainer
        for max_epochs in args.max_epochs or [None]:
            cfg = {**trainer, **args.trainer}
            if max_epochs is not None:
                cfg["max_epochs"] = max_epochs
            fit_dir = args.work / f"fit-{stem}-{args.tag}{max_epochs or 'recipe'}"
            t0 = time.monotonic()
            fit = fit_potential(atoms_list, cfg, fit_dir)
            wall = time.monotonic() - t0
            v_ace, b_ace = eos(ace_ev(fit_dir, stem))
            record = {
                "recipe": stem,
                "max_epochs": cfg.get("max_epochs"),
                "trainer_overrides": args.trainer,
                "structures": len(atoms_list),
                "lattice_ratio": (v_ace / v_dft) ** (1 / 3),
                "bulk_modulus_ratio": b_ace / b_dft,
                "B_dft_GPa": round(b_dft, 2),
                "B_ace_GPa": round(b_ace, 2),
                "iterations": fit.iterations,
                "converged": fit.converged,
                "status": fit.status_message,
                "fit_seconds": round(wall, 1),
                "rmse_test_mev_per_atom": fit.rmse_energy_mev_per_atom.get("test"),
            }
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
