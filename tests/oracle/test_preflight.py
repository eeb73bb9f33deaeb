"""The core-overlap preflight (oracle/preflight.py): Ni2 at 0.6 Å is quarantined with the
right reason and 0 pw.x runs (was 3 failing runs); the rescuable close pairs still run."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_testlib import PSEUDO, oracle_cfg

from mlip_autopipec.oracle import EspressoOracle, FailureClass, label_serially
from mlip_autopipec.oracle.preflight import core_radius, overlapping_cores

needs_pseudo = pytest.mark.skipif(not PSEUDO.is_dir(), reason="needs quantum-espresso-data")
NI = PSEUDO / "Ni.pbe-nd-rrkjus.UPF"
FE = PSEUDO / "Fe.pz-nd-rrkjus.UPF"


def _pair(el: str, d: float) -> Atoms:
    return Atoms(f"{el}2", positions=[[0, 0, 0], [d, 0, 0]], cell=[4.5] * 3, pbc=True)


@needs_pseudo
def test_core_radii_from_the_upf_projectors() -> None:
    # Ni: ultrasoft_cutoff_radius 2.6 bohr (4P); Fe: 2.3 bohr; vbc files give 0: no radius
    assert core_radius(NI) == pytest.approx(2.6 * 0.529177, rel=1e-4)
    assert core_radius(FE) == pytest.approx(2.3 * 0.529177, rel=1e-4)
    assert core_radius(PSEUDO / "Si.pz-vbc.UPF") is None


@needs_pseudo
@pytest.mark.parametrize(
    ("el", "d", "refused"),
    [("Ni", 0.6, True), ("Ni", 0.65, False), ("Ni", 0.7, False), ("Fe", 0.8, False)],
)
def test_measured_pairs(el: str, d: float, refused: bool, tmp_path: Path) -> None:
    """The table in oracle/preflight.py: only the pair no eigensolver converges is refused."""
    pp = {"Ni": NI, "Fe": FE}[el]
    oracle = EspressoOracle(oracle_cfg(kspacing=None, kpts=[1, 1, 1]), {el: pp})
    got = oracle.preflight(_pair(el, d))
    if not refused:
        assert got is None
        return
    assert got is not None and got.failure_class == FailureClass.OVERLAPPING_ATOMS
    assert got.number == 0 and got.attempt_dir is None
    assert "0.600 Å apart" in got.message and "min_core_fraction" in got.message
    # label_serially: the preflight answer is the whole history, no pw.x run
    res = label_serially(oracle, "ni", _pair(el, d), tmp_path)
    assert [r.number for r in res] == [0] and not list(tmp_path.rglob("espresso.pwi"))


@needs_pseudo
def test_real_cells_and_the_switch(tmp_path: Path) -> None:
    oracle = EspressoOracle(oracle_cfg(), {"Ni": NI})
    assert oracle.preflight(bulk("Ni", "fcc", 3.52, cubic=True)) is None
    off = EspressoOracle(oracle_cfg(min_core_fraction=0), {"Ni": NI})
    assert off.preflight(_pair("Ni", 0.6)) is None
    # an element without radii (norm-conserving vbc) is left to min_distance
    si = EspressoOracle(oracle_cfg(min_distance=0.2), {"Si": PSEUDO / "Si.pz-vbc.UPF"})
    assert si.preflight(_pair("Si", 0.3)) is None


@settings(max_examples=200, deadline=None)
@given(
    d=st.floats(0.3, 3.0),
    ra=st.floats(0.5, 2.0),
    rb=st.floats(0.5, 2.0),
    fraction=st.floats(0.0, 0.5),
    swap=st.booleans(),
)
def test_refused_iff_below_the_fraction_of_the_radii(
    d: float, ra: float, rb: float, fraction: float, swap: bool
) -> None:
    atoms = Atoms("NiFe" if not swap else "FeNi", positions=[[0, 0, 0], [d, 0, 0]])
    atoms.cell = [8, 8, 8]
    got = overlapping_cores(atoms, {"Ni": ra, "Fe": rb}, fraction)
    limit = fraction * (ra + rb)
    if d < limit * (1 - 1e-9):
        assert got is not None and got[0] == pytest.approx(d) and got[3] == pytest.approx(limit)
    elif d > limit * (1 + 1e-9):
        assert got is None
    # an element without a radius never takes part
    assert overlapping_cores(atoms, {"Ni": ra, "Fe": None}, fraction) is None
