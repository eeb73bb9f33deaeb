"""The recipe JSON schema: loading, default filling, located error messages, reference docs.

The schema (``mlip_autopipec/schemas/recipe.schema.json``) is the single definition of a
recipe. Two non-standard annotations are used (2020-12 ignores unknown keywords):
``x-error`` replaces jsonschema's message for ``pattern``/``not``/``oneOf`` failures of that
subschema, and ``x-default-unless: key`` skips a default when the sibling ``key`` is given
(``kspacing`` is not defaulted when ``kpts`` is given).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from mlip_autopipec.errors import Diagnostic
from mlip_autopipec.recipe._yaml import Path_, Positions

_X_ERROR_VALIDATORS = {"pattern", "not", "oneOf", "anyOf"}


@functools.cache
def _schema_text() -> str:
    return (
        resources.files("mlip_autopipec")
        .joinpath("schemas", "recipe.schema.json")
        .read_text(encoding="utf-8")
    )


def load_schema() -> dict[str, Any]:
    """The recipe JSON schema (Draft 2020-12), read from the installed package."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def _is_integer(_: Any, instance: Any) -> bool:
    # JSON Schema counts 3.0 as an integer; a recipe's integers are written as integers
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(_: Any, instance: Any) -> bool:
    # .nan passes every bound (all comparisons are false) and .inf means "no limit": neither
    # is a number a recipe can mean
    return (
        isinstance(instance, int | float)
        and not isinstance(instance, bool)
        and math.isfinite(float(instance) if isinstance(instance, float) else 0.0)
    )


_RecipeValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}
    ),
)


@functools.cache
def _validator() -> Any:
    return _RecipeValidator(load_schema())


def non_finite_message(value: float) -> str:
    """The one message for a .nan/.inf anywhere in a recipe."""
    shown = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return f"{shown} is not a finite number; give a value (every number in a recipe is finite)"


