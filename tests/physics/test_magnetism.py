"""Magnetism as recipe data: moments in μB -> pw.x fractions, the same for bulk and file."""

from __future__ import annotations

import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import given
from hypothesis import strategies as st
from physics_testlib import PSEUDO, needs_pwx, oracle_of, write_recipe

from mlip_autopipec.errors import OracleError
from mlip_autopipec.oracle import AttemptResult, EspressoOracle, label_serially
from mlip_autopipec.oracle.attempt import write_attempt_input
from mlip_autopipec.oracle.magnetism import (
    parse_magnetization,
    pw_fractions,
    recipe_moments,
    unset_magnetic_elements,
)
from mlip_autopipec.recipe import build_structures

FE_PP = "Fe.pbe-nd-rrkjus.UPF"  # z_valence 8

# the end of a converged QE 6.7 AFM run (2-atom cubic bcc Fe)
PWO_TAIL = """
     total magnetization       =    -0.01 Bohr mag/cell
     absolute magnetization    =     3.75 Bohr mag/cell

     Magnetic moment per site:
     atom:    1    charge:    6.4638    magn:    1.8042    constr:    0.0000
     atom:    2    charge:    6.4628    magn:   -1.8052    constr:    0.0000

!    total energy              =    -111.52638152 Ry
     total magnetization       =    -0.00 Bohr mag/cell
     absolute magnetization    =     3.74 Bohr mag/cell
"""


def test_parse_magnetization_reads_the_magn_column() -> None:
    total, sites = parse_magnetization(PWO_TAIL)
    assert total == 0.0
    assert sites == (1.8042, -1.8052)  # ASE's reader would take 'constr' (0.0)
    assert parse_magnetization("no spin here") == (None, None)


@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(0.01, 20), st.floats(-20, -0.01)),
        min_size=1,
        max_size=8,
    ),
    st.floats(1, 30),
)
def test_fractions_are_clipped_signed_and_split_by_moment(moments: list[float], z: float) -> None:
    symbols = ["Fe"] * len(moments)
    frac = pw_fractions(symbols, moments, {"Fe": z})
    assert np.all(np.abs(frac) <= 1.0)
    for m, f in zip(moments, frac, strict=True):
        if m != 0:
            assert np.sign(f) == np.sign(m)
            assert f == pytest.approx(max(-1, min(1, m / z)), abs=1e-6)
        else:
            assert f == 0
    # equal moments give equal fractions: ASE makes one species of them
    assert len(set(frac.tolist())) <= len(set(moments))


def test_fraction_needs_a_valence() -> None:
    with pytest.raises(ValueError, match="z_valence"):
        pw_fractions(["Fe"], [2.0], {"Fe": None})


def test_recipe_moments_replace_ase_bulk_defaults() -> None:
    fe = bulk("Fe", "bcc", 2.83, cubic=True)
    assert fe.get_initial_magnetic_moments().tolist() == [2.3, 2.3]  # ASE's own guess
    assert recipe_moments(fe, None).tolist() == [0, 0]
    assert recipe_moments(fe, None, {"Fe": 2.2}).tolist() == [2.2, 2.2]
    assert recipe_moments(fe, {"Fe": 1.0}, {"Fe": 2.2}).tolist() == [1.0, 1.0]
    assert recipe_moments(fe, [2.2, -2.2]).tolist() == [2.2, -2.2]
    with pytest.raises(ValueError, match="2 values but the cell has 4 atoms"):
        recipe_moments(fe.repeat((2, 1, 1)), [2.2, -2.2])
    afm = fe.copy()
    afm.set_initial_magnetic_moments([1.0, -1.0])
    assert recipe_moments(afm, None, {"Fe": 2.2}, keep_own=True).tolist() == [1.0, -1.0]
    assert recipe_moments(afm, {"Fe": 2.2}, keep_own=True).tolist() == [2.2, 2.2]


def test_unset_magnetic_elements() -> None:
    entries = [{"bulk": {}, "magmoms": None}]
    assert unset_magnetic_elements(["Fe", "Si"], entries, {}) == ["Fe"]
    assert (
        unset_magnetic_elements(["Fe"], entries, {"magnetism": {"default_moments": {"Fe": 2}}})
        == []
    )


