"""Physics baselines for delta learning and the ACE + baseline calculator.

* ``LJ``: an additive ASE :class:`~ase.calculators.lj.LennardJones` baseline. Its energies and
  forces are subtracted from the DFT labels before fitting, and added back at prediction time.
* ``ZBL``: pacemaker's own inner core. It *switches* from ACE to ZBL below the inner cutoff
  (it is not added on top), so nothing is subtracted; it lives inside the ``.yace`` file.

Independently of the baseline, per-element reference energies (least squares on the training
set, what pacemaker's ``reference_energy: auto`` does) are removed so that ACE learns the
binding energy rather than -100 eV/atom of pseudo-atom energy; :class:`ReferenceEnergies`
adds them back so predictions are total energies identical in meaning to pw.x's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

#: Keys of the LJ baseline passed on to ASE's LennardJones (all in eV and Å).
LJ_KEYS = ("epsilon", "sigma", "rc", "ro", "smooth")


def baseline_calculator(baseline: Mapping[str, Any]) -> Calculator | None:
    """The additive ASE calculator of a ``physics_baseline`` record, or None (none / ZBL)."""
    if baseline.get("type") == "LJ":
        return LennardJones(**{k: baseline[k] for k in LJ_KEYS if baseline.get(k) is not None})
    return None


def baseline_labels(calc: Calculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy and forces of the baseline ``calc`` for ``atoms`` (a copy is evaluated)."""
    work = atoms.copy()
    work.calc = calc
    energy = float(work.get_potential_energy())
    forces = np.array(work.get_forces(), dtype=float)
    work.calc = None
    return energy, forces


def fit_reference_energies(
    symbols_list: Sequence[Sequence[str]], energies: Sequence[float], elements: Sequence[str]
) -> dict[str, float]:
    """Per-element energies minimising sum_s (E_s - sum_el n_el,s * e_el)^2.

    The same least-squares problem pacemaker solves for ``reference_energy: auto``; done
    here so that the values are known to the calculator that adds them back.
    """
    comp = np.array([[list(s).count(el) for el in elements] for s in symbols_list], dtype=float)
    e_ref = np.linalg.pinv(comp, rcond=1e-10) @ np.asarray(energies, dtype=float)
    return {el: float(v) for el, v in zip(elements, e_ref, strict=True)}


#: How the reference energies were chosen (recorded in potential.json).
REF_LSTSQ = "least squares on the training set"
REF_ISOLATED = "isolated-atom labels in the training set"
REF_MIN_NORM = "minimum-norm least squares (compositions are collinear)"
REF_GIVEN = "isolated atoms labelled with pw.x (trainer.reference: isolated_atoms)"


@dataclass(frozen=True)
class ReferenceChoice:
    """Per-element reference energies (eV), how they were chosen, and a warning if any."""

    energies: dict[str, float]
    method: str
    note: str | None = None


def is_isolated_atom(atoms: Atoms, cutoff: float) -> bool:
    """One atom with no periodic image within ``cutoff``: its ACE energy is E0 alone."""
    if len(atoms) != 1:
        return False
    cell = np.asarray(atoms.cell, dtype=float)
    for n in np.ndindex(3, 3, 3):
        shift = np.array(n) - 1
        if not shift.any() or not all(atoms.pbc[k] or shift[k] == 0 for k in range(3)):
            continue
        if float(np.linalg.norm(shift @ cell)) <= cutoff:
            return False
    return True


