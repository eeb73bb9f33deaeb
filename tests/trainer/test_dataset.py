"""Dataset export: split, reference energies, baseline subtraction, pickle compatibility."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from hypothesis import given
from hypothesis import strategies as st
from si_data import si_cells

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.trainer.baseline import baseline_calculator, fit_reference_energies
from mlip_autopipec.trainer.dataset import (
    build_dataframe,
    split_ids,
    write_dataframe,
    write_extxyz,
)


@given(
    st.lists(st.integers(0, 10_000), min_size=2, max_size=60, unique=True),
    st.floats(0.05, 0.9),
    st.integers(0, 2**31),
)
def test_split_is_a_deterministic_partition(raw_ids, fraction, seed):
    ids = [str(i) for i in raw_ids]
    train, test = split_ids(ids, fraction, seed)
    assert sorted(train + test) == sorted(ids) and not set(train) & set(test)
    assert 1 <= len(test) <= len(ids) - 1  # always a test set, never an empty train set
    assert split_ids(list(reversed(ids)), fraction, seed) == (train, test)  # order-independent


def test_no_test_set_when_fraction_zero():
    assert split_ids(["a", "b", "c"], 0.0, 1) == (["a", "b", "c"], [])


def _labelled(n=4):
    """Si cells labelled with real LJ numbers (a stand-in for DFT; cheap and exact)."""
    out = []
    for atoms in si_cells(n, seed=3):
        work = atoms.copy()
        work.calc = LennardJones(epsilon=0.5, sigma=2.2, rc=4.5)
        e, f = work.get_potential_energy(), work.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e - 100.0 * len(atoms), forces=f)
        out.append(atoms)
    return out


def test_reference_energies_recover_per_element_constants():
    # E = 2 * n_A * (-3) + n_B * (-7) exactly -> least squares returns those numbers.
    comps = [["A", "A", "B"], ["A", "B", "B", "B"], ["B"], ["A"] * 5]
    energies = [sum(-3.0 if s == "A" else -7.0 for s in c) for c in comps]
    ref = fit_reference_energies(comps, energies, ["A", "B"])
    assert ref == pytest.approx({"A": -3.0, "B": -7.0})


def test_dataframe_corrected_energy_and_lj_subtraction(tmp_path: Path):
    atoms = _labelled()
    ids = [str(a.info["structure_id"]) for a in atoms]
    lj = baseline_calculator({"type": "LJ", "epsilon": 0.5, "sigma": 2.2, "rc": 4.5})
    ref = {"Si": -100.0}
    df = build_dataframe(atoms, ids, ref, lj)
    # The labels *are* that LJ + a constant: after subtracting both nothing is left.
    assert np.allclose(df["energy_corrected"].to_numpy(dtype=float), 0.0, atol=1e-10)
    assert np.allclose(np.vstack(df["forces"]), 0.0, atol=1e-10)
    assert np.allclose(df["energy_dft"], [a.get_potential_energy() for a in atoms])
    # Without a baseline the forces are the labels and only the reference energy is removed.
    plain = build_dataframe(atoms, ids, ref, None)
    n = np.array([len(a) for a in atoms])
    assert np.allclose(plain["energy_corrected"], plain["energy_dft"] + 100.0 * n)
    assert np.allclose(np.vstack(plain["forces"]), np.vstack([a.get_forces() for a in atoms]))
    assert list(plain["name"]) == ids
    # Atoms in the table carry no calculator: pacemaker attaches its own.
    assert all(a.calc is None for a in plain["ase_atoms"])


def test_pickle_has_object_column_index_and_round_trips(tmp_path: Path):
    atoms = _labelled(3)
    df = build_dataframe(atoms, ["1", "2", "3"], {"Si": 0.0}, None)
    path = tmp_path / "train.pckl.gzip"
    write_dataframe(df, path)
    # An object-dtype column index is what lets pandas 2 unpickle a pandas 3 frame.
    assert df.columns.dtype == object
    loaded = pd.read_pickle(path, compression="gzip")
    assert loaded.columns.dtype == object
    assert list(loaded.columns) == list(df.columns)
    assert np.allclose(loaded["energy_corrected"], df["energy_corrected"])
    assert not any("StringDtype" in repr(type(c)) for c in loaded.dtypes)
    import gzip

    with gzip.open(path) as fh:
        raw = pickle.load(fh)
    assert isinstance(raw, pd.DataFrame)


def test_extxyz_keeps_labels_and_set(tmp_path: Path):
    atoms = _labelled(3)
    ids = [str(a.info["structure_id"]) for a in atoms]
    write_extxyz(atoms, ids, [ids[1]], tmp_path / "d.extxyz")
    back = read(tmp_path / "d.extxyz", index=":")
    assert [b.info["set"] for b in back] == ["train", "test", "train"]
    assert np.allclose(back[1].get_potential_energy(), atoms[1].get_potential_energy())


def test_missing_labels_is_a_clear_error():
    atoms = si_cells(1)[0]
    with pytest.raises(TrainerError, match="no labels"):
        build_dataframe([atoms], ["1"], {"Si": 0.0}, None)


def test_free_energy_is_fitted_when_it_differs():
    atoms = si_cells(1)[0]
    forces = np.zeros((len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, energy=-10.0, free_energy=-10.2, forces=forces)
    df = build_dataframe([atoms], ["1"], {"Si": 0.0}, None)
    assert df["energy_dft"].iloc[0] == pytest.approx(-10.2)
    atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=forces)
    assert build_dataframe([atoms], ["1"], {"Si": 0.0}, None)["energy"].iloc[0] == -10.0
