"""Every effective pw.x value, its source and pw.x's default (issue 14.8): the dry run
shows what a copied pw.x input silently becomes (conv_thr 1e-8, ecutrho 8 x ecutwfc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.cli import main
from mlip_autopipec.oracle.effective import (
    PWX_DEFAULTS,
    SOURCE_DEFAULT,
    SOURCE_ORACLE,
    SOURCE_RECIPE,
    SOURCE_STRUCTURE,
    effective_lines,
    effective_values,
)
from mlip_autopipec.recipe import load_schema

DATA = Path(__file__).resolve().parents[1] / "data" / "pwx"

#: a real oracle input (pw.x read it), with the oracle's 8 x ecutwfc written in
PWI = (
    (DATA / "al_nbnd2_high_verbosity" / "espresso.pwi")
    .read_text()
    .replace("   ecutwfc          = 15\n", "   ecutwfc          = 15\n   ecutrho          = 120\n")
)


def _by_key(values: list) -> dict:
    return {v.key: v for v in values}


def test_sources_and_pwx_defaults_of_a_written_input() -> None:
    recipe = {"system": {"ecutwfc": 15, "occupations": "smearing", "nbnd": 2}}
    filled = {
        "system": {**recipe["system"], "ecutrho": 120},
        "electrons": {"conv_thr": 1e-8},
        "control": {"calculation": "scf", "tprnfor": True, "tstress": True},
    }
    got = _by_key(effective_values([PWI], recipe, filled, "oracle.kspacing 0.3"))
    assert got["system.ecutwfc"].source == SOURCE_RECIPE
    assert got["system.ecutwfc"].values == (15,)
    rho = got["system.ecutrho"]
    assert rho.source == SOURCE_DEFAULT and rho.why == "8 x ecutwfc"
    assert rho.pwx_default == "4 x ecutwfc" and rho.differs
    assert got["system.nat"].source == SOURCE_STRUCTURE
    for key in ("control.tprnfor", "control.tstress", "control.verbosity"):
        assert got[key].source == SOURCE_ORACLE and got[key].differs
    assert not got["control.prefix"].differs  # 'pwscf' is pw.x's own
    assert got["K_POINTS"].source == SOURCE_DEFAULT  # kspacing not written by the recipe
    lines = effective_lines(got.values())
    assert not any(line.split()[1] == "system.nat" for line in lines if line.startswith(" "))
    assert any(line.startswith("* system.ecutrho = 120") for line in lines)


def test_conv_thr_and_ecutrho_are_flagged_against_pwx_defaults() -> None:
    got = _by_key(effective_values([PWI], {}, {"electrons": {"conv_thr": 1e-8}}))
    assert got["electrons.conv_thr"].differs and got["electrons.conv_thr"].pwx_default == "1e-06"
    # 4 x ecutwfc is pw.x's own: written by the recipe, not flagged
    same = PWI.replace("ecutrho          = 120", "ecutrho          = 60")
    rho = _by_key(effective_values([same], {"system": {"ecutrho": 60}}, {}))["system.ecutrho"]
    assert rho.source == SOURCE_RECIPE and not rho.differs


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(
        st.sampled_from(
            ["system.ecutwfc", "system.occupations", "control.verbosity", "electrons.mixing_beta"]
        )
    ),
    upper=st.booleans(),
)
def test_the_recipe_wins_over_every_other_source(keys: set[str], upper: bool) -> None:
    """Whatever the recipe writes (any letter case) is reported as the recipe's."""
    pwi = PWI.replace("&ELECTRONS", "&ELECTRONS\n   mixing_beta = 0.3")
    recipe: dict[str, dict[str, object]] = {}
    for key in keys:
        sec, name = key.split(".")
        recipe.setdefault(sec.upper() if upper else sec, {})[name.upper() if upper else name] = 1
    got = _by_key(effective_values([pwi], recipe, {}))
    for key, v in got.items():
        assert (v.source == SOURCE_RECIPE) == (key in keys)


def test_distinct_values_over_several_inputs_are_all_listed() -> None:
    second = PWI.replace("nat              = 1", "nat              = 2").replace(
        "degauss          = 0.05", "degauss          = 0.04"
    )
    got = _by_key(effective_values([PWI, second, PWI], {}, {}))
    assert got["system.degauss"].values == (0.05, 0.04)
    assert got["system.nat"].values == (1, 2)


def test_schema_states_the_oracle_and_pwx_defaults() -> None:
    props = load_schema()["properties"]["oracle"]["properties"]["input_data"]["properties"]
    conv = props["electrons"]["properties"]["conv_thr"]
    assert conv["default"] == 1e-8 and "1e-6" in conv["description"]
    assert PWX_DEFAULTS["electrons.conv_thr"].value == 1e-6
    rho = props["system"]["properties"]["ecutrho"]["description"]
    assert "8 × ecutwfc" in rho and "4 × ecutwfc" in rho
    reference = (Path(__file__).resolve().parents[2] / "docs" / "recipe-reference.md").read_text()
    assert "pw.x's default is 4 × ecutwfc" in reference and "(pw.x: 1e-6)" in reference


def test_dry_run_prints_every_effective_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "si.yaml"
    recipe.write_text(
        "structures:\n"
        "  - bulk: {element: Si, crystal: diamond, a: 5.43}\n"
        "oracle:\n"
        "  pseudopotentials: {Si: Si.pz-vbc.UPF}\n"
        "  pseudo_dir: /usr/share/espresso/pseudo\n"
        "  input_data:\n"
        "    system: {ecutwfc: 12}\n"
        "    electrons: {mixing_beta: 0.5}\n"
    )
    if not Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF").is_file():
        pytest.skip("needs /usr/share/espresso/pseudo")
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pw.x variables of the first attempts" in out
    assert "* system.ecutrho = 96  [oracle default: 8 x ecutwfc]  (pw.x: 4 x ecutwfc)" in out
    assert "* electrons.conv_thr = 1e-08  [oracle default" in out and "(pw.x: 1e-06)" in out
    assert "* electrons.mixing_beta = 0.5  [recipe]  (pw.x: 0.7)" in out
    assert "system.ecutwfc = 12  [recipe]" in out
    summary = json.loads((run_dir / "dry-run" / "summary.json").read_text())
    rows = {r["key"]: r for r in summary["effective_pwx"]}
    assert rows["electrons.conv_thr"]["source"] == SOURCE_DEFAULT
    assert rows["electrons.conv_thr"]["differs_from_pwx"] is True
    assert rows["electrons.mixing_beta"]["values"] == [0.5]
    assert rows["K_POINTS"]["source"] == SOURCE_DEFAULT  # oracle.kspacing left to the schema
