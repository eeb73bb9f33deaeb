"""validate: per-site moments that do not fit, unset magnetic elements, coarse k-grids."""

from __future__ import annotations

from pathlib import Path

from mlip_autopipec.recipe import check_recipe

FE = """\
structures:
  - bulk: {{element: Fe, crystal: bcc, a: 2.83, cubic: true}}
{magmoms}oracle:
  pseudopotentials: {{Fe: Fe.pbe-nd-rrkjus.UPF}}
  kspacing: {kspacing}
{extra}"""


def _diags(tmp_path: Path, magmoms: str = "", kspacing: float = 0.05, extra: str = "") -> list:
    path = tmp_path / "r.yaml"
    path.write_text(FE.format(magmoms=magmoms, kspacing=kspacing, extra=extra))
    return check_recipe(path)


def test_per_site_moments_must_fit_the_cell(tmp_path: Path) -> None:
    diags = _diags(tmp_path, magmoms="    magmoms: [2.2, -2.2, 2.2]\n")
    (error,) = [d for d in diags if d.severity == "error"]
    assert (error.line, error.column) == (3, 14)
    assert "magmoms has 3 values but the cell has 2 atoms" in error.message
    ok = _diags(tmp_path, magmoms="    magmoms: [2.2, -2.2]\n")
    assert not [d for d in ok if d.severity == "error"]


def test_iron_without_a_moment_is_warned(tmp_path: Path) -> None:
    diags = _diags(tmp_path)
    assert any("no initial magnetic moment for Fe" in d.message for d in diags)
    given = _diags(tmp_path, extra="  magnetism: {default_moments: {Fe: 2.2}}\n")
    assert not any("magnetic moment" in d.message for d in given)


def test_coarse_grid_warned_per_cell_unless_converged(tmp_path: Path) -> None:
    diags = _diags(tmp_path, magmoms="    magmoms: {Fe: 2.2}\n", kspacing=0.2)
    coarse = [d for d in diags if "k-points per reciprocal atom" in d.message]
    assert len(coarse) == 1 and coarse[0].severity == "warning"
    assert "structures[0]: Fe2 (2 atoms" in coarse[0].message and "2x2x2" in coarse[0].message
    converged = _diags(
        tmp_path, magmoms="    magmoms: {Fe: 2.2}\n", kspacing=0.2, extra="  converge: {}\n"
    )
    assert not [d for d in converged if "k-points per reciprocal atom" in d.message]
    assert not [d for d in converged if d.severity == "error"]
