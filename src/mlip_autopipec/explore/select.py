"""Which candidate frames get labelled: D-optimal (MaxVol) against the current active set.

:func:`maxvol_order` asks python-ace's own ``pyace.aceselect.select_structures_maxvol`` (what
``pace_select`` runs) which candidates enlarge the volume of the active set of the current
potential (the ``.asi`` file, turned back into projections with ``compute_A_active_inverse``
exactly as ``pace_select -a`` does), most atoms in the new active set first. Candidates it
does not pick are ``not_selected_by_maxvol``. :func:`random_order` is the baseline the
benchmark compares with.

:func:`decide` is the pure bookkeeping: walk the proposed order, skip near-duplicates of
something already chosen (or already in the store), stop at the budget; every candidate
ends up with exactly one decision and reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

SELECTED = "selected"
REJECTED = "rejected"
NOT_SELECTED_BY_MAXVOL = "not_selected_by_maxvol"
NEAR_DUPLICATE = "near_duplicate"
OVER_BUDGET = "over_budget"
REASONS = (NOT_SELECTED_BY_MAXVOL, NEAR_DUPLICATE, OVER_BUDGET)
MODES = ("dopt", "random")

#: Two frames of the same composition whose potential energies per atom differ by less than
#: this (eV/atom) and whose largest forces differ by less than :data:`FORCE_TOL` (eV/Å) are
#: the same configuration for labelling purposes (successive MD frames are ~10 meV/atom apart).
ENERGY_TOL = 1e-3
FORCE_TOL = 1e-2


@dataclass(frozen=True)
class Fingerprint:
    """The cheap identity of a frame: composition, content hash, energy/atom, max force,
    and where it was recorded (``walker``, MD ``step``; empty/-1 for a stored structure).

    ``min_gap``: two frames of the same walker fewer than this many MD steps apart are one
    configuration (a walker records every ``sample_every`` steps, plus the frame that halted
    it, which can be 1-2 steps after the last recorded one: the loop labelled both)."""

    formula: str
    digest: str
    energy_per_atom: float
    max_force: float
    walker: str = ""
    step: int = -1
    min_gap: int = 0

    def near(self, other: Fingerprint, e_tol: float = ENERGY_TOL, f_tol: float = FORCE_TOL) -> bool:
        """Same structure (hash), a few steps apart on one walker, or indistinguishable by
        the potential's energy and forces."""
        if self.digest == other.digest:
            return True
        if (
            self.walker
            and self.walker == other.walker
            and abs(self.step - other.step) < max(self.min_gap, other.min_gap)
        ):
            return True
        return (
            self.formula == other.formula
            and abs(self.energy_per_atom - other.energy_per_atom) < e_tol
            and abs(self.max_force - other.max_force) < f_tol
        )


@dataclass(frozen=True)
class Decision:
    """The fate of one candidate (``index`` into the candidate list)."""

    index: int
    state: str
    reason: str | None = None


def decide(
    fingerprints: Sequence[Fingerprint],
    order: Sequence[int],
    max_selected: int,
    known: Iterable[Fingerprint] = (),
) -> list[Decision]:
    """One decision per candidate, in candidate order.

    ``order`` lists the candidates the selector proposes, best first (indices into
    ``fingerprints``); any candidate not in it is ``not_selected_by_maxvol``. Walking
    ``order``: a near-duplicate of an already selected one or of a ``known`` structure
    (e.g. already in the store) is ``near_duplicate``; after ``max_selected`` picks the rest
    are ``over_budget``.
    """
    n = len(fingerprints)
    if len(set(order)) != len(order) or any(not 0 <= i < n for i in order):
        raise ValueError("order must list distinct candidate indices")
    chosen: list[Fingerprint] = list(known)
    out: dict[int, Decision] = {}
    picked = 0
    for i in order:
        fp = fingerprints[i]
        if any(fp.near(c) for c in chosen):
            out[i] = Decision(i, REJECTED, NEAR_DUPLICATE)
        elif picked >= max_selected:
            out[i] = Decision(i, REJECTED, OVER_BUDGET)
        else:
            out[i] = Decision(i, SELECTED)
            chosen.append(fp)
            picked += 1
    return [out.get(i, Decision(i, REJECTED, NOT_SELECTED_BY_MAXVOL)) for i in range(n)]


def fingerprint(
    atoms: Atoms,
    energy: float,
    max_force: float,
    walker: str = "",
    step: int = -1,
    min_gap: int = 0,
) -> Fingerprint:
    """:class:`Fingerprint` of a frame (``energy`` in eV from the exploring potential)."""
    from mlip_autopipec.lifecycle.store import content_hash

    return Fingerprint(
        formula=atoms.get_chemical_formula(),
        digest=content_hash(atoms),
        energy_per_atom=float(energy) / max(len(atoms), 1),
        max_force=float(max_force),
        walker=walker,
        step=int(step),
        min_gap=int(min_gap),
    )


def random_order(n: int, seed: int) -> list[int]:
    """Every candidate in a seeded random order (the benchmark's baseline)."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def maxvol_order(
    candidates: Sequence[Atoms],
    potential_yaml: Path,
    asi: Path | None,
    gamma_tolerance: float = 1.01,
) -> list[int]:
    """Indices of the candidates MaxVol puts into the active set, most atoms first.

    ``potential_yaml`` is the B-basis (``output_potential.yaml``), ``asi`` its active set
    inverse; without it the selection is among the candidates alone.
    """
    if not candidates:
        return []
    import pandas as pd

    from mlip_autopipec.explore.md import quiet_pyace_import

    with quiet_pyace_import():
        from pyace import BBasisConfiguration
        from pyace.aceselect import select_structures_maxvol
        from pyace.activelearning import compute_A_active_inverse, load_active_inverse_set

    bconf = BBasisConfiguration(str(potential_yaml))
    extra = None
    if asi is not None and Path(asi).is_file():
        extra = compute_A_active_inverse(load_active_inverse_set(str(asi)))
    df = pd.DataFrame({"ase_atoms": list(candidates)})
    df.index = range(len(df))
    picked = select_structures_maxvol(
        df,
        bconf,
        extra_A0_projections_dict=extra,
        batch_size_option="none",
        gamma_tolerance=gamma_tolerance,
        max_structures=-1,
        verbose=False,
    )
    return [int(i) for i in picked.index]
