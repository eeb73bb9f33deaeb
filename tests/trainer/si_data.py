"""Small silicon datasets labelled with the real pw.x (shared by the trainer tests and the bench).

The cells are strained and rattled 2-, 4- and 8-atom diamond cells; each is labelled with ASE's
Espresso calculator directly (the oracle module is not under test here). Results are cached as
extxyz in a directory the caller names, so a dataset is labelled once per cache directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
PSEUDO = "Si.pz-vbc.UPF"
A0 = 5.40  # LDA lattice constant of Si, close to the pz-vbc minimum

#: Cheap but converged-enough settings: smearing keeps rattled 8-atom cells from sloshing.
INPUT_DATA = {
    "control": {"tprnfor": True, "tstress": True},
    "system": {"ecutwfc": 20, "occupations": "smearing", "smearing": "mv", "degauss": 0.02},
    "electrons": {"conv_thr": 1e-7, "mixing_beta": 0.4},
}
#: 1/Å, ASE convention (no 2π): 2x2x2 for the 8-atom cube, 3x3x3 for the primitive cell.
#: (0.3 would give Gamma only for 4- and 8-atom cells: +1.8 eV/atom errors, unfit-able.)
KSPACING = 0.12


def pwx_available() -> bool:
    """True when pw.x and the Si pseudopotential are installed."""
    return shutil.which("pw.x") is not None and (PSEUDO_DIR / PSEUDO).is_file()


def si_cells(n: int, seed: int = 0) -> list[Atoms]:
    """``n`` deterministic strained + rattled Si diamond cells of 2, 4 and 8 atoms."""
    rng = np.random.default_rng(seed)
    makers = (
        lambda a: bulk("Si", "diamond", a=a),
        lambda a: bulk("Si", "diamond", a=a, orthorhombic=True),
        lambda a: bulk("Si", "diamond", a=a, cubic=True),
    )
    cells = []
    for i in range(n):
        atoms = makers[i % 3](A0 * (1 + rng.uniform(-0.04, 0.04)))
        # A small random shear so that stresses are not purely hydrostatic.
        shear = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell @ shear, scale_atoms=True)
        atoms.rattle(stdev=rng.uniform(0.02, 0.12), seed=int(rng.integers(1 << 30)))
        atoms.info["structure_id"] = i + 1
        cells.append(atoms)
    return cells


def label(atoms: Atoms, directory: Path) -> Atoms:
    """Return a copy of ``atoms`` with a SinglePointCalculator holding pw.x results."""
    from ase.calculators.espresso import Espresso, EspressoProfile

    calc = Espresso(
        profile=EspressoProfile(command="pw.x", pseudo_dir=PSEUDO_DIR),
        directory=directory,
        pseudopotentials={"Si": PSEUDO},
        input_data=INPUT_DATA,
        kspacing=KSPACING,
    )
    work = atoms.copy()
    work.calc = calc
    results = {
        "energy": work.get_potential_energy(),
        "free_energy": work.get_potential_energy(force_consistent=True),
        "forces": work.get_forces(),
        "stress": work.get_stress(),
    }
    out = atoms.copy()
    out.info = dict(atoms.info)
    out.calc = SinglePointCalculator(out, **results)
    return out


def labelled_si_dataset(n: int, cache_dir: Path, seed: int = 0) -> list[Atoms]:
    """``n`` Si cells labelled with pw.x, cached in ``cache_dir`` (keyed by settings)."""
    key = hashlib.sha256(
        json.dumps([n, seed, A0, PSEUDO, INPUT_DATA, KSPACING], sort_keys=True).encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"si-{n}-{key}.extxyz"
    if cache.is_file():
        return _read(cache)
    labelled = [
        label(atoms, cache_dir / f"pw-{key}" / f"{i:03d}") for i, atoms in enumerate(si_cells(n, seed))
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.extxyz")
    write(tmp, labelled, format="extxyz")
    tmp.replace(cache)
    return _read(cache)


def _read(path: Path) -> list[Atoms]:
    images = read(path, index=":", format="extxyz")
    assert isinstance(images, list)
    for atoms in images:
        atoms.info["structure_id"] = int(atoms.info["structure_id"])
    return images
