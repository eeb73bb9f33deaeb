"""Turning the ``structures`` entries of a recipe into ASE Atoms, deterministically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell
from ase.io.formats import string2index

from mlip_autopipec.recipe.model import Recipe, SourcedAtoms

#: Strains closer to zero than this are the unstrained cell.
_ZERO_STRAIN = 1e-12


def parse_index(index: str | int) -> int | slice:
    """ASE index string (``":"``, ``"3"``, ``"-1"``, ``"0:10:2"``) or int -> int | slice."""
    if isinstance(index, int):
        return index
    parsed = string2index(index.strip())
    if isinstance(parsed, str):
        raise ValueError(f"not an ASE index: {index!r}")
    return parsed


def strains(entry: dict[str, Any]) -> list[float]:
    """The strain samples of a bulk entry, always including 0 (the unstrained cell)."""
    spec = entry.get("strain")
    if not spec:
        return [0.0]
    values = [float(e) for e in np.linspace(spec["min"], spec["max"], spec["count"])]
    if not any(abs(e) < _ZERO_STRAIN for e in values):
        values.append(0.0)
    return sorted(0.0 if abs(e) < _ZERO_STRAIN else e for e in values)


def bulk_base(spec: dict[str, Any]) -> Atoms:
    """The cell of a ``bulk`` spec: ``ase.build.bulk`` then the supercell. Raises on bad input."""
    name = spec.get("element") or "".join(spec["elements"])
    atoms = bulk(
        name,
        spec["crystal"],
        a=spec["a"],
        c=spec.get("c"),
        cubic=bool(spec.get("cubic", False)),
        orthorhombic=bool(spec.get("orthorhombic", False)),
    )
    sc = spec.get("supercell", [1, 1, 1])
    if sc and isinstance(sc[0], list):
        matrix = np.array(sc, dtype=int)
        if round(abs(np.linalg.det(matrix))) == 0:
            raise ValueError(f"supercell matrix {sc} is singular")
        atoms = make_supercell(atoms, matrix)
    elif sc:
        atoms = atoms.repeat(tuple(int(n) for n in sc))
    return atoms


def rattle_seed(seed: int, entry: int, strain: int, copy: int) -> int:
    """Seed of one rattled copy: independent streams per entry, strain and copy."""
    return int(np.random.SeedSequence([seed, entry, strain, copy]).generate_state(1)[0])


def bulk_structures(i: int, entry: dict[str, Any]) -> list[SourcedAtoms]:
    """All cells of bulk entry ``i``: each strain, unrattled then its rattled copies."""
    spec = entry["bulk"]
    base = bulk_base(spec)
    name = spec.get("element") or "".join(spec["elements"])
    label = f"bulk[{i}] {name} {spec['crystal']}"
    if spec.get("cubic"):
        label += " cubic"
    if spec.get("orthorhombic"):
        label += " orthorhombic"
    sc = spec.get("supercell", [1, 1, 1])
    if sc != [1, 1, 1]:
        label += " supercell=" + (
            "x".join(map(str, sc)) if not isinstance(sc[0], list) else str(sc)
        )
    rattle = entry.get("rattle")
    out: list[SourcedAtoms] = []
    for s, eps in enumerate(strains(entry)):
        strained = base.copy()
        strained.set_cell(base.cell * (1.0 + eps), scale_atoms=True)
        s_label = label + (f" strain={eps:+.3f}" if entry.get("strain") else "")
        out.append(SourcedAtoms(s_label, strained))
        if rattle:
            for k in range(1, rattle["count"] + 1):
                copy = strained.copy()
                copy.rattle(stdev=rattle["stdev"], seed=rattle_seed(rattle.get("seed", 0), i, s, k))
                out.append(SourcedAtoms(f"{s_label} rattle={k}", copy))
    return out


def read_frames(entry: dict[str, Any], base_dir: Path) -> list[tuple[int, Atoms]]:
    """(frame number, Atoms) selected by ``index`` from the file of a file entry.

    Raises OSError/ValueError/IndexError (and whatever the ASE reader raises) on bad input.
    Calculators attached by the reader are dropped: labels come from the oracle only.
    Initial magnetic moments are kept as read.
    """
    path = Path(entry["file"]).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    frames = ase.io.read(path, index=":", format=entry.get("format"))
    if isinstance(frames, Atoms):
        frames = [frames]
    numbers = list(range(len(frames)))
    index = parse_index(entry.get("index", ":"))
    if isinstance(index, int):
        if not -len(frames) <= index < len(frames):
            raise IndexError(f"index {index} is out of range: the file has {len(frames)} frames")
        chosen = [numbers[index]]
    else:
        chosen = numbers[index]
        if not chosen:
            raise IndexError(
                f"index {entry.get('index')!r} selects no frame: the file has {len(frames)}"
            )
    out = []
    for n in chosen:
        atoms = frames[n]
        atoms.calc = None
        out.append((n, atoms))
    return out


def _display_file(file: str, base_dir: Path) -> str:
    p = Path(file)
    if p.is_absolute():
        try:
            return os.path.relpath(p, base_dir) if p.is_relative_to(base_dir) else str(p)
        except ValueError:
            return str(p)
    return file


def file_structures(i: int, entry: dict[str, Any], base_dir: Path) -> list[SourcedAtoms]:
    """The frames of file entry ``i``, labelled ``file <path>@<frame>``."""
    shown = _display_file(entry["file"], base_dir)
    return [SourcedAtoms(f"file {shown}@{n}", a) for n, a in read_frames(entry, base_dir)]


def entry_structures(i: int, entry: dict[str, Any], base_dir: Path) -> list[SourcedAtoms]:
    """Structures of one ``structures`` entry."""
    if "bulk" in entry:
        return bulk_structures(i, entry)
    return file_structures(i, entry, base_dir)


def build_structures(recipe: Recipe) -> list[SourcedAtoms]:
    """Every structure the recipe names, in recipe order; the same result on every call."""
    from mlip_autopipec.oracle.magnetism import set_recipe_moments

    out: list[SourcedAtoms] = []
    for i, entry in enumerate(recipe.data["structures"]):
        # initial moments come from the recipe (never ASE's bulk defaults)
        items = entry_structures(i, entry, recipe.base_dir)
        out.extend(set_recipe_moments(items, entry, recipe.data.get("oracle") or {}))
    return out
