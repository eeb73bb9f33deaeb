"""validate warns when kspacing gives one family of cells different k-point grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlip_autopipec.recipe import check_recipe

RECIPE = """\
name: kgrid
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.03, max: 0.03, count: 3}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: {kspacing}
"""


def _warnings(tmp_path: Path, kspacing: float) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(kspacing=kspacing))
    diags = check_recipe(path)
    assert not [d for d in diags if d.severity == "error"]
    return [str(d) for d in diags if "k-point grids" in d.message]


def test_grid_switch_inside_a_strain_range_is_located(tmp_path: Path) -> None:
    # |b| = sqrt(3)/5.43 = 0.319 1/Å: at 0.16 the -3% cell gets 3x3x3, the others 2x2x2
    (warning,) = _warnings(tmp_path, 0.16)
    assert ":4:13: warning:" in warning  # the strain mapping of that structures entry
    assert "2x2x2 (strain +0.000)" in warning and "3x3x3 (strain -0.030)" in warning


@pytest.mark.parametrize("kspacing", [0.15, 0.5])
def test_one_grid_for_the_whole_range_is_quiet(tmp_path: Path, kspacing: float) -> None:
    assert _warnings(tmp_path, kspacing) == []
