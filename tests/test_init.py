"""``autopipec init``: the starter recipe validates; editor support for every shipped recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlip_autopipec.cli import main
from mlip_autopipec.init import choose_pseudopotentials, schema_path, starter_recipe
from mlip_autopipec.recipe import check_recipe, load_recipe, load_schema
from mlip_autopipec.recipe.pseudo import SYSTEM_PSEUDO_DIR

ROOT = Path(__file__).resolve().parents[1]
needs_debian_pseudos = pytest.mark.skipif(
    not (SYSTEM_PSEUDO_DIR / "Si.pbe-nl-rrkjus_psl.1.0.0.UPF").is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)


@needs_debian_pseudos
@pytest.mark.parametrize("elements", [["Si"], ["Fe", "Al"], ["Si", "C"], ["H", "O"]])
def test_starter_recipe_validates(
    tmp_path: Path, elements: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "recipe.yaml"
    assert main(["init", *elements, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    errors = [d for d in check_recipe(out) if d.severity == "error"]
    assert errors == []
    recipe = load_recipe(out)
    assert recipe.trainer["elements"] == elements
    assert set(recipe.oracle["pseudopotentials"]) == set(elements)
    text = out.read_text()
    assert text.splitlines()[0] == f"# yaml-language-server: $schema={schema_path()}"
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5  # commented


def test_one_functional_for_every_element(tmp_path: Path) -> None:
    for name in ("Fe.pbe-nd-rrkjus.UPF", "Fe.pz-nd-rrkjus.UPF", "Al.pz-vbc.UPF", "Al_ONCV.upf"):
        (tmp_path / name).write_text("<UPF>")
    chosen, xc = choose_pseudopotentials(["Fe", "Al"], [tmp_path])
    assert xc == "pz"  # PBE is preferred but Al has none: both get pz
    assert {k: v.name if v else None for k, v in chosen.items()} == {
        "Fe": "Fe.pz-nd-rrkjus.UPF",
        "Al": "Al.pz-vbc.UPF",
    }
    chosen, xc = choose_pseudopotentials(["Fe", "Zr"], [tmp_path])
    assert chosen["Zr"] is None and chosen["Fe"] is not None


def test_missing_pseudopotential_is_a_placeholder_that_says_so(tmp_path: Path) -> None:
    text = starter_recipe(["Si"], pseudo_dir=tmp_path)  # an empty library, then the system one
    assert "pseudo_dir" in text
    empty = starter_recipe(["Og"], pseudo_dir=tmp_path)
    assert "Og: Og.UPF   # FILL IN" in empty


def test_bad_elements_and_existing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "Si", "Xx", "-o", str(tmp_path / "r.yaml")]) == 2
    assert "not elements: 'Xx'" in capsys.readouterr().err
    existing = tmp_path / "mine.yaml"
    existing.write_text("precious")
    assert main(["init", "Si", "-o", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_text() == "precious"
    assert main(["init", "Si", "-o", str(existing), "--force"]) == 0
    assert existing.read_text() != "precious"


def test_schema_has_id_and_title_and_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    schema = load_schema()
    assert schema["$id"].endswith("recipe.schema.json") and schema["title"]
    assert main(["schema", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == schema


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_point_editors_at_the_schema(recipe: Path) -> None:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (recipe.parent / first.split("$schema=", 1)[1]).resolve()
    assert target == (ROOT / "src" / "mlip_autopipec" / "schemas" / "recipe.schema.json")
