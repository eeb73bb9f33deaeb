"""Small silicon datasets labelled with the real pw.x (shared by the trainer tests and the bench).

The cells are strained and rattled 2-, 4- and 8-atom diamond cells, all repeats of the 2-atom
primitive cell; each is labelled with ASE's Espresso calculator directly (the oracle module is
not under test here). Results are cached as extxyz in a directory the caller names.

k-points: every cell samples the *same* k-point set of the primitive cell (grid K/r along an
axis repeated r times). With a common kspacing instead, the 2-, 4- and 8-atom cells got
different grids and per-atom energy offsets of 20-200 meV/atom between cell shapes, which no
local potential can learn; with commensurate grids perfect cells agree to 0.01 meV/atom.
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
#: Repeats of the primitive cell used for 2-, 4- and 8-atom cells.
REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1))


def pwx_available() -> bool:
    """True when pw.x and the Si pseudopotential are installed."""
    return shutil.which("pw.x") is not None and (PSEUDO_DIR / PSEUDO).is_file()


def si_cells(n: int, seed: int = 0) -> list[Atoms]:
    """``n`` deterministic strained + rattled Si diamond cells of 2, 4 and 8 atoms."""
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        repeat = REPEATS[i % len(REPEATS)]
        atoms = bulk("Si", "diamond", a=A0 * (1 + rng.uniform(-0.03, 0.03))).repeat(repeat)
        atoms.info["repeat"] = repeat
        # A small random shear so that stresses are not purely hydrostatic.
        shear = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell @ shear, scale_atoms=True)
        atoms.rattle(stdev=rng.uniform(0.01, 0.05), seed=int(rng.integers(1 << 30)))
        atoms.info["structure_id"] = i + 1
        cells.append(atoms)
    return cells


def kpts_for(atoms: Atoms, k: int) -> tuple[int, int, int]:
    """The grid that samples the primitive cell's k x k x k set in a repeated cell."""
    repeat = tuple(int(r) for r in atoms.info["repeat"])
    return (k // repeat[0], k // repeat[1], k // repeat[2])


def label(atoms: Atoms, directory: Path, k: int = 2) -> Atoms:
    """Return a copy of ``atoms`` with a SinglePointCalculator holding pw.x results."""
    from ase.calculators.espresso import Espresso, EspressoProfile

    calc = Espresso(
        profile=EspressoProfile(command="pw.x", pseudo_dir=PSEUDO_DIR),
        directory=directory,
        pseudopotentials={"Si": PSEUDO},
        input_data=INPUT_DATA,
        kpts=kpts_for(atoms, k),
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


def labelled_si_dataset(n: int, cache_dir: Path, seed: int = 0, k: int = 2) -> list[Atoms]:
    """``n`` Si cells labelled with pw.x, cached in ``cache_dir`` (keyed by settings).

    ``k``: k-points per primitive axis (2 is cheap and consistent; 4 is closer to converged).
    """
    key = hashlib.sha256(
        json.dumps([n, seed, A0, PSEUDO, INPUT_DATA, REPEATS, k], sort_keys=True).encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"si-{n}-{key}.extxyz"
    if cache.is_file():
        return _read(cache)
    labelled = [
        label(atoms, cache_dir / f"pw-{key}" / f"{i:03d}", k)
        for i, atoms in enumerate(si_cells(n, seed))
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
        atoms.info["repeat"] = tuple(int(r) for r in np.ravel(atoms.info["repeat"]))
    return images
