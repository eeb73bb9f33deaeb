"""The schema itself, the generated reference, and random mutations of a valid recipe."""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from mlip_autopipec.cli import main
from mlip_autopipec.recipe import check_recipe, load_schema, schema_reference
from mlip_autopipec.recipe.schema import fill_defaults

ROOT = Path(__file__).resolve().parents[2]


def _subschemas(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, property schema) pair below ``schema``."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(schema, dict):
        return out
    for key, sub in schema.get("properties", {}).items():
        out.append((f"{path}.{key}", sub))
        out += _subschemas(sub, f"{path}.{key}")
    for word in ("items", "additionalProperties"):
        out += _subschemas(schema.get(word), f"{path}[{word}]")
    for word in ("oneOf", "anyOf"):
        for i, sub in enumerate(schema.get(word, [])):
            out += _subschemas(sub, f"{path}<{word}{i}>")
    for name, sub in schema.get("$defs", {}).items():
        out += _subschemas(sub, f"$defs.{name}")
    return out


def test_schema_is_valid_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_property_is_described() -> None:
    missing = [
        p for p, s in _subschemas(load_schema()) if "description" not in s and "$ref" not in s
    ]
    assert missing == []


def test_objects_refuse_unknown_keys() -> None:
    # every mapping whose keys are ours must reject typos; pass-through ones are pw.x
    # namelists (checked against ASE's key lists) and element/ladder-key maps
    passthrough = (
        "control",
        "system",
        "electrons",
        "ions",
        "cell",
        "pseudopotentials",
        "set",
        "scale",
        "only_if",
    )
    for path, sub in _subschemas(load_schema()):
        if sub.get("type") == "object" and not path.endswith(passthrough):
            assert sub.get("additionalProperties") is False, path


def test_schema_is_read_from_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_schema()["title"] == "mlip-autopipec recipe"
    top = ROOT / "schemas" / "recipe.schema.json"
    assert top.is_symlink()
    assert top.resolve() == (ROOT / "src" / "mlip_autopipec" / "schemas" / "recipe.schema.json")


def test_reference_doc_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert committed == schema_reference(), (
        "regenerate: autopipec schema > docs/recipe-reference.md"
    )


def test_reference_lists_every_key() -> None:
    text = schema_reference()
    for key in (
        "oracle.kspacing",
        "oracle.retry.ladders",
        "trainer.physics_baseline (LJ).sigma",
        "structures[].rattle.seed",
        "execution.parsl.walltime",
        "step.restart",
    ):
        assert f"`{key}`" in text


def test_schema_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_reference()
    assert main(["schema", "--json"]) == 0
    assert '"$schema"' in capsys.readouterr().out


def test_defaults_are_valid() -> None:
    recipe: dict[str, Any] = {
        "structures": [{"bulk": {"element": "Si", "crystal": "diamond", "a": 5.43}}],
        "oracle": {"pseudopotentials": {"Si": "Si.UPF"}},
    }
    filled = fill_defaults(copy.deepcopy(recipe))
    assert list(Draft202012Validator(load_schema()).iter_errors(filled)) == []
    assert filled["trainer"]["physics_baseline"] == {"type": "none"}
    assert filled["execution"]["parsl"]["walltime"] == "01:00:00"


# --- property test: mutations of a valid recipe ------------------------------------------

VALID: dict[str, Any] = {
    "name": "prop",
    "structures": [
        {
            "bulk": {"element": "Si", "crystal": "diamond", "a": 5.43},
            "strain": {"min": -0.01, "max": 0.01, "count": 2},
            "rattle": {"stdev": 0.05, "count": 1, "seed": 3},
        }
    ],
    "oracle": {
        "pseudopotentials": {"Si": "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"},
        "kspacing": 0.3,
        "input_data": {"system": {"ecutwfc": 30}, "electrons": {"mixing_beta": 0.5}},
        "retry": {"max_attempts": 3, "ladders": {"crashed": [{"restart": "scratch"}]}},
    },
    "trainer": {"cutoff": 5.0, "elements": ["Si"], "physics_baseline": {"type": "none"}},
    "execution": {"engine": "local", "workers": 1},
}
_VALIDATOR = Draft202012Validator(load_schema())


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    paths = [p for p in _paths(data) if p]
    target = draw(st.sampled_from(paths))
    parent = _get(data, target[:-1])
    kind = draw(st.sampled_from(["drop", "replace", "unknown_key"]))
    if kind == "drop":
        if isinstance(parent, dict):
            del parent[target[-1]]
        else:
            parent.pop(target[-1])
    elif kind == "replace":
        parent[target[-1]] = draw(scalars)
    else:
        holder = _get(data, target) if isinstance(_get(data, target), dict) else parent
        if isinstance(holder, dict):
            holder[draw(st.text(min_size=1, max_size=10))] = draw(scalars)
    return data


@settings(
    max_examples=int(os.environ.get("RECIPE_HYPOTHESIS_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated())
def test_mutations_give_located_errors(data: dict[str, Any], tmp_path: Path) -> None:
    buf = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(data, buf)
    text = buf.getvalue()
    path = tmp_path / "mutant.yaml"
    path.write_text(text, encoding="utf-8")
    n_lines = len(text.splitlines())
    diagnostics = check_recipe(path)  # must never raise
    for d in diagnostics:
        assert d.path == str(path)
        assert 1 <= d.line <= max(n_lines, 1) + 1 and d.column >= 1, d
        assert "internal error" not in d.message
    if not _VALIDATOR.is_valid(data):
        assert any(d.severity == "error" for d in diagnostics), (text, diagnostics)


def test_unmutated_recipe_is_valid(tmp_path: Path) -> None:
    if not os.path.isfile("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF"):
        pytest.skip("Debian quantum-espresso-data pseudopotentials not installed")
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(VALID, buf)
    (tmp_path / "r.yaml").write_text(buf.getvalue())
    assert [d for d in check_recipe(tmp_path / "r.yaml") if d.severity == "error"] == []
