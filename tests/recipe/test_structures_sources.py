"""The source registry: every kind builds what it promises, and validate agrees with the builder.

For each source a good and a bad entry go through both ``check_recipe`` (validate) and the
builder; validate reports a structures error exactly when the builder raises.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlip_autopipec.recipe import check_recipe
from mlip_autopipec.recipe._yaml import load_yaml
from mlip_autopipec.recipe.model import SourcedAtoms
from mlip_autopipec.recipe.schema import fill_defaults, load_schema
from mlip_autopipec.recipe.structures import SOURCES, EntryError, entry_structures

DATA = Path(__file__).resolve().parent / "data"


def _filled(entry: dict[str, Any]) -> dict[str, Any]:
    data = [json.loads(json.dumps(entry))]
    fill_defaults(data, load_schema()["properties"]["structures"])
    return data[0]


def _validate_errors(tmp_path: Path, entry: dict[str, Any]) -> list[str]:
    """Errors validate reports about the structures entry (pseudopotentials aside)."""
    path = tmp_path / "r.yaml"
    recipe = {"structures": [entry], "oracle": {"pseudopotentials": {"X": "x.UPF"}}}
    path.write_text(json.dumps(recipe))
    return [
        d.message
        for d in check_recipe(path)
        if d.severity == "error" and "(at structures" in d.message
    ]


def _build(tmp_path: Path, entry: dict[str, Any]) -> list[SourcedAtoms]:
    return entry_structures(0, _filled(entry), tmp_path)


def _agree(tmp_path: Path, entry: dict[str, Any]) -> list[SourcedAtoms] | str:
    """Build and validate ``entry``; assert they agree; the structures or validate's error."""
    errors = _validate_errors(tmp_path, entry)
    try:
        built = _build(tmp_path, entry)
    except EntryError as exc:
        assert errors, f"validate accepted what the builder refuses: {exc}"
        assert any(str(exc) in e for e in errors), (errors, str(exc))
        return errors[0]
    assert not errors, f"validate refused what the builder builds: {errors}"
    assert len({s.source for s in built}) == len(built)
    for s in built:
        json.dumps(s.origin)  # JSON-safe: the store saves it as text
        assert s.origin["entry"] == 0 and s.origin["kind"] in SOURCES
    return built


def test_registry_and_schema_name_the_same_sources() -> None:
    branches = load_schema()["properties"]["structures"]["items"]["oneOf"]
    assert sorted(b["required"][0] for b in branches) == sorted(SOURCES)
    for b in branches:  # every source takes every transformation
        assert {"supercell", "substitutions", "vacancies", "strain", "rattle"} <= set(
            b["properties"]
        )


def test_surface(tmp_path: Path) -> None:
    entry = {"surface": {"element": "Cu", "crystal": "fcc", "a": 3.6, "miller": [1, 1, 1]}}
    entry["surface"].update(layers=3, vacuum=6.0)
    built = _agree(tmp_path, entry)
    assert isinstance(built, list) and len(built) == 1
    slab = built[0].atoms
    assert slab.pbc.all() and len(slab) == 12
    z = slab.positions[:, 2]
    assert z.min() == pytest.approx(6.0) and slab.cell[2, 2] - z.max() == pytest.approx(6.0)
    assert built[0].source == "surface[0] Cu fcc(111) layers=3 vacuum=6"
    wide = _agree(tmp_path, {"surface": {**entry["surface"], "size": [2, 1]}})
    assert isinstance(wide, list) and len(wide[0].atoms) == 24
    bad = _agree(tmp_path, {"surface": {**entry["surface"], "miller": [0, 0, 0]}})
    assert "ase.build.surface cannot build this" in str(bad)
    bad = _agree(
        tmp_path,
        {"surface": {"elements": ["Si", "C"], "crystal": "fcc", "a": 4, "miller": [1, 0, 0]}},
    )
    assert "cannot build" in str(bad)


