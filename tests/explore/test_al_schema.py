"""The recipe's active_learning section: defaults from the schema, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlip_autopipec.errors import RecipeError
from mlip_autopipec.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "si_active_learning.yaml"


def test_recipe_section_is_filled_from_the_schema() -> None:
    cfg = load_recipe(RECIPE).data["active_learning"]
    assert cfg["budget"] == {"iterations": 4, "pwx_calls": 80, "wall_seconds": None}
    assert cfg["survive_fraction"] == 0.99  # a schema default
    assert cfg["conditions"][0] == {"ensemble": "nvt", "temperature_K": 1000, "pressure_GPa": 0.0}


def test_without_the_section_there_is_no_loop(tmp_path: Path) -> None:
    text = RECIPE.read_text().split("active_learning:")[0]
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    assert load_recipe(path).data["active_learning"] is None


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("gamma_select: 5.0", "gamma_select: five", "active_learning.gamma_select"),
        ("ensemble: npt", "ensemble: nph", "active_learning.conditions[1].ensemble"),
        ("selection: dopt", "selection: best", "active_learning.selection"),
        ("max_selected: 6", "max_selected: 0", "active_learning.max_selected"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, old: str, new: str, where: str) -> None:
    text = RECIPE.read_text()
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert where in str(info.value)
    assert "bad.yaml:" in str(info.value)


def test_a_condition_may_have_its_own_supercell() -> None:
    from mlip_autopipec.explore.loop import condition_supercell

    cfg = load_recipe(RECIPE).data["active_learning"]
    cells = [condition_supercell(c, cfg) for c in cfg["conditions"]]
    assert cells == [[1, 1, 1], [1, 1, 1], [2, 1, 1]]  # 8-, 8- and 16-atom walkers
    assert "supercell" not in cfg["conditions"][0]  # no default: recorded conditions unchanged


def test_the_stop_rule_watches_every_condition_at_the_top_temperature() -> None:
    from mlip_autopipec.explore.loop import condition_key, hottest_conditions

    conditions = load_recipe(RECIPE).data["active_learning"]["conditions"]
    hot = hottest_conditions(conditions)
    assert hot == [conditions[0], conditions[2]]  # 1000 K, 8 and 16 atoms; not 600 K NPT
    assert condition_key({"ensemble": "nvt", "supercell": None, "temperature_K": 1000}) == (
        '{"ensemble": "nvt", "temperature_K": 1000}'
    )
