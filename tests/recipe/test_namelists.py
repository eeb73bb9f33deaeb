"""pw.x namelist keys and values: exact variable names, typed scalars, no injected input."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
from ase.build import bulk
from ase.io.espresso import read_fortran_namelist, write_espresso_in
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.recipe import check_recipe
from mlip_autopipec.recipe.namelists import (
    FIXED,
    MANAGED,
    NAMELISTS,
    SECTIONS,
    VARIABLES,
    check_key,
    check_namelists,
    check_value,
)

SI_PP = "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
needs_system_pseudo = pytest.mark.skipif(
    not (Path("/usr/share/espresso/pseudo") / SI_PP).is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)

#: The key reported in the issue: it relaxed the structure and wrote into /x.
INJECTED = "disk_io(1:3)='low', calculation='relax', outdir='/x', disk_io(1:3)"


def _recipe(tmp_path: Path, oracle_extra: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        f"oracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n{oracle_extra}"
    )
    return p


def _errors(path: Path) -> list[str]:
    return [str(d) for d in check_recipe(path) if d.severity == "error"]


@needs_system_pseudo
def test_issue_injection_key_is_refused_located(tmp_path: Path) -> None:
    p = _recipe(tmp_path, f'  input_data:\n    control: {{"{INJECTED}": 1}}\n')
    errors = _errors(p)
    assert len(errors) == 1 and errors[0].startswith(f"{p}:5:15: error: "), errors
    assert "managed by autopipec" in errors[0]


@pytest.mark.parametrize(
    "key",
    [
        "outdir",
        "OUTDIR",
        "Outdir",
        " outdir",
        "outdir ",
        "outdir(1)",
        "out dir",
        "prefix",
        "pseudo_dir",
        "max_seconds",
        "MAX_SECONDS",
        "disk_io",
        "wfcdir",
        "lkpoint_dir",
        "restart_mode",
        "CALCULATION",
        "calculation ",
        "calculation(1)",
        "Tprnfor",
        "tstress(1)",
        "nat",
        "NTYP",
        "ibrav",
        "celldm(1)",
        "starting_magnetization(1)",
        "mixing_beta\n/\n&control outdir",
        "mixing_beta=0.1,calculation",
    ],
)
def test_managed_keys_refused_in_every_spelling(key: str) -> None:
    sections = [s for s in SECTIONS if check_key(s, key) is not None]
    assert sections == list(SECTIONS), key
    problems = check_namelists({"control": {key: 1}, "system": {key: 1}})
    assert len(problems) == 2


def test_managed_key_messages_teach() -> None:
    assert "oracle.magnetism" in (check_key("system", "starting_magnetization(1)") or "")
    assert "oracle.pseudo_dir" in (check_key("control", "pseudo_dir") or "")
    relax = check_value("control", "calculation", "relax") or ""
    assert "single points" in relax and "relax" in relax


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("system", "ecutwfc", 30),
        ("system", "ecutwfc", 30.5),
        ("system", "Hubbard_U(1)", 4.0),
        ("system", "hubbard_j(2,1)", 0.5),
        ("system", "starting_ns_eigenvalue(1,2,1)", 0.0),
        ("system", "nspin", 2),
        ("system", "occupations", "smearing"),
        ("system", "input_dft", "vdw-df2-b86r"),
        ("system", "nosym", True),
        ("electrons", "mixing_mode", "local-TF"),
        ("electrons", "conv_thr", 1e-10),
        ("control", "calculation", "scf"),
        ("control", "tprnfor", True),
        ("control", "title", "Si bulk 2"),
        ("ions", "ion_dynamics", "bfgs"),
        ("cell", "press", 0),
    ],
)
def test_plain_pw_variables_pass(section: str, key: str, value: Any) -> None:
    assert check_namelists({section: {key: value}}) == []


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("electrons", "mixing_beta(1)", 0.3, "not an array"),
        ("system", "Hubbard_U", 4.0, "is an array"),
        ("system", "Hubbard_U(0)", 4.0, "out of range"),
        ("system", "Hubbard_U(11)", 4.0, "out of range"),
        ("system", "Hubbard_U(1.5)", 4.0, "not a pw.x variable name"),
        ("system", "Hubbard_U(i)", 4.0, "not a pw.x variable name"),
        ("system", "Hubbard_U( 1 )", 4.0, "not a pw.x variable name"),
        ("system", "hubbard_j(1)", 4.0, "takes 2 index"),
        ("system", "nspin", 2.0, "needs an integer"),
        ("system", "nspin", True, "needs an integer"),
        ("system", "nosym", "yes", "needs a boolean"),
        ("electrons", "conv_thr", "1e-8", "needs a number"),
        ("electrons", "conv_thr", math.nan, "finite"),
        ("electrons", "conv_thr", math.inf, "finite"),
        ("electrons", "conv_thr", 1e-320, "range"),
        ("electrons", "electron_maxstep", 2**40, "32-bit"),
        ("system", "occupations", ["smearing"], "not a list"),
        ("system", "occupations", {"a": 1}, "not a mapping"),
        ("system", "Hubbard_U(1)", [4.0, 2.0], "not a list"),
        ("system", "occupations", None, "not null"),
        ("system", "smearing", "mv'\n/\n&control\n calculation='relax'", "cannot carry"),
        ("system", "smearing", 'mv"', "cannot carry"),
        ("system", "smearing", "mv/", "cannot carry"),
        ("system", "smearing", "mv&", "cannot carry"),
        ("system", "smearing", "mv!", "cannot carry"),
        ("system", "smearing", "mv,", "cannot carry"),
        ("system", "title_of_mine", 1, "not a pw.x &SYSTEM variable"),
        ("system", "mixing_beta", 0.3, "belongs to &ELECTRONS"),
        ("system", "x" * 81, "s", "not a pw.x &SYSTEM variable"),
        ("control", "title", "t" * 81, "longer than 80"),
        ("control", "twochem", True, "QE 6.8 or later"),
        ("electrons", "diago_rmm_ndim", 4, "QE 6.8 or later"),
    ],
)
def test_bad_keys_and_values_refused(section: str, key: str, value: Any, text: str) -> None:
    problems = check_namelists({section: {key: value}})
    assert len(problems) == 1 and text in problems[0], problems
    assert problems[0].startswith(f"{section}.{key}: ")


def test_duplicate_spellings_and_bad_sections_refused() -> None:
    problems = check_namelists({"electrons": {"mixing_beta": 0.3, "MIXING_BETA": 0.5}})
    assert problems and "given twice" in problems[0]
    assert "not a pw.x namelist" in check_namelists({"hubbard": {"u": 1}})[0]
    assert check_namelists({"system": 3}) and check_namelists([1])
    # the oracle may allow the keys it sets itself
    assert check_namelists({"electrons": {"startingpot": "file"}})
    assert (
        check_namelists({"electrons": {"startingpot": "file"}}, allow={"electrons.startingpot"})
        == []
    )


def test_every_whitelisted_variable_has_a_type() -> None:
    for section in SECTIONS:
        assert set(VARIABLES[section]) == NAMELISTS[section]
        assert {"calculation", "tprnfor", "tstress"} <= NAMELISTS["control"]
    assert set(FIXED) <= NAMELISTS["control"]
    assert all(any(name in NAMELISTS[s] for s in SECTIONS) for name in MANAGED)


# --- properties ---------------------------------------------------------------------------

_KEYS = st.one_of(
    st.sampled_from(sorted({k for s in SECTIONS for k in NAMELISTS[s]})),
    st.text(min_size=1, max_size=30),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_()0123456789,' =/&!\n", max_size=30),
    st.sampled_from(sorted(MANAGED)).map(lambda k: k.upper()),
)
_VALUES = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="abc'\"/&!,=\n -.", max_size=10),
    st.lists(st.integers(), max_size=2),
    st.none(),
)
_EXACT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\([0-9]+(,[0-9]+){0,2}\))?$")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SECTIONS), _KEYS, _VALUES)
def test_whatever_passes_is_a_plain_pw_assignment(section: str, key: str, value: Any) -> None:
    """Anything check_namelists accepts is written by ASE as one `name = scalar` line of its
    own namelist: pw.x reads back exactly these keys and values, nothing else."""
    if check_namelists({section: {key: value}}):
        return
    assert _EXACT.match(key)
    name = key.split("(")[0].lower()
    assert name in NAMELISTS[section]
    assert name not in MANAGED
    assert not isinstance(value, dict | list) and value is not None
    if isinstance(value, float):
        assert math.isfinite(value)
    control = {"calculation": "scf", "outdir": ".", "prefix": "pwscf"}
    input_data: dict[str, dict[str, Any]] = {"control": dict(control)}
    input_data.setdefault(section, {})[key] = value
    buf = io.StringIO()
    write_espresso_in(
        buf, bulk("Si"), input_data=input_data, pseudopotentials={"Si": SI_PP}, kpts=(1, 1, 1)
    )
    data, _ = read_fortran_namelist(io.StringIO(buf.getvalue()))
    written = data[section]
    assert written[key.lower()] == value or (
        isinstance(value, int | float) and float(written[key.lower()]) == float(value)
    )
    assert data["control"]["calculation"] == "scf"
    assert data["control"]["outdir"] == "." and data["control"]["prefix"] == "pwscf"
    # ASE adds its empty &FCP / &RISM; nothing else appears
    assert all(not data[s] for s in set(data) - set(SECTIONS))
    assert {k for k in data[section] if k not in ("nat", "ntyp", "ibrav")} - set(
        control if section == "control" else {}
    ) == {key.lower()}


@needs_system_pseudo
def test_ladder_steps_get_the_same_checks(tmp_path: Path) -> None:
    p = _recipe(
        tmp_path,
        "  retry:\n"
        "    ladders:\n"
        "      scf_not_converged:\n"
        "        - set: {control.OUTDIR: x}\n"
        "        - set: {control.max_seconds: 5}\n"
        '        - set: {electrons.mixing_mode: "plain\'"}\n'
        "        - scale: {system.occupations: 2}\n"
        "        - only_if: {system.nspin: [1, 2.5]}\n"
        "        - set: {electrons.mixing_beta: .nan}\n",
    )
    errors = _errors(p)
    joined = "\n".join(errors)
    assert f"{p}:7:17: error: 'OUTDIR' is managed" in joined
    assert f"{p}:8:17: error: 'max_seconds' is managed" in joined
    assert f"{p}:9:" in joined and "cannot carry" in joined
    assert "only numbers can be scaled" in joined
    assert "'nspin' needs an integer, got 2.5" in joined
    assert f"{p}:12:" in joined


@needs_system_pseudo
def test_pw_variable_at_the_wrong_level_says_where_it_belongs(tmp_path: Path) -> None:
    p = _recipe(tmp_path, "  ecutwfc: 40\n  input_data: {mixing_beta: 0.3}\n")
    joined = "\n".join(_errors(p))
    assert f"{p}:4:3: error: unknown key 'ecutwfc': ecutwfc is a pw.x &SYSTEM variable" in joined
    assert "belongs under oracle.input_data.system" in joined
    assert "belongs under oracle.input_data.electrons" in joined


@needs_system_pseudo
def test_relax_explains_single_points(tmp_path: Path) -> None:
    p = _recipe(tmp_path, "  input_data: {control: {calculation: relax}}\n")
    joined = "\n".join(_errors(p))
    assert "'scf' was expected" in joined and "labels are single points" in joined