def test_molecule(tmp_path: Path) -> None:
    built = _agree(tmp_path, {"molecule": {"name": "H2O", "vacuum": 5.0}})
    assert isinstance(built, list) and built[0].atoms.get_chemical_formula() == "H2O"
    assert built[0].atoms.cell.rank == 3 and built[0].atoms.pbc.all()
    bad = _agree(tmp_path, {"molecule": {"name": "H2Oo"}})
    assert "not a molecule" in str(bad) and "did you mean 'H2O'" in str(bad)


def test_isolated_atoms(tmp_path: Path) -> None:
    built = _agree(tmp_path, {"isolated_atoms": {"elements": ["Si", "C"], "box": 10}})
    assert isinstance(built, list)
    assert [len(s.atoms) for s in built] == [1, 1]
    assert [s.atoms.get_chemical_symbols()[0] for s in built] == ["Si", "C"]
    assert np.allclose(built[0].atoms.cell.lengths(), 10)
    assert built[1].origin["element"] == "C"


def test_dimer(tmp_path: Path) -> None:
    built = _agree(tmp_path, {"dimer": {"elements": ["Si", "C"], "distances": [1.6, 2.5]}})
    assert isinstance(built, list)
    assert [s.atoms.get_distance(0, 1, mic=True) for s in built] == pytest.approx([1.6, 2.5])
    assert [s.origin["distance"] for s in built] == [1.6, 2.5]
    bad = _agree(tmp_path, {"dimer": {"elements": ["Si", "Si"], "distances": [2, 6.5], "box": 12}})
    assert "not below half the box" in str(bad)


def test_trajectory_stride(tmp_path: Path) -> None:
    frames = []
    for k in range(10):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.positions[1, 0] += 0.01 * k
        frames.append(atoms)
    ase.io.write(tmp_path / "md.traj", frames)
    built = _agree(tmp_path, {"trajectory": "md.traj", "stride": 3})
    assert isinstance(built, list)
    assert [s.source for s in built] == [f"trajectory md.traj@{n}" for n in (0, 3, 6, 9)]
    assert built[1].atoms.positions[1, 0] == pytest.approx(frames[3].positions[1, 0])
    built = _agree(tmp_path, {"trajectory": "md.traj", "start": 2, "stop": 8, "stride": 2})
    assert isinstance(built, list) and [s.origin["frame"] for s in built] == [2, 4, 6]
    assert "select no frame" in str(_agree(tmp_path, {"trajectory": "md.traj", "start": 20}))
    assert "not found" in str(_agree(tmp_path, {"trajectory": "nothing.traj"}))


def test_transformations_apply_to_a_file_source(tmp_path: Path) -> None:
    shutil.copy(DATA / "si2.extxyz", tmp_path)
    entry: dict[str, Any] = {"file": "si2.extxyz", "index": "0"}
    plain = _agree(tmp_path, entry)
    assert isinstance(plain, list) and len(plain) == 1 and len(plain[0].atoms) == 2
    entry.update(
        supercell=[2, 2, 1],
        substitutions=[{"from": "Si", "to": "Ge", "count": 2, "seed": 3}],
        vacancies={"count": 1, "seed": 1},
        rattle={"stdev": 0.02, "count": 2},
    )
    built = _agree(tmp_path, entry)
    assert isinstance(built, list) and len(built) == 3  # the cell and two rattled copies
    cell = built[0].atoms
    assert len(cell) == 7 and cell.get_chemical_symbols().count("Ge") == 2
    assert built[0].source == "file si2.extxyz@0 supercell=2x2x1 sub=Si->Ge:2 vacancies=1"
    assert built[2].origin["rattle"] == 2 and built[0].origin["vacancies"] == {
        "count": 1,
        "seed": 1,
    }
    again = _build(tmp_path, entry)  # deterministic
    assert all(
        np.array_equal(a.atoms.positions, b.atoms.positions)
        for a, b in zip(built, again, strict=True)
    )
    fraction = _agree(
        tmp_path,
        {
            "file": "si2.extxyz",
            "index": "0",
            "supercell": [2, 2, 2],
            "substitutions": [{"from": "Si", "to": "C", "fraction": 0.25}],
        },
    )
    assert isinstance(fraction, list) and fraction[0].atoms.get_chemical_symbols().count("C") == 4
    refused = {
        "vacancies": {"count": 2},
        "substitutions": [{"from": "C", "to": "Ge", "count": 1}],
    }
    for key, value in refused.items():
        bad = _agree(tmp_path, {"file": "si2.extxyz", "index": "0", key: value})
        assert isinstance(bad, str) and f"structures[0].{key}" in bad


