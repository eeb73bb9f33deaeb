"""validate refuses what run would refuse: retry steps the planner could not apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlip_autopipec.oracle.ladder import apply_step, base_params
from mlip_autopipec.recipe import check_recipe, load_recipe
from mlip_autopipec.recipe.namelists import SECTIONS, VARIABLES

SI_PP = "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
pytestmark = pytest.mark.skipif(
    not (Path("/usr/share/espresso/pseudo") / SI_PP).is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)


def _recipe(path: Path, steps: list[dict], system: dict | None = None) -> Path:
    path.write_text(
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        "oracle:\n"
        f"  pseudopotentials: {{Si: {SI_PP}}}\n"
        f"  input_data: {{system: {json.dumps(system or {'ecutwfc': 30})}}}\n"
        f"  retry: {{ladders: {{scf_not_converged: {json.dumps(steps)}}}}}\n"
    )
    return path


def _errors(p: Path) -> list[str]:
    return [str(d) for d in check_recipe(p) if d.severity == "error"]


def test_scale_of_an_unset_key_is_refused_located(tmp_path: Path) -> None:
    p = _recipe(tmp_path / "r.yaml", [{"scale": {"system.nbnd": 1.2}}])
    errors = _errors(p)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{p}:5:"), errors
    assert "cannot scale system.nbnd" in errors[0]
    assert "set oracle.input_data.system.nbnd" in errors[0]
    # the planner would have raised on the first failed attempt
    with pytest.raises(ValueError, match="cannot scale"):
        apply_step({"system.ecutwfc": 30}, {"scale": {"system.nbnd": 1.2}})


def test_scale_of_a_set_or_defaulted_key_passes(tmp_path: Path) -> None:
    steps = [
        {"scale": {"system.nbnd": 1.2}},
        {"scale": {"system.ecutrho": 1.1, "electrons.mixing_beta": 0.5}},
        {"scale": {"electrons.electron_maxstep": 2}},
    ]
    p = _recipe(tmp_path / "r.yaml", steps, {"ecutwfc": 30, "nbnd": 16})
    assert _errors(p) == []
    recipe = load_recipe(p)
    base = base_params(recipe.oracle)
    for step in steps:
        apply_step(base, step)


_NUMERIC = sorted(
    f"{s}.{name}"
    for s in SECTIONS
    for name, var in VARIABLES[s].items()
    if var.type in (int, float) and not var.dims
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(_NUMERIC), st.floats(0.1, 4.0), min_size=1, max_size=3),
        min_size=1,
        max_size=3,
    ),
    st.dictionaries(st.sampled_from(["nbnd", "degauss", "ecutrho", "tot_charge"]), st.just(2)),
)
def test_accepted_ladders_can_be_applied(tmp_path: Path, scales, system) -> None:
    """Whatever ladder validate accepts, the planner can apply every step to the recipe."""
    p = _recipe(tmp_path / "r.yaml", [{"scale": s} for s in scales], {"ecutwfc": 30, **system})
    if _errors(p):
        return
    base = base_params(load_recipe(p).oracle)
    for s in scales:
        apply_step(base, {"scale": s})
