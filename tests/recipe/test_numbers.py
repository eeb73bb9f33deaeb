"""Numbers in a recipe are finite and integers are integers; messages teach units and sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlip_autopipec.recipe import check_recipe, load_recipe
from mlip_autopipec.recipe.validate import _non_finite

SI_PP = "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
needs_system_pseudo = pytest.mark.skipif(
    not (Path("/usr/share/espresso/pseudo") / SI_PP).is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)
pytestmark = needs_system_pseudo

BASE = (
    "structures:\n"
    "  - bulk: {element: Si, crystal: diamond, a: 5.43}\n"
    "    strain: {min: -0.01, max: 0.01, count: 3}\n"
    "    rattle: {stdev: 0.05, count: 1, seed: 2}\n"
    "oracle:\n"
    f"  pseudopotentials: {{Si: {SI_PP}}}\n"
    "  kspacing: 0.3\n"
    "  timeout: 600\n"
    "  min_distance: 0.5\n"
    "  input_data: {system: {ecutwfc: 30}, electrons: {conv_thr: 1.0e-8}}\n"
    "  retry: {max_attempts: 3}\n"
    "trainer: {cutoff: 5.0, kappa: 0.3, test_fraction: 0.2, seed: 1, timeout: 60}\n"
)


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    assert old in BASE
    p = tmp_path / "r.yaml"
    p.write_text(BASE.replace(old, new, 1))
    return p


def _value_at(p: Path, new: str) -> str:
    """``line:col`` of the value written by ``new`` (``key: value``) in recipe ``p``."""
    for number, line in enumerate(p.read_text().splitlines(), 1):
        if new in line:
            return f"{number}:{line.index(new) + new.index(':') + 3}"
    raise AssertionError(new)


def _errors(p: Path) -> list[str]:
    return [str(d) for d in check_recipe(p) if d.severity == "error"]


def test_base_recipe_is_valid(tmp_path: Path) -> None:
    assert _errors(_variant(tmp_path, "a: 5.43", "a: 5.43")) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("a: 5.43", "a: .nan"),
        ("min: -0.01", "min: -.inf"),
        ("stdev: 0.05", "stdev: .NaN"),
        ("kspacing: 0.3", "kspacing: .nan"),
        ("timeout: 600", "timeout: .nan"),
        ("timeout: 600", "timeout: .inf"),
        ("min_distance: 0.5", "min_distance: .nan"),
        ("ecutwfc: 30", "ecutwfc: .nan"),
        ("conv_thr: 1.0e-8", "conv_thr: .inf"),
        ("cutoff: 5.0", "cutoff: .nan"),
        ("kappa: 0.3", "kappa: .nan"),
        ("test_fraction: 0.2", "test_fraction: .nan"),
        ("timeout: 60}", "timeout: .inf}"),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(tmp_path: Path, old: str, new: str) -> None:
    p = _variant(tmp_path, old, new)
    where = _value_at(p, new)
    errors = _errors(p)
    assert any(
        e.startswith(f"{p}:{where}: error: ") and "not a finite number" in e for e in errors
    ), errors


@pytest.mark.parametrize(
    ("old", "new", "text"),
    [
        ("count: 3}", "count: 3.0}", "write 3"),
        ("count: 1,", "count: 1.0,", "write 1"),
        ("seed: 2}", "seed: 2.0}", "write 2"),
        ("max_attempts: 3", "max_attempts: 3.0", "write 3"),
        ("seed: 1,", "seed: 1.0,", "write 1"),
        ("seed: 1,", "seed: 99999999999999999999,", "maximum"),
    ],
)
def test_integers_are_integers(tmp_path: Path, old: str, new: str, text: str) -> None:
    p = _variant(tmp_path, old, new)
    where = _value_at(p, new)
    errors = _errors(p)
    assert any(e.startswith(f"{p}:{where}: error: ") and text in e for e in errors), errors


def test_non_finite_walk_finds_every_path() -> None:
    nan = float("nan")
    found = _non_finite({"a": [1.0, {"b": nan}], "c": float("-inf"), "d": "nan"})
    assert [p for p, _ in found] == [("a", 1, "b"), ("c",)]


def test_tiny_kspacing_refused_with_the_grid_it_would_give(tmp_path: Path) -> None:
    p = _variant(tmp_path, "kspacing: 0.3", "kspacing: 1e-320")
    joined = "\n".join(_errors(p))
    assert f"{p}:7:13: error: 1e-320 is less than the minimum of 0.01" in joined
    assert re.search(r"1e-320 gives about 10\^9\d\d k-points for structures\[0\] \(Si2\)", joined)
    assert "0.2 gives 2x2x2" in joined


def test_kspacing_30_gets_a_unit_hint_and_grids(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        BASE.replace("kspacing: 0.3", "kspacing: 30").replace(
            "structures:\n",
            "structures:\n  - bulk: {element: Si, crystal: diamond, a: 5.43, cubic: true}\n",
        )
    )
    joined = "\n".join(_errors(p))
    assert "30 is greater than the maximum of 10" in joined
    assert "1/Å, ASE's convention without 2π" in joined
    assert "30 gives 1x1x1 for structures[0] (Si8); 1x1x1 for structures[1] (Si2)" in joined
    assert "VASP KSPACING" in joined


def test_coarse_kspacing_is_a_warning_with_grids(tmp_path: Path) -> None:
    p = _variant(tmp_path, "kspacing: 0.3", "kspacing: 3")
    diags = check_recipe(p)
    assert not [d for d in diags if d.severity == "error"]
    warning = [str(d) for d in diags if "ASE's convention" in d.message]
    assert len(warning) == 1 and "3 gives 1x1x1 for structures[0] (Si2)" in warning[0]
    load_recipe(p)  # a warning does not stop the run


def test_missing_pseudo_points_to_sources_not_another_element(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        "structures:\n"
        "  - bulk: {element: Cr, crystal: bcc, a: 2.88}\n"
        "  - bulk: {element: Xe, crystal: fcc, a: 6.2}\n"
        "oracle:\n"
        "  pseudopotentials: {Cr: Cr.pbe-n-kjpaw_psl.0.1.UPF, Xe: Xe.pbe.UPF}\n"
    )
    errors = _errors(p)
    cr = next(e for e in errors if "oracle.pseudopotentials.Cr" in e)
    xe = next(e for e in errors if "oracle.pseudopotentials.Xe" in e)
    # C.pbe-n-kjpaw_psl.0.1.UPF is the closest name, but it is carbon
    assert "did you mean 'Cr.pbe-spn-kjpaw_psl.1.0.0.UPF'?" in cr and "'C." not in cr
    assert "SSSP" in xe and "pseudo-dojo" in xe.lower() and "oracle.pseudo_dir" in xe
    assert "did you mean" not in xe


def test_element_without_entry_lists_its_files_or_sources(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        "structures:\n"
        "  - bulk: {elements: [Si, C], crystal: zincblende, a: 4.36}\n"
        "  - bulk: {element: Xe, crystal: fcc, a: 6.2}\n"
        f"oracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n"
    )
    errors = _errors(p)
    c_err = next(e for e in errors if "'C'" in e)
    xe = next(e for e in errors if "'Xe'" in e)
    assert "files for C found: C." in c_err
    assert "SSSP" in xe and "Si." not in xe.split("(used by")[1]


def test_very_expensive_labels_are_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        "structures:\n"
        "  - bulk: {element: Si, crystal: diamond, a: 5.43, cubic: true, supercell: [2, 2, 2]}\n"
        f"oracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n  kspacing: 0.01\n"
        "  input_data: {system: {ecutwfc: 40}}\n"
    )
    diags = check_recipe(p)
    costly = [str(d) for d in diags if "atom·k-points" in d.message]
    assert len(costly) == 1 and f"{p}:5:13: warning: " in costly[0], costly
    assert "(Si64, 64 atoms) gets a 10x10x10 k-point grid at ecutwfc 40 Ry" in costly[0]
    assert not [d for d in diags if d.severity == "error"]
    p.write_text(p.read_text().replace("kspacing: 0.01", "kspacing: 0.2"))
    assert not [d for d in check_recipe(p) if "atom·k-points" in d.message]
