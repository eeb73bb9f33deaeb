"""Export labelled structures to pacemaker's dataset format (and extxyz).

pacemaker reads a gzip-pickled pandas DataFrame with ``ase_atoms``, ``energy``, ``forces`` and
``energy_corrected`` (what it actually fits). ``energy_corrected`` here is the DFT energy minus
the additive baseline minus the per-element reference energies; ``forces`` are DFT minus
baseline forces. The DFT values are kept in ``energy_dft``/``forces_dft`` for provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.trainer.baseline import baseline_labels, reference_energy


def structure_id(atoms: Atoms, index: int) -> str:
    """The structure id recorded for ``atoms`` (``atoms.info["structure_id"]``) as a string."""
    sid = atoms.info.get("structure_id")
    if sid is None:
        raise TrainerError(f"structure #{index} has no atoms.info['structure_id']")
    return str(sid)


def dft_labels(atoms: Atoms, sid: str) -> tuple[float, np.ndarray]:
    """Free energy (else energy) and forces stored on ``atoms``, validated."""
    if atoms.calc is None:
        raise TrainerError(f"structure {sid} has no labels (no calculator attached)")
    try:
        # Forces are derivatives of the free energy (with smearing): fit that when present.
        # pw.x's "!" energy is already the free energy, so for pw.x labels both are equal.
        try:
            energy = float(atoms.get_potential_energy(force_consistent=True))
        except PropertyNotImplementedError:
            energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(), dtype=float)
    except (PropertyNotImplementedError, RuntimeError) as exc:
        raise TrainerError(f"structure {sid} lacks energy or forces: {exc}") from exc
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise TrainerError(f"structure {sid} has non-finite energy or forces")
    if forces.shape != (len(atoms), 3):
        raise TrainerError(
            f"structure {sid}: forces have shape {forces.shape}, not ({len(atoms)}, 3)"
        )
    return energy, forces


def split_ids(ids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/test split of ``ids`` (independent of their order).

    At least one structure is held out whenever ``test_fraction > 0`` and there are at least
    two structures, so that the reported test error always exists.
    """
    ordered = sorted(ids)
    n_test = int(round(len(ordered) * test_fraction))
    if test_fraction > 0 and len(ordered) >= 2:
        n_test = min(max(n_test, 1), len(ordered) - 1)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    test = sorted(ordered[i] for i in perm[:n_test])
    train = sorted(ordered[i] for i in perm[n_test:])
    return train, test


def build_dataframe(
    atoms_list: Sequence[Atoms],
    ids: Sequence[str],
    reference: Mapping[str, float],
    baseline: Calculator | None,
) -> pd.DataFrame:
    """pacemaker's DataFrame for the given structures (rows in the order of ``atoms_list``)."""
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "name",
            "ase_atoms",
            "energy",
            "forces",
            "energy_corrected",
            "energy_dft",
            "forces_dft",
            "energy_baseline",
        )
    }
    for atoms, sid in zip(atoms_list, ids, strict=True):
        e_dft, f_dft = dft_labels(atoms, sid)
        e_base, f_base = (0.0, np.zeros_like(f_dft))
        if baseline is not None:
            e_base, f_base = baseline_labels(baseline, atoms)
        clean = Atoms(
            symbols=atoms.get_chemical_symbols(),
            positions=atoms.get_positions(),
            cell=atoms.get_cell(),
            pbc=atoms.get_pbc(),
        )
        rows["name"].append(sid)
        rows["ase_atoms"].append(clean)
        rows["energy"].append(e_dft - e_base)
        rows["forces"].append(f_dft - f_base)
        rows["energy_corrected"].append(e_dft - e_base - reference_energy(atoms, reference))
        rows["energy_dft"].append(e_dft)
        rows["forces_dft"].append(f_dft)
        rows["energy_baseline"].append(e_base)
    df = pd.DataFrame(rows)
    # pandas 3 gives new frames string-dtype columns and column index, which pandas 2 cannot
    # unpickle; object dtype loads under both.
    for col in df.columns:
        if isinstance(df[col].dtype, pd.StringDtype):
            df[col] = df[col].astype(object)
    df.columns = pd.Index(list(df.columns), dtype=object)
    return df


def write_dataframe(df: pd.DataFrame, path: Path) -> None:
    """Pickle ``df`` with gzip (protocol 4, as pacemaker itself writes)."""
    tmp = path.with_name(path.name + ".tmp")
    df.to_pickle(tmp, compression="gzip", protocol=4)
    tmp.replace(path)


def write_extxyz(
    atoms_list: Sequence[Atoms], ids: Sequence[str], test_ids: Sequence[str], path: Path
) -> None:
    """All structures with their DFT labels and a ``set`` tag (train/test) as extxyz."""
    from ase.io import write

    test = set(test_ids)
    images = []
    for atoms, sid in zip(atoms_list, ids, strict=True):
        image = atoms.copy()
        image.calc = atoms.calc
        image.info = {"structure_id": sid, "set": "test" if sid in test else "train"}
        images.append(image)
    write(path, images, format="extxyz")