def choose_reference_energies(
    atoms_list: Sequence[Atoms],
    energies: Sequence[float],
    elements: Sequence[str],
    cutoff: float,
) -> ReferenceChoice:
    """Reference energies for ``atoms_list`` (energies already minus any additive baseline).

    1. An element labelled as an isolated atom (one atom, no image within ``cutoff``) takes
       that label: then the potential's isolated atom is exactly the DFT one.
    2. The other elements take the least-squares fit of the remaining energy
       (:func:`fit_reference_energies`).
    3. When the compositions cannot separate the elements (e.g. only 1:1 SiC cells: the
       composition matrix is rank-deficient), the minimum-norm solution is used, which gives
       every atom of the repeated formula unit the same share, and a warning says so: the split
       is then a convention; formation or cohesive energies off the training stoichiometry
       need isolated-atom labels or pure-element structures.
    """
    isolated: dict[str, float] = {}
    for atoms, energy in zip(atoms_list, energies, strict=True):
        if is_isolated_atom(atoms, cutoff):
            isolated.setdefault(atoms.get_chemical_symbols()[0], float(energy))
    rest = [el for el in elements if el not in isolated]
    reference = {el: isolated[el] for el in elements if el in isolated}
    method = REF_ISOLATED if isolated else REF_LSTSQ
    note = None
    if rest:
        rows, targets = [], []
        for atoms, energy in zip(atoms_list, energies, strict=True):
            symbols = atoms.get_chemical_symbols()
            if is_isolated_atom(atoms, cutoff) or not set(symbols) & set(rest):
                continue
            rows.append([s for s in symbols if s in rest])
            targets.append(float(energy) - sum(isolated.get(s, 0.0) for s in symbols))
        comp = np.array([[r.count(el) for el in rest] for r in rows], dtype=float)
        rank = int(np.linalg.matrix_rank(comp)) if len(rows) else 0
        reference.update(fit_reference_energies(rows, targets, rest) if rows else {})
        if rank < len(rest):
            method = (REF_ISOLATED + " + " if isolated else "") + REF_MIN_NORM
            note = (
                f"reference energies of {', '.join(rest)} cannot be told apart: every training "
                f"structure has the same proportions of them (composition rank {rank} < "
                f"{len(rest)}); used the minimum-norm split ("
                + ", ".join(f"{el} {reference[el]:.4f} eV" for el in rest)
                + "). Energies at the training stoichiometry are unaffected; for formation or "
                "cohesive energies set trainer.reference: isolated_atoms (pw.x labels one "
                "isolated atom per element as the references) or add pure-element structures"
            )
    return ReferenceChoice({el: float(reference[el]) for el in elements}, method, note)


def reference_energy(atoms: Atoms, reference: Mapping[str, float]) -> float:
    """Sum of the per-element reference energies of ``atoms``."""
    return float(sum(reference[s] for s in atoms.get_chemical_symbols()))


class ReferenceEnergies(Calculator):
    """Constant per-element energies: no forces, no stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, reference: Mapping[str, float]):
        super().__init__()
        self.reference = dict(reference)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        energies = np.array([self.reference[s] for s in self.atoms.get_chemical_symbols()])
        self.results = {
            "energy": float(energies.sum()),
            "free_energy": float(energies.sum()),
            "energies": energies,
            "forces": np.zeros((len(self.atoms), 3)),
            "stress": np.zeros(6),
        }


class AceWithBaseline(Calculator):
    """ACE plus additive terms (baseline, reference energies): the physical total.

    Energies, forces and stresses of all parts are summed. With an active set loaded on the
    ACE part, ``results["gamma"]`` holds the per-atom extrapolation grade of the ACE model.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "gamma"]

    def __init__(
        self, ace: Calculator, additive: Sequence[Calculator], extrapolation: bool = False
    ):
        super().__init__()
        self.ace = ace
        self.additive = list(additive)
        self.extrapolation = extrapolation

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        periodic = bool(self.atoms.cell.rank == 3 and self.atoms.pbc.all())
        wanted = ["energy", "forces"] + (["stress"] if periodic else [])
        total: dict[str, Any] = {}
        for calc in [self.ace, *self.additive]:
            calc.calculate(self.atoms.copy(), wanted, all_changes)
            for key in wanted:
                value = np.asarray(calc.results[key], dtype=float)
                total[key] = total[key] + value if key in total else value.copy()
        self.results = {
            "energy": float(total["energy"]),
            "free_energy": float(total["energy"]),
            "forces": total["forces"],
        }
        if periodic:
            self.results["stress"] = total["stress"]
        if self.extrapolation:
            self.results["gamma"] = np.array(self.ace.results["gamma"], dtype=float)
