"""A recipe fuzzer: mutated shipped recipes never raise, never hang, and what is accepted
really satisfies the recipe invariants (pw.x keys whitelisted, numbers finite, integers
integers, every retry step applicable, the schema holds for the filled-in recipe)."""

from __future__ import annotations

import copy
import io
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from mlip_autopipec.oracle.ladder import apply_step, base_params
from mlip_autopipec.recipe import check_recipe
from mlip_autopipec.recipe._yaml import load_yaml
from mlip_autopipec.recipe.namelists import check_key, check_namelists
from mlip_autopipec.recipe.schema import _validator
from mlip_autopipec.recipe.validate import _guard, _run


def _run_checks(path: Path):  # type: ignore[no-untyped-def]
    return _guard(_run, path)


ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
pytestmark = pytest.mark.skipif(
    not Path("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF").is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)
#: A check of one recipe taking longer than this is a hang (seconds, generous for load).
HANG = 120


def _absolute_files(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for entry in data.get("structures", []):
        if "file" in entry and not Path(entry["file"]).is_absolute():
            entry["file"] = str(base / entry["file"])
    return data


BASES = [_absolute_files(load_yaml(p, str(p))[0], p.parent) for p in SHIPPED]

INJECTIONS = [
    "x'\n/\n&control\n calculation='relax'\n/",
    "disk_io(1:3)='low', calculation='relax', outdir='/x', disk_io(1:3)",
    "mixing_beta=0.1,calculation",
    "OUTDIR",
    " outdir",
    "max_seconds(1)",
    "starting_magnetization(1)",
    "Hubbard_U(1)",
    "ecutwfc",
    "$(touch /tmp/pwned)",
    "; rm -rf /",
    "../../etc/passwd",
    "/dev/zero",
    "\u00e9\u4e2d\u0000\ufeff",
    "",
    "a" * 300,
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 3.0, 2.0, 1e-320, 1e308, -1e308, 1e30, 0.5, 1e-12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(INJECTIONS),
    st.text(max_size=20),
)
GARBAGE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=8)), inner, max_size=3
        ),
    ),
    max_leaves=6,
)


def _paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*path, i))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path[:-1]:
        data = data[p]
    return data


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        op = draw(st.sampled_from(["replace", "delete", "add", "rename", "nest"]))
        last = path[-1]
        if op == "replace":
            parent[last] = draw(GARBAGE)
        elif op == "delete":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(INJECTIONS) | st.text(max_size=8))] = draw(GARBAGE)
        elif op == "add" and isinstance(parent, list):
            parent.append(draw(GARBAGE))
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(INJECTIONS) | st.text(max_size=8))] = parent.pop(last)
        elif op == "nest":
            parent[last] = {draw(st.sampled_from(INJECTIONS)): parent[last]}
    # the pw.x corners a random walk rarely reaches
    if draw(st.booleans()) and isinstance(data.get("oracle"), dict):
        oracle = data["oracle"]
        target = draw(st.sampled_from(["input_data", "ladder"]))
        key = draw(st.sampled_from(INJECTIONS))
        value = draw(SCALARS)
        section = draw(st.sampled_from(["control", "system", "electrons", "ions", "cell"]))
        if target == "input_data" and isinstance(oracle.get("input_data", {}), dict):
            oracle.setdefault("input_data", {}).setdefault(section, {})
            if isinstance(oracle["input_data"][section], dict):
                oracle["input_data"][section][key] = value
        elif isinstance(oracle.get("retry", {}), dict):
            verb = draw(st.sampled_from(["set", "scale", "only_if"]))
            oracle["retry"] = {
                "ladders": {"scf_not_converged": [{verb: {f"{section}.{key}": value}}]}
            }
    return data


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def _dump(data: Any) -> str:
    yaml = YAML(typ="safe")
    yaml.allow_unicode = True
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _finite(data: Any) -> bool:
    if isinstance(data, float):
        return math.isfinite(data)
    if isinstance(data, dict):
        return all(_finite(v) for v in data.values())
    if isinstance(data, list):
        return all(_finite(v) for v in data)
    return True


def _check_one(tmp: Path, data: dict[str, Any]) -> None:
    path = tmp / "fuzz.yaml"
    path.write_text(_dump(data), encoding="utf-8")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG)
    try:
        diags, recipe = _run_checks(path)  # what check_recipe and load_recipe both run
    except _Hang:
        pytest.fail(f"check_recipe hung on:\n{path.read_text()}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # check_recipe turns an unexpected exception into an "internal error" diagnostic
    assert not [d for d in diags if "internal error" in d.message], [str(d) for d in diags]
    if any(d.severity == "error" for d in diags):
        assert recipe is None
        return
    assert recipe is not None
    filled = recipe.data
    assert _finite(filled)
    # the filled-in recipe satisfies the (strict) schema: integers are ints, bounds hold
    assert [e.message for e in _validator().iter_errors(filled)] == []
    oracle = filled["oracle"]
    assert check_namelists(oracle["input_data"]) == []
    base = base_params(oracle)
    for steps in oracle["retry"]["ladders"].values():
        for step in steps:
            for verb in ("set", "scale", "only_if"):
                for name in step.get(verb) or {}:
                    section, key = name.split(".", 1)
                    assert check_key(section, key) is None, name
            apply_step(base, step)


_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=200, **_SETTINGS)  # type: ignore[arg-type]
@given(mutated())
def test_fuzz_recipes(tmp_path: Path, data: dict[str, Any]) -> None:
    _check_one(tmp_path, data)


@pytest.mark.long
@settings(max_examples=1000, **_SETTINGS)  # type: ignore[arg-type]
@given(mutated())
def test_fuzz_recipes_long(tmp_path: Path, data: dict[str, Any]) -> None:
    _check_one(tmp_path, data)


def test_shipped_recipes_are_accepted(tmp_path: Path) -> None:
    """The fuzzer's seeds are valid, so mutations start from accepted recipes."""
    for data in BASES:
        _check_one(tmp_path, copy.deepcopy(data))
        path = tmp_path / "fuzz.yaml"
        assert not [d for d in check_recipe(path) if d.severity == "error"]


HOSTILE = {
    "injection": "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
    "oracle:\n  pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}\n"
    "  input_data: {control: {\"outdir='/x', calculation\": relax}}\n",
    "nan": "structures: [{bulk: {element: Si, crystal: diamond, a: .nan}}]\n"
    "oracle: {pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}, timeout: .nan}\n",
    "dev-zero": "structures: [{file: /dev/zero, format: extxyz}]\n"
    "oracle: {pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}}\n",
    "supercell": "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43, "
    "supercell: [[100, 0, 0], [0, 100, 0], [0, 0, 100]]}}]\n"
    "oracle: {pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}}\n",
    "scale-unset": "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
    "oracle:\n  pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}\n"
    "  retry: {ladders: {scf_not_converged: [{scale: {system.nbnd: 1.2}}]}}\n",
    "garbage": "structures: [{bulk: {element: [[[{}]]], crystal: 3, a: '\\0'}}]\n"
    "oracle: {pseudopotentials: {Si: [.inf]}, input_data: {system: {ecutwfc: {a: b}}}}\n"
    "limits: {max_atoms: 2.0}\n",
    "passwd": "structures: [{file: /etc/passwd, format: cif}]\n"
    "oracle: {pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_cli_refuses_hostile_recipes_without_traceback(tmp_path: Path, name: str) -> None:
    p = tmp_path / f"{name}.yaml"
    p.write_text(HOSTILE[name])
    r = subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", "validate", str(p)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert r.stderr.startswith(f"{p}:"), r.stderr