def dotted(path: Sequence[str | int]) -> str:
    """``("structures", 0, "bulk", "a")`` -> ``structures[0].bulk.a``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    return f"; did you mean {close[0]!r}?" if close else ""


def schema_default(*path: str) -> Any:
    """A copy of the schema's default of the key at ``path`` (property names from the root),
    for code that must read a setting from a section the caller may have left partial (the
    API, validation of a raw recipe): the default is then still written only in the schema.

    A name is looked up in the node's ``properties``, else in its ``items``,
    ``additionalProperties`` and ``oneOf``/``anyOf``/``allOf`` branches (the first that has
    it): ``schema_default("trainer", "physics_baseline", "inner_fraction")`` finds the ZBL
    branch. A path may start at ``"$defs", name``.
    """
    return copy.deepcopy(_default_at(tuple(path)))


@functools.lru_cache(maxsize=256)
def _default_at(path: tuple[str, ...]) -> Any:
    root = load_schema()
    node: Any = root
    if path[:1] == ("$defs",):
        node, path = root["$defs"][path[1]], path[2:]
    for key in path:
        node = _child(node, key, root)
    return _resolve(node, root)["default"]


def _child(node: Any, key: str, root: dict[str, Any]) -> Any:
    node = _resolve(node, root)
    if not isinstance(node, dict):
        raise KeyError(key)
    props = node.get("properties") or {}
    if key in props:
        return props[key]
    subs = [node.get("items"), node.get("additionalProperties")]
    for combinator in ("oneOf", "anyOf", "allOf"):
        subs.extend(node.get(combinator) or [])
    for sub in subs:
        if isinstance(sub, dict):
            try:
                return _child(sub, key, root)
            except KeyError:
                continue
    raise KeyError(key)


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def branch_matches(branch: dict[str, Any], instance: Any) -> bool:
    """Whether ``instance`` is *meant* for this oneOf branch (by a const key or a required key)."""
    if not isinstance(instance, dict):
        return False
    for key, sub in branch.get("properties", {}).items():
        if isinstance(sub, dict) and "const" in sub:
            return bool(instance.get(key) == sub["const"])
    required = branch.get("required", [])
    return bool(required) and required[0] in instance


def fill_defaults(instance: Any, schema: dict[str, Any] | None = None) -> Any:
    """Fill schema defaults into ``instance`` in place (recursively) and return it.

    Assumes the instance is valid; subschemas of oneOf are followed by :func:`branch_matches`.
    """
    root = load_schema()
    _fill(instance, root if schema is None else schema, root)
    return instance


def _fill(instance: Any, schema: Any, root: dict[str, Any]) -> None:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key in instance or not isinstance(sub, dict) or "default" not in sub:
                continue
            unless = sub.get("x-default-unless")
            if unless is not None and unless in instance:
                continue
            instance[key] = copy.deepcopy(sub["default"])
        for key, value in instance.items():
            if key in props:
                _fill(value, props[key], root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill(item, schema["items"], root)
    for word in ("oneOf", "anyOf"):
        for branch in schema.get(word, []):
            if branch_matches(_resolve(branch, root), instance):
                _fill(instance, branch, root)


def schema_diagnostics(data: Any, pos: Positions, display: str) -> list[Diagnostic]:
    """Every schema violation of ``data``, located via ``pos``."""
    out: set[Diagnostic] = set()
    for err in _validator().iter_errors(data):
        out.update(_explain(err, pos, display))
    return sorted(out)


def _diag(display: str, where: tuple[int, int], message: str, path: Path_) -> Diagnostic:
    suffix = f" (at {dotted(path)})" if path else ""
    return Diagnostic(display, where[0], where[1], message + suffix)


def _explain(err: ValidationError, pos: Positions, display: str) -> Iterator[Diagnostic]:
    path: Path_ = tuple(err.absolute_path)
    inst = err.instance
    schema = err.schema if isinstance(err.schema, dict) else {}
    kind = err.validator
    x_error = schema.get("x-error") if kind in _X_ERROR_VALIDATORS else None

    if kind == "additionalProperties" and isinstance(inst, dict):
        known = list(schema.get("properties", {}))
        for key in inst:
            if key not in known:
                hint = (
                    _pw_variable_hint(key, path)
                    or did_you_mean(key, known)
                    or (f"; valid keys: {', '.join(known)}" if known else "")
                )
                yield _diag(
                    display, pos.at((*path, key), key=True), f"unknown key {key!r}{hint}", path
                )
        return
    if kind == "required" and isinstance(inst, dict):
        for key in err.validator_value:
            if key not in inst:
                where = f" in {dotted(path)!r}" if path else ""
                yield Diagnostic(display, *pos.parent(path), f"missing required key {key!r}{where}")
        return
    if "propertyNames" in err.relative_schema_path and isinstance(inst, str):
        message = x_error or err.message
        yield _diag(display, pos.at((*path, inst), key=True), f"key {inst!r}: {message}", path)
        return
    if kind == "not" and x_error:
        keys = (
            err.validator_value.get("required", []) if isinstance(err.validator_value, dict) else []
        )
        located = [
            pos.at((*path, k), key=True) for k in keys if isinstance(inst, dict) and k in inst
        ]
        yield _diag(display, max(located) if located else pos.parent(path), x_error, path)
        return
    if kind in ("oneOf", "anyOf"):
        yield from _explain_choice(err, path, pos, display, x_error)
        return
    if kind in ("enum", "const") and isinstance(inst, str):
        choices = err.validator_value if kind == "enum" else [err.validator_value]
        hint = did_you_mean(inst, [c for c in choices if isinstance(c, str)])
        yield _diag(display, pos.at(path), err.message + hint, path)
        return
    message = x_error or err.message
    if kind == "type" and isinstance(inst, float) and not math.isfinite(inst):
        yield _diag(display, pos.at(path), non_finite_message(inst), path)
        return
    expected_types = err.validator_value if kind == "type" else None
    if (
        isinstance(inst, float)
        and inst.is_integer()
        and expected_types is not None
        and "integer" in ([expected_types] if isinstance(expected_types, str) else expected_types)
    ):
        message = f"expected an integer, got {inst!r} (write {int(inst)}, without '.0')"
    if kind == "type" and isinstance(inst, dict | list):
        expected = err.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        got = "mapping" if isinstance(inst, dict) else "list"
        message = f"expected {expected}, got a {got}"
    if x_error and isinstance(inst, str | int | float):
        message = f"{inst!r}: {x_error}"
    yield _diag(display, pos.at(path), message, path)


def _pw_variable_hint(key: str, path: Path_) -> str:
    """Where a pw.x variable written at the wrong level of the recipe belongs."""
    if tuple(path) not in ((), ("oracle",), ("oracle", "input_data")):
        return ""
    from mlip_autopipec.recipe.namelists import home_of  # namelists imports this module

    if key in ("kspacing", "kpts", "pseudopotentials") or key.lower() in ("a", "b", "c"):
        return ""
    home = home_of(key)
    if home is None:
        return ""
    return f": {key} is a pw.x &{home.upper()} variable, it belongs under oracle.input_data.{home}"


def _explain_choice(
    err: ValidationError, path: Path_, pos: Positions, display: str, x_error: str | None
) -> Iterator[Diagnostic]:
    inst = err.instance
    if x_error:
        yield _diag(display, pos.parent(path), x_error, path)
        return
    branches = [b for b in err.validator_value if isinstance(b, dict)]
    if isinstance(inst, dict) and branches:
        matching = [i for i, b in enumerate(branches) if branch_matches(b, inst)]
        if len(matching) == 1:
            for sub in err.context or []:
                if sub.relative_schema_path and sub.relative_schema_path[0] == matching[0]:
                    yield from _explain(sub, pos, display)
            return
        const_keys = {
            k
            for b in branches
            for k, s in b.get("properties", {}).items()
            if isinstance(s, dict) and "const" in s
        }
        if const_keys:
            key = sorted(const_keys)[0]
            choices = [
                str(b["properties"][key]["const"])
                for b in branches
                if key in b.get("properties", {})
            ]
            if key not in inst:
                yield Diagnostic(
                    display, *pos.parent(path), f"missing required key {key!r} in {dotted(path)!r}"
                )
                return
            value = inst[key]
            hint = did_you_mean(str(value), choices)
            yield _diag(
                display,
                pos.at((*path, key)),
                f"unknown {key} {value!r}, expected one of {', '.join(map(repr, choices))}{hint}",
                (*path, key),
            )
            return
        discriminators = [b["required"][0] for b in branches if b.get("required")]
        if len(matching) > 1:
            yield _diag(
                display,
                pos.parent(path),
                "give only one of " + " or ".join(map(repr, discriminators)) + " per entry",
                path,
            )
            return
        known = sorted({k for b in branches for k in b.get("properties", {})})
        unknown = [k for k in inst if k not in known]
        for key in unknown:
            hint = did_you_mean(key, discriminators) or did_you_mean(key, known)
            yield _diag(display, pos.at((*path, key), key=True), f"unknown key {key!r}{hint}", path)
        yield _diag(
            display,
            pos.parent(path),
            "an entry needs one of " + " or ".join(map(repr, discriminators)),
            path,
        )
        return
    best = best_match(err.context or [])
    if best is None:
        yield _diag(display, pos.at(path), err.message, path)
    else:
        yield from _explain(best, pos, display)


# ---------------------------------------------------------------------------------------------
# reference documentation


def _type_of(schema: Any, root: dict[str, Any]) -> str:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return ""
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "oneOf" in schema and "type" not in schema:
        titles = [b.get("title") for b in schema["oneOf"] if isinstance(b, dict)]
        if all(titles):
            return "mapping: " + " or ".join(str(t) for t in titles)
        return " or ".join(filter(None, (_type_of(b, root) for b in schema["oneOf"])))
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    words = []
    for k in kinds:
        if k == "array":
            item = _type_of(schema.get("items", {}), root)
            words.append(f"list of {item}" if item else "list")
        elif k == "object":
            words.append("mapping")
        else:
            words.append(str(k))
    return " or ".join(words)


def _rows(schema: Any, root: dict[str, Any], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        sub_r = _resolve(sub, root)
        name = f"{prefix}.{key}" if prefix else key
        default = json.dumps(sub_r["default"]) if "default" in sub_r else ""
        if not default and sub_r.get("x-default-unless"):
            default = ""
        required = key in schema.get("required", [])
        desc = sub_r.get("description", "")
        if required:
            desc = "**Required.** " + desc
        yield name, _type_of(sub_r, root), default, desc
        if sub_r.get("type") == "object" or "properties" in sub_r:
            yield from _rows(sub_r, root, name)
        items = _resolve(sub_r.get("items"), root)
        if "$ref" not in sub and isinstance(items, dict) and "properties" in items:
            yield from _rows(items, root, f"{name}[]")
        add = _resolve(sub_r.get("additionalProperties"), root)
        if isinstance(add, dict) and "properties" in add:
            yield from _rows(add, root, f"{name}.<key>")
        for branch in sub_r.get("oneOf", []):
            branch = _resolve(branch, root)
            if isinstance(branch, dict) and "properties" in branch and "title" in branch:
                yield from _rows(branch, root, f"{name} ({branch['title']})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def schema_reference() -> str:
    """Markdown reference of every recipe key, rendered from the schema's descriptions."""
    root = load_schema()
    lines = [
        "# Recipe reference",
        "",
        "<!-- Generated from src/mlip_autopipec/schemas/recipe.schema.json by "
        "`autopipec schema`; do not edit by hand. -->",
        "",
        root.get("description", ""),
        "",
        "`autopipec validate RECIPE` checks a recipe against this schema and then:",
        "",
        *(f"- {line}" for line in _SEMANTIC_CHECKS),
        "",
        "Every problem is printed as `file:line:column: error: message`; warnings do not stop",
        "a run.",
        "",
    ]
    for key, sub in root["properties"].items():
        sub = _resolve(sub, root)
        lines += [f"## `{key}`", "", sub.get("description", ""), ""]
        rows = list(_rows({"properties": {key: sub}}, root, ""))[1:]
        sub_items = _resolve(sub.get("items"), root)
        if isinstance(sub_items, dict):
            for branch in sub_items.get("oneOf", []):
                branch = _resolve(branch, root)
                lines += [f"### {branch.get('title', '')}", "", branch.get("description", ""), ""]
                lines += _table(list(_rows(branch, root, f"{key}[]")))
        if rows:
            lines += _table(rows)
        if key == "oracle":
            step = root["$defs"]["ladder"]["items"]
            lines += ["### Retry step", "", step["description"], ""]
            lines += _table(list(_rows(step, root, "step")))
    return "\n".join(lines).rstrip() + "\n"


