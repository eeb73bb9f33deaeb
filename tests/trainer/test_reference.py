"""Reference energies: least squares, isolated atoms, and collinear compositions."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.trainer.baseline import (
    REF_ISOLATED,
    REF_LSTSQ,
    REF_MIN_NORM,
    choose_reference_energies,
    is_isolated_atom,
)

E_REF = {"Si": -107.0, "C": -155.0}


def _energy(atoms: Atoms) -> float:
    return sum(E_REF[s] for s in atoms.get_chemical_symbols())


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=8))
def test_least_squares_recovers_the_constants_when_compositions_differ(counts):
    cells = [Atoms(f"Si{a}C{b}") for a, b in counts if a + b > 1]  # 1 atom: isolated
    comp = np.array([[c.get_chemical_symbols().count(e) for e in ("C", "Si")] for c in cells])
    if len(cells) < 2 or np.linalg.matrix_rank(comp) < 2:
        return
    choice = choose_reference_energies(cells, [_energy(c) for c in cells], ["C", "Si"], 5.0)
    assert choice.method == REF_LSTSQ and choice.note is None
    assert choice.energies == pytest.approx(E_REF)


def test_one_to_one_compound_is_detected_and_warned():
    cells = [bulk("SiC", "zincblende", a=4.36 * (1 + e)) for e in (-0.02, 0.0, 0.02)]
    energies = [_energy(c) + 0.1 * i for i, c in enumerate(cells)]
    choice = choose_reference_energies(cells, energies, ["C", "Si"], 4.5)
    assert choice.method == REF_MIN_NORM
    assert choice.note is not None and "cannot be told apart" in choice.note
    # the minimum-norm split: the formula-unit energy shared equally, reproduced in total
    assert choice.energies["Si"] == pytest.approx(choice.energies["C"])
    assert choice.energies["Si"] + choice.energies["C"] == pytest.approx(np.mean(energies))


def test_isolated_atom_labels_fix_the_split():
    cells = [bulk("SiC", "zincblende", a=4.36 * (1 + e)) for e in (-0.02, 0.0, 0.02)]
    atom = Atoms("C", cell=[12, 12, 12], pbc=True)
    assert is_isolated_atom(atom, 4.5) and not is_isolated_atom(
        Atoms("C", cell=[3] * 3, pbc=1), 4.5
    )
    energies = [_energy(c) - 6.0 for c in cells] + [-150.0]
    choice = choose_reference_energies([*cells, atom], energies, ["C", "Si"], 4.5)
    assert choice.method == REF_ISOLATED and choice.note is None
    assert choice.energies["C"] == -150.0
    # Si takes the rest of the formula-unit energy
    assert choice.energies["Si"] == pytest.approx(-107.0 - 155.0 - 6.0 + 150.0)
