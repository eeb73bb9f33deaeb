"""Regenerate sic.extxyz: zincblende SiC cells (strained, rattled) for recipes/sic_zbl.yaml.

Run from anywhere: python recipes/data/make_sic.py
"""

from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write

rng = np.random.default_rng(7)
frames = []
prim = bulk("SiC", "zincblende", a=4.36)
for eps in np.linspace(-0.05, 0.05, 8):
    for copy in range(2):
        atoms = prim.copy()
        atoms.set_cell(prim.cell * (1 + eps), scale_atoms=True)
        atoms.rattle(0.05, rng=rng)
        atoms.info["note"] = f"primitive strain={eps:+.3f} rattle={copy}"
        frames.append(atoms)
cubic = bulk("SiC", "zincblende", a=4.36, cubic=True)
for i in range(4):
    atoms = cubic.copy()
    atoms.rattle(0.08, rng=rng)
    atoms.info["note"] = f"cubic rattled {i}"
    frames.append(atoms)
# A short Si-C contact, as in a collision cascade: what the ZBL core is for.
close = prim.copy()
close.positions[1] = close.positions[0] + [0.87, 0.87, 0.87]
close.info["note"] = "short Si-C contact 1.51 A"
frames.append(close)
write(Path(__file__).with_name("sic.extxyz"), frames, format="extxyz")