def test_starting_magnetization_in_input_data_is_refused() -> None:
    cfg = {"input_data": {"system": {"ecutwfc": 20, "starting_magnetization(1)": 0.4}}}
    with pytest.raises(OracleError, match="initial moments are the atoms'"):
        EspressoOracle(cfg, {"Fe": PSEUDO / FE_PP})


def test_old_results_load_without_magnetism_fields() -> None:
    old = {"number": 1, "attempt_dir": None, "failure_class": "converged", "message": ""}
    r = AttemptResult.from_dict(old)
    assert r.magmoms is None and r.total_magmom is None and r.theory_key is None
    new = AttemptResult.from_dict({**old, "magmoms": [2.1, -2.1], "total_magmom": 0})
    assert new.magmoms == (2.1, -2.1) and new.total_magmom == 0.0
    assert AttemptResult.from_dict(new.to_dict()) == new


FE_RECIPE = """\
name: fe-magnetism
structures:
  - bulk: {{element: Fe, crystal: bcc, a: 2.83, cubic: true}}
    magmoms: [2.2, -2.2]
  - file: fe.vasp
    magmoms: [2.2, -2.2]
  - bulk: {{element: Fe, crystal: bcc, a: 2.85, cubic: true}}
  - file: fe285.vasp
oracle:
  pseudopotentials: {{Fe: {pp}}}
  kspacing: 0.12
  magnetism: {{default_moments: {{Fe: 2.2}}}}
  input_data:
    system: {{ecutwfc: 20, ecutrho: 160, occupations: smearing, smearing: mv, degauss: 0.02}}
    electrons: {{mixing_beta: 0.3, conv_thr: 1.0e-7}}
"""


def _pwi_species(text: str) -> list[str]:
    return re.findall(r"starting_magnetization\(\d\)\s*=\s*(\S+)", text)


@pytest.mark.pwx
@needs_pwx
def test_fe_ferro_and_antiferro_same_from_bulk_and_file(tmp_path: Path) -> None:
    """AFM and FM bcc Fe (2-atom cubic cell) from a generated bulk and from a POSCAR."""
    for a, name in ((2.83, "fe.vasp"), (2.85, "fe285.vasp")):
        plain = Atoms("Fe2", scaled_positions=[[0, 0, 0], [0.5] * 3], cell=[a] * 3, pbc=True)
        ase.io.write(tmp_path / name, plain, format="vasp")  # a POSCAR carries no moments
    recipe = write_recipe(tmp_path, FE_RECIPE.format(pp=FE_PP))
    structures = build_structures(recipe)
    moments = [s.atoms.get_initial_magnetic_moments().tolist() for s in structures]
    assert moments == [[2.2, -2.2], [2.2, -2.2], [2.2, 2.2], [2.2, 2.2]]
    oracle = oracle_of(recipe, tmp_path)

    inputs = []
    for i, s in enumerate(structures):
        req = oracle.next_request(str(i), s.atoms, [], tmp_path / f"dry{i}")
        assert req is not None
        text = write_attempt_input(req).read_text()
        inputs.append(re.sub(r"pseudo_dir\s*=.*", "", text))
    assert inputs[0] == inputs[1] and inputs[2] == inputs[3]  # bulk and file: same input
    assert _pwi_species(inputs[0]) == ["0.275", "-0.275"]  # 2.2 μB / 8 valence electrons
    assert _pwi_species(inputs[2]) == ["0.275"]
    assert all(re.search(r"nspin\s*=\s*2", t) for t in inputs)

    afm_bulk, afm_file, fm_bulk = (
        label_serially(oracle, str(i), structures[i].atoms, tmp_path / f"run{i}")[-1]
        for i in range(3)
    )
    for r in (afm_bulk, afm_file, fm_bulk):
        assert r.ok, r.message
        assert r.magmoms is not None and r.total_magmom is not None
        assert r.theory is not None and r.theory["nspin"] == 2
    assert afm_bulk.energy == pytest.approx(afm_file.energy, abs=1e-6)
    assert afm_bulk.magmoms == afm_file.magmoms
    m1, m2 = afm_bulk.magmoms
    assert m1 > 1.0 and m2 < -1.0 and m1 == pytest.approx(-m2, abs=0.02)
    assert abs(afm_bulk.total_magmom) < 0.05
    assert all(m > 1.5 for m in fm_bulk.magmoms)
    assert fm_bulk.total_magmom > 4.0  # ~2.3-2.5 μB per Fe
    assert afm_bulk.theory_key == fm_bulk.theory_key  # same Hamiltonian, other solution
