"""Magnetism as recipe data: initial moments in μB, pw.x fractions, final moments.

The recipe states initial moments, so a generated Fe and the same Fe read from a POSCAR
get the same level of theory: ASE's ``bulk('Fe')`` default of 2.3 μB is always replaced,
and a file's own initial moments (extxyz ``initial_magmoms``) are kept only when the
entry gives no ``magmoms`` and the file carries a non-zero moment::

    oracle:
      magnetism:
        default_moments: {Fe: 2.2}        # μB per element, every structure
    structures:
      - bulk: {element: Fe, crystal: bcc, a: 2.83, cubic: true}
        magmoms: [2.2, -2.2]              # per site: an antiferromagnet
      - file: fe.vasp
        magmoms: {Fe: 2.2}                # per element, this source only
      - file: fe_afm.extxyz                 # carries initial_magmoms: kept

pw.x wants ``starting_magnetization(i)`` per *species* as a fraction of that species'
valence charge in [-1, 1]. ASE's writer makes one species per (element, initial moment)
and writes the moment itself as the fraction (pw.x 6.7 then clips 2.3 to 1), so
:func:`pw_fractions` hands ASE the fractions (moment / z_valence of the UPF, clipped)
instead of the moments; sites with opposite moments still become separate species.
``nspin`` becomes 2 whenever a moment is non-zero.

pw.x prints the final moments after convergence (QE 6.7)::

     total magnetization       =    -0.00 Bohr mag/cell
     Magnetic moment per site:
     atom:    1    charge:    6.4638    magn:    1.8042    constr:    0.0000

ASE's reader takes the last column of the per-site lines (``constr``, 0 in 6.7), so
:func:`parse_magnetization` reads the ``magn:`` field itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
from ase import Atoms

#: pw.x output markers (QE 6.7).
TOTAL_MAGNETIZATION: Final = "total magnetization"
MOMENT_PER_SITE: Final = "Magnetic moment per site"
_TOTAL_RE = re.compile(r"^\s*total magnetization\s*=\s*(\S+)\s+Bohr mag/cell", re.MULTILINE)
_SITE_RE = re.compile(r"atom\s*:?\s*(\d+).*?magn\s*:?\s*(\S+)")

#: Elements whose ground state is magnetic in common crystals: validate may warn when a
#: recipe gives them no initial moment (they are then computed spin-unpolarised).
MAGNETIC_ELEMENTS: Final = frozenset({"Cr", "Mn", "Fe", "Co", "Ni", "Gd"})
#: Moments smaller than this (μB) count as zero.
ZERO_MOMENT: Final = 1e-8


def recipe_moments(
    atoms: Atoms,
    spec: Any,
    default_moments: Mapping[str, float] | None = None,
    *,
    keep_own: bool = False,
) -> np.ndarray:
    """Initial moments (μB per atom) of one structure from the recipe.

    ``spec`` is the structure entry's ``magmoms``: None (``keep_own`` and the atoms carry
    a non-zero moment: those; else ``default_moments`` per element, 0 for the rest), a
    mapping element -> μB (elements it does not name fall back to ``default_moments``),
    or a list with one value per site. Raises ValueError for a list of the wrong length.
    """
    defaults = {str(k): float(v) for k, v in (default_moments or {}).items()}
    symbols = atoms.get_chemical_symbols()
    if isinstance(spec, str):
        raise ValueError(f"magmoms must be a mapping or a list, not {spec!r}")
    if isinstance(spec, Mapping):
        per_element = {**defaults, **{str(k): float(v) for k, v in spec.items()}}
        return np.array([per_element.get(s, 0.0) for s in symbols], dtype=float)
    if isinstance(spec, Sequence):
        if len(spec) != len(atoms):
            raise ValueError(
                f"magmoms has {len(spec)} values but the cell has {len(atoms)} atoms "
                "(give one value per site, or a mapping element -> moment)"
            )
        return np.array([float(v) for v in spec], dtype=float)
    own = np.asarray(atoms.get_initial_magnetic_moments(), dtype=float)
    if keep_own and is_magnetic(own):
        return own.copy()
    return np.array([defaults.get(s, 0.0) for s in symbols], dtype=float)


def magmom_problem(spec: Any, n_atoms: int) -> str | None:
    """Why a structure entry's ``magmoms`` cannot apply to a cell of ``n_atoms`` (or None).

    For ``validate``: a per-site list must have one value per atom of every cell.
    """
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) != n_atoms:
        return f"magmoms has {len(spec)} values but the cell has {n_atoms} atoms"
    return None


def set_recipe_moments(
    items: Iterable[Any], entry: Mapping[str, Any], oracle_cfg: Mapping[str, Any]
) -> list[Any]:
    """Set the recipe's initial moments on every structure of one ``structures`` entry.

    ``items`` are :class:`~mlip_autopipec.recipe.model.SourcedAtoms` (or Atoms); their
    atoms are changed in place and returned as a list. A ``file`` entry keeps the moments
    its file carries unless it gives ``magmoms``; a ``bulk`` entry never keeps ASE's.
    """
    defaults = (oracle_cfg.get("magnetism") or {}).get("default_moments") or {}
    spec = entry.get("magmoms")
    keep_own = "file" in entry
    out = list(items)
    for item in out:
        atoms = item if isinstance(item, Atoms) else item.atoms
        atoms.set_initial_magnetic_moments(recipe_moments(atoms, spec, defaults, keep_own=keep_own))
    return out


def unset_magnetic_elements(
    elements: Iterable[str], entries: Sequence[Mapping[str, Any]], oracle_cfg: Mapping[str, Any]
) -> list[str]:
    """Usually magnetic elements no moment is given for anywhere in the recipe.

    For a ``validate`` warning: such elements are computed spin-unpolarised (a file's own
    moments are not seen here; the warning says so).
    """
    defaults = (oracle_cfg.get("magnetism") or {}).get("default_moments") or {}
    named = {str(k) for k, v in defaults.items() if v}
    for entry in entries:
        spec = entry.get("magmoms")
        if isinstance(spec, Mapping):
            named |= {str(k) for k, v in spec.items() if v}
        elif isinstance(spec, Sequence) and not isinstance(spec, str) and is_magnetic(spec):
            return []  # per-site moments: the sites' elements are not known here
    return sorted(set(elements) & MAGNETIC_ELEMENTS - named)


def is_magnetic(moments: Iterable[float]) -> bool:
    """True when any initial moment is non-zero (pw.x then needs ``nspin = 2``)."""
    return any(abs(float(m)) > ZERO_MOMENT for m in moments)


def pw_fractions(
    symbols: Sequence[str], moments: Sequence[float], valence: Mapping[str, float | None]
) -> np.ndarray:
    """``starting_magnetization`` per atom: moment / valence of its species, in [-1, 1].

    ``valence`` is z_valence per element from the UPF header; a missing valence is
    refused (ValueError) rather than guessed.
    """
    out = np.zeros(len(symbols))
    for i, (s, m) in enumerate(zip(symbols, moments, strict=True)):
        if abs(float(m)) <= ZERO_MOMENT:
            continue
        z = valence.get(s)
        if z is None or z <= 0:
            raise ValueError(f"no valence charge (z_valence) in the {s} pseudopotential header")
        # 6 digits: sites with the same moment stay one species (ASE splits by value)
        out[i] = round(max(-1.0, min(1.0, float(m) / float(z))), 6)
    return out


def parse_magnetization(pwo_text: str) -> tuple[float | None, tuple[float, ...] | None]:
    """(total μB/cell, per-site μB) of the last SCF step pw.x printed, else None each.

    Only spin-polarised runs print them; the last block wins (the converged one).
    """
    totals = _TOTAL_RE.findall(pwo_text)
    total = None
    if totals:
        try:
            total = float(totals[-1])
        except ValueError:
            total = None
    sites: tuple[float, ...] | None = None
    start = pwo_text.rfind(MOMENT_PER_SITE)
    if start >= 0:
        values: list[float] = []
        for line in pwo_text[start:].splitlines()[1:]:
            m = _SITE_RE.search(line)
            if m is None:
                break
            try:
                values.append(float(m.group(2)))
            except ValueError:
                break
        sites = tuple(values) if values else None
    return total, sites
