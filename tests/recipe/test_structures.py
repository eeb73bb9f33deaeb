"""build_structures: deterministic bulk/strain/rattle generation and file reading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from mlip_autopipec.recipe import Recipe, build_structures, load_recipe
from mlip_autopipec.recipe.structures import strains

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, structures: list[dict]) -> Recipe:
    from mlip_autopipec.recipe.schema import fill_defaults, load_schema

    data = {"structures": structures}
    fill_defaults(data["structures"], load_schema()["properties"]["structures"])
    return Recipe(name="t", path=tmp_path / "r.yaml", base_dir=tmp_path, data=data)


def test_strain_samples_include_unstrained_cell() -> None:
    assert strains({}) == [0.0]
    assert strains({"strain": {"min": -0.02, "max": 0.02, "count": 3}}) == [-0.02, 0.0, 0.02]
    assert strains({"strain": {"min": 0.01, "max": 0.03, "count": 2}}) == [0.0, 0.01, 0.03]
    assert strains({"strain": {"min": -0.01, "max": 0.01, "count": 2}}) == [-0.01, 0.0, 0.01]


def test_bulk_strain_rattle(tmp_path: Path) -> None:
    entry = {
        "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43},
        "strain": {"min": -0.02, "max": 0.02, "count": 3},
        "rattle": {"stdev": 0.05, "count": 2, "seed": 7},
    }
    out = build_structures(_recipe(tmp_path, [entry]))
    assert len(out) == 3 * (1 + 2)
    assert [s.source for s in out[3:6]] == [
        "bulk[0] Si diamond strain=+0.000",
        "bulk[0] Si diamond strain=+0.000 rattle=1",
        "bulk[0] Si diamond strain=+0.000 rattle=2",
    ]
    ref = bulk("Si", "diamond", a=5.43)
    base = out[3].atoms
    assert np.allclose(base.cell, ref.cell) and np.allclose(base.positions, ref.positions)
    # isotropic strain scales the cell and the atoms by (1 + e): volume by (1 + e)^3
    first = out[0].atoms
    assert out[0].source.endswith("strain=-0.020")
    assert first.get_volume() == pytest.approx(ref.get_volume() * 0.98**3)
    assert np.allclose(first.get_scaled_positions(), ref.get_scaled_positions())
    # rattled copies: displaced by about stdev, all different from each other
    d1 = out[4].atoms.positions - base.positions
    d2 = out[5].atoms.positions - base.positions
    assert 0 < np.abs(d1).max() < 0.3 and not np.allclose(d1, d2)
    d_other_strain = out[1].atoms.get_scaled_positions() - out[0].atoms.get_scaled_positions()
    assert not np.allclose(d_other_strain @ base.cell, d1)


def test_deterministic(tmp_path: Path) -> None:
    entry = {
        "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43, "cubic": True},
        "rattle": {"stdev": 0.1, "count": 3},
    }
    a = build_structures(_recipe(tmp_path, [entry]))
    b = build_structures(_recipe(tmp_path, [entry]))
    assert [s.source for s in a] == [s.source for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.atoms.positions, y.atoms.positions)
    other = dict(entry, rattle={"stdev": 0.1, "count": 3, "seed": 1})
    c = build_structures(_recipe(tmp_path, [other]))
    assert not np.allclose(a[1].atoms.positions, c[1].atoms.positions)


def test_supercells(tmp_path: Path) -> None:
    rep = {"bulk": {"element": "Si", "crystal": "diamond", "a": 5.43, "supercell": [2, 1, 1]}}
    mat = {
        "bulk": {
            "element": "Si",
            "crystal": "diamond",
            "a": 5.43,
            "supercell": [[-1, 1, 1], [1, -1, 1], [1, 1, -1]],
        }
    }
    two = {"bulk": {"elements": ["Ga", "As"], "crystal": "zincblende", "a": 5.65}}
    out = build_structures(_recipe(tmp_path, [rep, mat, two]))
    assert [len(s.atoms) for s in out] == [4, 8, 2]
    assert out[0].source == "bulk[0] Si diamond supercell=2x1x1"
    # that matrix turns the fcc primitive cell into the conventional cube
    assert np.allclose(out[1].atoms.cell.lengths(), [5.43] * 3)
    assert out[2].atoms.get_chemical_symbols() == ["Ga", "As"]


def test_file_index_labels_and_magmoms(tmp_path: Path) -> None:
    shutil.copy(DATA / "si2.extxyz", tmp_path)
    shutil.copy(DATA / "fe_afm.extxyz", tmp_path)
    entries = [
        {"file": "si2.extxyz", "index": "1:"},
        {"file": "si2.extxyz", "index": -2},
        {"file": "fe_afm.extxyz"},
    ]
    out = build_structures(_recipe(tmp_path, entries))
    assert [s.source for s in out] == [
        "file si2.extxyz@1",
        "file si2.extxyz@0",
        "file fe_afm.extxyz@0",
    ]
    assert np.allclose(out[2].atoms.get_initial_magnetic_moments(), [2.2, -2.2])
    assert all(s.atoms.calc is None for s in out)


def test_quickstart_structures() -> None:
    if not Path("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF").is_file():
        pytest.skip("Debian quantum-espresso-data pseudopotentials not installed")
    out = build_structures(load_recipe(ROOT / "recipes" / "si_quickstart.yaml"))
    assert 20 <= len(out) <= 30
    assert all(2 <= len(s.atoms) <= 8 for s in out)
    assert len({s.source for s in out}) == len(out)