def test_shear_and_per_axis_strain(tmp_path: Path) -> None:
    base = bulk("Si", "diamond", a=5.43, cubic=True)
    shear = [[0, 0.01, 0], [0.01, 0, 0], [0, 0, 0]]
    entry = {
        "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43, "cubic": True},
        "strain": {"matrices": [shear, [0.02, 0, 0, 0, 0, 0]]},
    }
    built = _agree(tmp_path, entry)
    assert isinstance(built, list)
    assert [s.source.split()[-1] for s in built] == ["strain=0", "strain=m1", "strain=m2"]
    assert np.allclose(built[0].atoms.cell, base.cell)
    assert np.allclose(built[1].atoms.cell, base.cell @ (np.eye(3) + np.array(shear)).T)
    assert np.allclose(built[2].atoms.cell.lengths(), [5.43 * 1.02, 5.43, 5.43])
    assert np.allclose(built[1].atoms.get_scaled_positions(), base.get_scaled_positions())
    assert built[1].origin["strain_kind"] == "matrix"
    random = {**entry, "strain": {"random": 3, "max_shear": 0.03, "seed": 5}}
    first, second = _agree(tmp_path, random), _build(tmp_path, random)
    assert isinstance(first, list) and len(first) == 4
    eps = np.array(first[1].origin["strain"])
    assert np.allclose(eps, eps.T) and np.abs(eps[0, 1]) <= 0.03 and np.any(eps[0, 1:])
    assert all(
        np.array_equal(a.atoms.cell, b.atoms.cell) for a, b in zip(first, second, strict=True)
    )
    collapse = {**entry, "strain": {"matrices": [[[-0.5, 0.5, 0], [0.5, -0.5, 0], [0, 0, 0]]]}}
    assert "collapses the cell" in str(_agree(tmp_path, collapse))


def test_isotropic_strain_still_refuses_min_above_max(tmp_path: Path) -> None:
    entry = {"bulk": {"element": "Si", "crystal": "diamond", "a": 5.43}}
    bad = _agree(tmp_path, {**entry, "strain": {"min": 0.02, "max": -0.02, "count": 3}})
    assert "strain.min is larger than strain.max" in str(bad)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    vacancies=st.integers(1, 20),
    substituted=st.integers(1, 20),
    supercell=st.lists(st.integers(1, 2), min_size=3, max_size=3),
)
def test_defects_validate_iff_build(
    tmp_path: Path, vacancies: int, substituted: int, supercell: list[int]
) -> None:
    entry = {
        "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43},
        "supercell": supercell,
        "substitutions": [{"from": "Si", "to": "Ge", "count": substituted}],
        "vacancies": {"count": vacancies},
    }
    n = 2 * int(np.prod(supercell))
    result = _agree(tmp_path, entry)
    assert isinstance(result, list) == (substituted <= n and vacancies < n)
    if isinstance(result, list):
        assert len(result[0].atoms) == n - vacancies


def test_schema_accepts_every_documented_example(tmp_path: Path) -> None:
    text = """\
structures:
  - surface: {element: Pt, crystal: fcc, a: 3.92, miller: [1, 1, 1], layers: 3}
  - molecule: {name: CH4}
  - isolated_atoms: {elements: [Pt]}
  - dimer: {elements: [Pt, Pt], distances: [2.0, 2.4]}
    rattle: {stdev: 0.01, count: 1}
oracle:
  pseudopotentials: {Pt: Pt.UPF, C: C.UPF, H: H.UPF}
"""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_yaml(path, "r.yaml")[0]["structures"][3]["dimer"]["distances"] == [2.0, 2.4]
    errors = [d for d in check_recipe(path) if d.severity == "error"]
    assert all("(at structures" not in d.message for d in errors), errors