_SEMANTIC_CHECKS = (
    "every structure file exists, is read by ASE (with `index` applied) and has a 3D cell;",
    "every `bulk` entry is built by `ase.build.bulk`; `strain.min` <= `strain.max`;",
    "every element of the structures has a pseudopotential that exists, is readable, and is "
    "for that element (a `.UPF.gz` is fine); a cutoff below the file's suggestion is a warning;",
    "`trainer.elements`, if given, equals the elements of the structures;",
    "keys under `oracle.input_data` and in retry steps are exact pw.x 6.7 variables of that "
    "namelist (an integer index only on arrays, e.g. `Hubbard_U(1)`), with a suggestion for "
    "typos; values are scalars of the variable's type, strings a plain word (no quotes, `/`, "
    "`&`, `!`, `,`, newlines); keys autopipec sets itself (`outdir`, `prefix`, `max_seconds`, "
    "`calculation` other than `scf`, ...) are refused in every spelling;",
    "`ecutrho` > `ecutwfc` (a warning below 4 × `ecutwfc`); retry `match` is a regular expression;",
    "atoms closer than `oracle.min_distance` are a warning (those structures are quarantined);",
    "no number is `.nan`/`.inf`; integers are written as integers (`3`, not `3.0`);",
    "structure files are regular files (not FIFOs, devices or directories) within "
    "`limits.max_file_mb`; no structure has more than `limits.max_atoms` atoms (counted "
    "before a supercell is built), all together at most `limits.max_total_atoms`; a file "
    "ASE cannot parse is named with its reader and line, never its content;",
    "a `kspacing` above 1 or below 0.01 gets its unit explained with the grid each cell "
    "would get; a label above 20 000 atom·k-points (scaled by (ecutwfc/30 Ry)^1.5) is a warning;",
    "every retry step can be applied to the recipe (a `scale` needs a value: set in the "
    "recipe or a pw.x default);",
    "a `oracle.command` not on PATH is a warning.",
)


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, kind, default, desc in rows:
        default_cell = f"`{default}`" if default else ""
        out.append(f"| `{name}` | {_cell(kind)} | {_cell(default_cell)} | {_cell(desc)} |")
    return [*out, ""]


def invalid_sections(data: Any) -> set[str]:
    """Top-level keys with schema errors below them (``""`` for errors at the top level)."""
    out: set[str] = set()
    for err in _validator().iter_errors(data):
        path = list(err.absolute_path)
        out.add(str(path[0]) if path else "")
    return out
