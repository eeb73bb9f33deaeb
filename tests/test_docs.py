"""The README's recipe and every shipped recipe validate: documentation that cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlip_autopipec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_recipe_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None, "README.md lost its example recipe"
    recipe = tmp_path / "readme.yaml"
    recipe.write_text(block.group(1))
    assert main(["validate", str(recipe)]) == 0
    assert f"{recipe}: ok" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(recipe)]) == 0
    assert f"{recipe}: ok" in capsys.readouterr().out


def test_readme_names_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "./bootstrap.sh quickstart" in text and "./bootstrap.sh test" in text
    assert "./bootstrap.sh test" in (ROOT / ".ci" / "run").read_text().replace("exec ", "")
