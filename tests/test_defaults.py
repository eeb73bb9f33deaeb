"""Defaults live only in the schema (issue 12: "no default value appears twice").

Code reads the filled-in recipe (``load_recipe`` fills every schema default) or, where it
must accept a partial section (the API, validation of a raw recipe), asks the schema
(``recipe.schema.schema_default``). These tests fail when code re-declares a schema default:
a ``.get(key, value)`` / ``.get(key) or value`` / ``.setdefault(key, value)`` whose value
equals the schema's default for a key of that name, and typed settings objects whose fields
carry their own defaults.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from typing import Any

import mlip_autopipec
from mlip_autopipec.execution.parsl_engine import ParslSettings, parse_parsl_settings, parsl_schema
from mlip_autopipec.recipe.schema import load_schema, schema_default

SRC = Path(mlip_autopipec.__file__).parent

#: Values that mean "nothing given" rather than a chosen setting: not counted.
NEUTRAL = (None, "", False, 0, 0.0, {}, [], ())

#: Re-declarations still allowed (file, key): none left.
KNOWN: frozenset[tuple[str, str]] = frozenset()


def schema_defaults() -> dict[str, list[Any]]:
    """Every property name in the schema -> the defaults the schema gives it."""
    out: dict[str, list[Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    out.setdefault(key, []).append(sub["default"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema())
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _neutral(value: Any) -> bool:
    return any(_same(value, n) for n in NEUTRAL)


def redeclared() -> set[tuple[str, str, int]]:
    """(file, key, line) of every schema default written again in the package's code."""
    defaults = schema_defaults()
    trees = {p: ast.parse(p.read_text()) for p in SRC.rglob("*.py")}
    constants: dict[str, Any] = {}  # module-level NAME = literal, across the package
    for tree in trees.values():
        for node in tree.body:
            target = (
                node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            )
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and value is not None:
                try:
                    constants[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass

    def literal(node: ast.expr) -> tuple[bool, Any]:
        try:
            return True, ast.literal_eval(node)
        except ValueError:
            name = getattr(node, "id", None) or getattr(node, "attr", None)
            return (True, constants[name]) if name in constants else (False, None)

    found = set()
    for path, tree in trees.items():
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(tree):
            pairs: list[tuple[ast.expr, ast.expr]] = []
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault", "pop")
                and len(node.args) == 2
            ):
                pairs.append((node.args[0], node.args[1]))
            if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
                first = node.values[0]
                if (
                    isinstance(first, ast.Call)
                    and isinstance(first.func, ast.Attribute)
                    and first.func.attr == "get"
                    and len(first.args) == 1
                ):
                    pairs.append((first.args[0], node.values[-1]))
            for key_node, value_node in pairs:
                if not isinstance(key_node, ast.Constant) or key_node.value not in defaults:
                    continue
                ok, value = literal(value_node)
                if (
                    ok
                    and not _neutral(value)
                    and any(_same(value, d) for d in defaults[key_node.value])
                ):
                    found.add((rel, str(key_node.value), node.lineno))
    return found


def test_no_schema_default_is_written_again_in_code() -> None:
    new = sorted(f for f in redeclared() if f[:2] not in KNOWN)
    assert not new, (
        "schema defaults re-declared in code (read the filled recipe or "
        f"recipe.schema.schema_default instead): {new}"
    )


def test_the_scan_finds_a_re_declared_default(tmp_path: Path, monkeypatch: Any) -> None:
    """The scan is not vacuous: a planted ``.get("min_distance", 0.5)`` is caught."""
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "planted.py").write_text(
        "D = 0.5\n\n\ndef f(cfg):\n"
        "    return cfg.get('min_distance', D), cfg.get('command') or 'pw.x'\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert {(f, k) for f, k, _ in redeclared()} == {
        ("planted.py", "min_distance"),
        ("planted.py", "command"),
    }


def test_parsl_settings_fields_have_no_defaults_and_fill_from_the_schema() -> None:
    fields = dataclasses.fields(ParslSettings)
    with_default = [
        f.name
        for f in fields
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert with_default == []
    settings = parse_parsl_settings({})
    for key, sub in parsl_schema()["properties"].items():
        assert getattr(settings, key) == sub["default"], key


def test_schema_default_reads_nested_keys() -> None:
    assert (
        schema_default("oracle", "retry", "max_attempts")
        == (
            load_schema()["properties"]["oracle"]["properties"]["retry"]["properties"][
                "max_attempts"
            ]["default"]
        )
    )
    assert schema_default("execution", "engine") == "local"
