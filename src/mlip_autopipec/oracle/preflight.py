"""Preflight from the pseudopotentials: atoms whose cores overlap too far for pw.x.

Two atoms closer than ``oracle.min_distance`` (Å) are refused whatever the elements. For
pseudopotentials with projectors, what breaks is the overlap of their cores: with the
two atoms' augmentation/projector spheres (UPF ``PP_BETA`` ``cutoff_radius`` /
``ultrasoft_cutoff_radius``) almost on top of each other, the overlap matrix S of the
ultrasoft scheme stops being positive definite and no eigensolver converges. Measured with
pw.x 6.7 (Ni.pbe-nd-rrkjus, r = 2.6 bohr; Fe.pz-nd-rrkjus, r = 2.3 bohr; two atoms at
Gamma with m-v smearing, every eigensolver of the ladder tried):

==================  =====================  =========================================
pair                d / (r_i + r_j)        outcome
==================  =====================  =========================================
Ni2 at 0.60 Å       0.218                  david, paro: S matrix; cg: signal 11
Ni2 at 0.65 Å       0.236                  david: S matrix (1); paro 41; cg signal 11
Ni2 at 0.70 Å       0.254                  paro 17, cg 17, ppcg 16 SCF steps
Fe2 at 0.80 Å       0.329                  paro 32 SCF steps
==================  =====================  =========================================

so a pair below ``oracle.min_core_fraction`` x (r_i + r_j) (0.225: between the last
hopeless and the first rescued pair) is quarantined
(``overlapping_atoms``) with 0 pw.x runs instead of 3 failing ones. Norm-conserving files
without radii (``cutoff_radius="0"``, e.g. the vbc ones) are checked by ``min_distance``
only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ase import Atoms
from ase.neighborlist import neighbor_list
from ase.units import Bohr

if TYPE_CHECKING:
    from mlip_autopipec.recipe.pseudo import UpfHeader

#: A UPF v2 PP_BETA tag and its ``cutoff_radius="2.0e0"`` / ``ultrasoft_cutoff_radius``.
_BETA_TAG_RE: Final = re.compile(r"<PP_BETA\.\d+[^>]*>", re.S)
_ATTR_RE: Final = re.compile(r"\b(?:ultrasoft_)?cutoff_radius\s*=\s*\"\s*([-+0-9.EeDd]+)\s*\"")


@lru_cache(maxsize=64)
def _core_radius_cached(path: str, mtime_ns: int) -> float | None:
    text = Path(path).read_text(errors="replace")
    radii = [
        float(v.replace("D", "E").replace("d", "e"))
        for tag in _BETA_TAG_RE.findall(text)
        for v in _ATTR_RE.findall(tag)
    ]
    r = max(radii, default=0.0)
    return r * Bohr if r > 0 else None


def core_radius(path: Path) -> float | None:
    """The largest projector/augmentation cutoff radius of a UPF file, in Å (None: the
    file gives none). Raises OSError when the file cannot be read."""
    p = Path(path)
    return _core_radius_cached(str(p.resolve()), p.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _upf_header_cached(path: str, mtime_ns: int) -> UpfHeader:
    from mlip_autopipec.recipe.pseudo import read_header  # the recipe package imports oracle

    return read_header(Path(path))


def upf_header(path: Path) -> UpfHeader:
    """A UPF file's header (:func:`~mlip_autopipec.recipe.pseudo.read_header`), read once
    per file version: the preflight runs per structure. Raises OSError/EOFError/ValueError
    as ``read_header`` does."""
    p = Path(path)
    return _upf_header_cached(str(p.resolve()), p.stat().st_mtime_ns)


def overlapping_cores(
    atoms: Atoms, radii: Mapping[str, float | None], fraction: float
) -> tuple[float, int, int, float] | None:
    """(distance, i, j, limit) of the pair closest relative to ``fraction`` x (r_i + r_j),
    if some pair is below it; pairs with an element without a radius are skipped."""
    known = {el: r for el, r in radii.items() if r}
    if fraction <= 0 or not known or len(atoms) < 2 and not atoms.pbc.any():
        return None
    cutoff = 2 * fraction * max(known.values())
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    symbols = atoms.get_chemical_symbols()
    worst: tuple[float, int, int, float] | None = None
    for a, b, dist in zip(i, j, d, strict=True):
        ra, rb = known.get(symbols[a]), known.get(symbols[b])
        if ra is None or rb is None:
            continue
        limit = fraction * (ra + rb)
        if dist < limit and (worst is None or dist / limit < worst[0] / worst[3]):
            worst = (float(dist), int(a), int(b), float(limit))
    return worst


__all__ = ["core_radius", "overlapping_cores", "upf_header"]
