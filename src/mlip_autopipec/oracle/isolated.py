"""Isolated-atom reference energies (recipe ``trainer.reference: isolated_atoms``).

One atom per element is labelled with pw.x and its energy becomes the element's reference
energy of the fit (``E0`` in the ``.yace``), so the potential's energy of a structure minus
the sum of its atoms' references is the DFT cohesive (atomisation) energy.

The physics choices, recorded with each reference (``RUN_DIR/reference/isolated_atoms.json``):

- **Same level of theory as the training labels**: the functional, pseudopotential files,
  ``ecutwfc``/``ecutrho`` and every other Hamiltonian key are taken from the theory record
  of the fitted labels (not re-read from the recipe), so the atom and the crystal differ
  only where an atom must.
- **Spin-polarised** (``nspin = 2``) with Hund's-rule moment (ASE's
  ``ground_state_magnetic_moments``: Si, C 2 μB, Al 1 μB, Fe 4 μB) as the initial moment:
  an isolated open-shell atom is magnetic even when its crystal is not (a non-magnetic
  crystal's spin-polarised solution is its unpolarised one, so the two energies compare).
- **Occupations**: when the training theory uses smearing, the atom uses the same smearing
  and width and its moment is free. With fixed occupations (an insulator's theory) the atom
  keeps fixed occupations with ``tot_magnetization`` = its Hund's-rule moment: integer
  occupations are what an isolated atom has, and a smearing width would add an entropy term
  the labels do not have. A closed-shell atom (moment 0) is computed unpolarised.
- **Box**: orthorhombic ``L x 1.05 L x 1.1 L`` (``trainer.reference_box``, default 12 Å):
  unequal edges lift the cubic degeneracy of partly filled p/d shells; the Γ point only.
- The retry ladder may rescue an atom; a rescue that changes the theory is refused (the
  reference would not match the labels): the fit stops with a message.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ase import Atoms
from ase.data import atomic_numbers, ground_state_magnetic_moments

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.fsutil import atomic_write_json
from mlip_autopipec.oracle.espresso import EspressoOracle, label_serially
from mlip_autopipec.oracle.theory import theory_settings

#: Where the isolated-atom labels live in a run directory.
REFERENCE_DIR: Final = "reference"
RECORD_FILE: Final = "isolated_atoms.json"
#: Edge ratios of the orthorhombic box (no cubic degeneracy of p/d shells).
BOX_RATIOS: Final = (1.0, 1.05, 1.1)


def hund_moment(element: str) -> float:
    """The ground-state moment (μB) of the free atom (ASE's table)."""
    return float(ground_state_magnetic_moments[atomic_numbers[element]])


def atom_in_box(element: str, box: float) -> Atoms:
    """One atom of ``element`` in an orthorhombic box, with its Hund's-rule initial moment."""
    atoms = Atoms(element, positions=[[0.0, 0.0, 0.0]], cell=[box * r for r in BOX_RATIOS])
    atoms.pbc = True
    atoms.set_initial_magnetic_moments([hund_moment(element)])
    return atoms


def isolated_atom_cfg(
    oracle_cfg: Mapping[str, Any], theory: Mapping[str, Any], element: str
) -> dict[str, Any]:
    """The oracle settings of the isolated ``element`` atom for the training ``theory``
    (a label's theory record): the recipe's numerics, the labels' Hamiltonian, Γ only."""
    cfg = copy.deepcopy(dict(oracle_cfg))
    for key in ("converge", "kspacing"):
        cfg.pop(key, None)
    cfg["kpts"] = [1, 1, 1]
    cfg["koffset"] = [0, 0, 0]
    input_data = cfg.setdefault("input_data", {})
    system = input_data.setdefault("system", {})
    for key in ("occupations", "smearing", "degauss", "nspin", "tot_magnetization"):
        system.pop(key, None)
    system["ecutwfc"] = theory["ecutwfc"]
    system["ecutrho"] = theory["ecutrho"]
    if theory.get("input_dft"):
        system["input_dft"] = theory["input_dft"]
    for key, value in (theory.get("other") or {}).items():
        section, name = key.split(".", 1)
        input_data.setdefault(section, {})[name] = value
    moment = hund_moment(element)
    if theory.get("occupations") == "smearing":
        system.update(
            occupations="smearing", smearing=theory["smearing"], degauss=theory["degauss"]
        )
    else:
        system["occupations"] = theory.get("occupations") or "fixed"
        if moment:
            system["tot_magnetization"] = moment
    return cfg


def _fingerprint(cfg: Mapping[str, Any], element: str, box: float, pseudo: Path) -> str:
    text = json.dumps({"cfg": cfg, "element": element, "box": box}, sort_keys=True, default=str)
    h = hashlib.sha256(text.encode())
    h.update(pseudo.read_bytes())
    return h.hexdigest()[:16]


def isolated_atom_references(
    elements: Sequence[str],
    theory: Mapping[str, Any],
    oracle_cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    run_dir: Path | str,
    box: float,
) -> dict[str, dict[str, Any]]:
    """element -> record (``energy`` eV: the free energy, as the fit's targets;
    ``total_magmom`` μB, ``theory_key``, ``settings``,
    ``attempts``, ``workdir``) of one isolated atom per element, labelled with pw.x.

    Cached in ``RUN_DIR/reference/isolated_atoms.json`` per element with a fingerprint of
    the settings (a resumed or refitted run reuses them; changed settings relabel).
    Raises :class:`TrainerError` when an atom does not converge or its rescue changed the
    level of theory.
    """
    folder = Path(run_dir) / REFERENCE_DIR
    record_path = folder / RECORD_FILE
    records: dict[str, dict[str, Any]] = (
        json.loads(record_path.read_text()) if record_path.is_file() else {}
    )
    out: dict[str, dict[str, Any]] = {}
    for el in sorted(elements):
        cfg = isolated_atom_cfg(oracle_cfg, theory, el)
        fingerprint = _fingerprint(cfg, el, box, Path(pseudopotentials[el]))
        cached = records.get(el)
        if cached is not None and cached.get("fingerprint") == fingerprint:
            out[el] = cached
            continue
        atoms = atom_in_box(el, box)
        oracle = EspressoOracle(cfg, {el: Path(pseudopotentials[el])})
        workdir = folder / el / fingerprint
        history = label_serially(oracle, f"isolated-{el}", atoms, workdir)
        last = history[-1]
        if not last.ok or last.energy is None:
            raise TrainerError(
                f"trainer.reference isolated_atoms: the isolated {el} atom did not converge "
                f"({last.failure_class}: {last.message}; {workdir}); set trainer.reference "
                "to fit, or adjust the oracle settings"
            )
        changed = theory_settings(last.params_diff or {})
        if changed:
            raise TrainerError(
                f"trainer.reference isolated_atoms: the isolated {el} atom converged only "
                f"with another level of theory ({', '.join(sorted(changed))} changed by the "
                f"retry ladder; {workdir}): its energy is no reference for the labels"
            )
        system = cfg["input_data"]["system"]
        # what the fit's targets are (trainer/dataset.dft_labels): the free energy when
        # pw.x gives one (with smearing it is the "!" energy), else the energy
        free = last.free_energy if last.free_energy is not None else last.energy
        out[el] = {
            "element": el,
            "energy": float(free),
            "total_energy": float(last.energy),
            "total_magmom": last.total_magmom,
            "theory_key": last.theory_key,
            "settings": {
                "box_ang": [box * r for r in BOX_RATIOS],
                "kpts": [1, 1, 1],
                "initial_moment": hund_moment(el),
                "occupations": system.get("occupations"),
                "smearing": system.get("smearing"),
                "degauss": system.get("degauss"),
                "tot_magnetization": system.get("tot_magnetization"),
            },
            "attempts": len(history),
            "workdir": str(workdir.relative_to(Path(run_dir))),
            "fingerprint": fingerprint,
        }
        records[el] = out[el]
        atomic_write_json(record_path, records)
    return out


def training_theory(stores: Sequence[Any], key: str | None) -> dict[str, Any] | None:
    """The theory record of the labels of theory ``key`` (the fitted one), from the final
    converged attempts in ``stores`` (the run store, then the relabel store)."""
    for store in stores:
        for sid in store.ids_in_state("labelled", "trained"):
            for attempt in reversed(store.attempts_of(sid)):
                if attempt.get("failure_class") == "converged":
                    if attempt.get("theory_key") == key and attempt.get("theory"):
                        theory: dict[str, Any] = attempt["theory"]
                        return theory
                    break
    return None
