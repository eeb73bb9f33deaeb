"""Per-pair inner cutoffs of pacemaker's ZBL core, from physics rather than from the data.

pacemaker's ``inner_cutoff_type: zbl`` switches each pair from ZBL (below
``r_in - delta_in``) to ACE (above ``r_in``). ``repulsion: auto`` would put ``r_in`` at the
shortest distance of each pair in the training set, which makes the switch land wherever
the data happen to end: for Si-C a 10 eV step inside 0.1 Å, and like-element pairs of a
compound (Si-Si, C-C at 3 Å) become pure ZBL. Here every pair gets
``r_in = inner_fraction * (R_cov,i + R_cov,j)`` and ``delta_in = delta_fraction * (...)``
(ASE's covalent radii) unless the recipe names the pair, and the choice is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations_with_replacement
from typing import Any

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.recipe.schema import schema_default

#: where the ZBL baseline's settings live in the schema (their defaults are read there)
_ZBL = ("trainer", "physics_baseline")


def pair_key(a: str, b: str) -> str:
    """Canonical name of an element pair: ``"C-Si"`` for (Si, C) and (C, Si)."""
    x, y = sorted((a, b))
    return f"{x}-{y}"


def _per_pair(value: Any, what: str, elements: Sequence[str]) -> dict[str, float]:
    """A number for every pair, or the recipe's map normalised to :func:`pair_key` names."""
    pairs = [pair_key(a, b) for a, b in combinations_with_replacement(sorted(elements), 2)]
    if value is None:
        return {}
    if isinstance(value, (int, float)):
        return {p: float(value) for p in pairs}
    out: dict[str, float] = {}
    for name, number in dict(value).items():
        parts = str(name).split("-")
        if len(parts) != 2 or pair_key(*parts) not in pairs:
            raise TrainerError(
                f"trainer.physics_baseline.{what}: {name!r} is not a pair of {sorted(elements)}"
            )
        out[pair_key(*parts)] = float(number)
    return out


def zbl_cutoffs(baseline: Mapping[str, Any], elements: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{pair: {"r_in": Å, "delta_in": Å, "source": "recipe" | "covalent radii"}}``.

    ``baseline`` is a filled-in ZBL ``physics_baseline`` record (``inner_fraction`` and
    ``delta_fraction`` present). Raises :class:`TrainerError` when a switch would reach
    down to zero distance.
    """
    from ase.data import atomic_numbers, covalent_radii

    inner = _per_pair(baseline.get("inner_cutoff"), "inner_cutoff", elements)
    delta = _per_pair(baseline.get("delta_in"), "delta_in", elements)
    f_in = float(baseline.get("inner_fraction", schema_default(*_ZBL, "inner_fraction")))
    f_delta = float(baseline.get("delta_fraction", schema_default(*_ZBL, "delta_fraction")))
    out: dict[str, dict[str, Any]] = {}
    for a, b in combinations_with_replacement(sorted(elements), 2):
        key = pair_key(a, b)
        radii = float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])
        r_in = inner.get(key, f_in * radii)
        d_in = delta.get(key, f_delta * radii)
        if d_in >= r_in:
            raise TrainerError(
                f"trainer.physics_baseline: for {key} delta_in {d_in:.3f} Å is not below "
                f"inner_cutoff {r_in:.3f} Å (the switch would reach zero distance)"
            )
        out[key] = {
            "r_in": round(r_in, 6),
            "delta_in": round(d_in, 6),
            "covalent_radii_sum": round(radii, 6),
            "source": "recipe" if key in inner else f"{f_in} x covalent radii",
        }
    return out


def bonds_per_pair(cutoffs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """pacemaker ``potential.bonds`` entries (keys like ``SiC``, ``Si``) for the ZBL core."""
    bonds: dict[str, dict[str, Any]] = {}
    for key, c in cutoffs.items():
        a, b = key.split("-")
        bonds[a if a == b else a + b] = {
            "inner_cutoff_type": "zbl",
            "r_in": float(c["r_in"]),
            "delta_in": float(c["delta_in"]),
            "core-repulsion": [1.0, 1.0],
        }
    return bonds
