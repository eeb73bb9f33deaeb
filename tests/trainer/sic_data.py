"""Small SiC datasets labelled with the real pw.x, shaped like recipes/data/sic.extxyz.

Strained and rattled 2-atom zincblende cells plus one short Si-C contact (1.51 Å), each
labelled with ASE's Espresso calculator directly at cheap settings (PBE ultrasoft
pseudopotentials, 25/200 Ry, a 3x3x3 grid for every cell: all cells have the same shape, so
the grid density is the same). Cached as extxyz in a directory the caller names.
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
PSEUDOS = {"Si": "Si.pbe-nl-rrkjus_psl.1.0.0.UPF", "C": "C.pbe-rrkjus.UPF"}
A0 = 4.36
INPUT_DATA = {
    "control": {"tprnfor": True, "tstress": True},
    "system": {"ecutwfc": 25, "ecutrho": 200},
    "electrons": {"conv_thr": 1e-7, "mixing_beta": 0.5},
}
KPTS = (3, 3, 3)


def pwx_available() -> bool:
    """True when pw.x and both pseudopotentials are installed."""
    return shutil.which("pw.x") is not None and all(
        (PSEUDO_DIR / p).is_file() for p in PSEUDOS.values()
    )


def sic_cells(n: int, seed: int = 7) -> list[Atoms]:
    """``n - 1`` strained + rattled primitive SiC cells and the short Si-C contact."""
    rng = np.random.default_rng(seed)
    prim = bulk("SiC", "zincblende", a=A0)
    cells = []
    for i, eps in enumerate(np.linspace(-0.05, 0.05, n - 1)):
        atoms = prim.copy()
        atoms.set_cell(prim.cell * (1 + eps), scale_atoms=True)
        atoms.rattle(0.05, rng=rng)
        atoms.info["structure_id"] = i + 1
        cells.append(atoms)
    close = prim.copy()
    close.positions[1] = close.positions[0] + [0.87, 0.87, 0.87]
    close.info["structure_id"] = n
    cells.append(close)
    return cells


def label(atoms: Atoms, directory: Path) -> Atoms:
    """A copy of ``atoms`` with a SinglePointCalculator holding pw.x results."""
    from ase.calculators.espresso import Espresso, EspressoProfile

    calc = Espresso(
        profile=EspressoProfile(command="pw.x", pseudo_dir=PSEUDO_DIR),
        directory=directory,
        pseudopotentials=PSEUDOS,
        input_data=INPUT_DATA,
        kpts=KPTS,
    )
    work = atoms.copy()
    work.calc = calc
    results = {
        "energy": work.get_potential_energy(),
        "forces": work.get_forces(),
        "stress": work.get_stress(),
    }
    out = atoms.copy()
    out.info = dict(atoms.info)
    out.calc = SinglePointCalculator(out, **results)
    return out


def labelled_sic_dataset(n: int, cache_dir: Path) -> list[Atoms]:
    """``n`` SiC cells labelled with pw.x, cached in ``cache_dir`` (keyed by settings)."""
    key = hashlib.sha256(
        json.dumps([n, A0, PSEUDOS, INPUT_DATA, KPTS], sort_keys=True).encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"sic-{n}-{key}.extxyz"
    if not cache.is_file():
        labelled = [
            label(atoms, cache_dir / f"pw-{key}" / f"{i:03d}")
            for i, atoms in enumerate(sic_cells(n))
        ]
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.extxyz")
        write(tmp, labelled, format="extxyz")
        tmp.replace(cache)
    images = read(cache, index=":", format="extxyz")
    assert isinstance(images, list)
    for atoms in images:
        atoms.info["structure_id"] = int(atoms.info["structure_id"])
    return images
