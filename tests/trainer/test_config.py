"""Trainer settings: schema defaults and the settings fingerprint."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.recipe.schema import load_schema
from mlip_autopipec.trainer.config import DEFAULTS, settings_fingerprint, with_defaults


def test_defaults_are_the_schemas():
    props = load_schema()["properties"]["trainer"]["properties"]
    for key, sub in props.items():
        if "default" in sub:
            assert DEFAULTS[key] == sub["default"], key
    assert with_defaults({"physics_baseline": {"type": "ZBL"}})["physics_baseline"] == {
        "type": "ZBL",
        "inner_fraction": 0.75,
        "delta_fraction": 0.25,
    }


@given(
    st.sampled_from(["pacemaker", "/opt/bin/pacemaker", ["python", "-m", "pyace"]]),
    st.floats(1, 1e5),
    st.sampled_from(["continue", "fresh"]),
)
def test_how_a_fit_is_run_does_not_change_the_fingerprint(command, timeout, refit):
    assert settings_fingerprint({"command": command, "timeout": timeout, "refit": refit}) == (
        settings_fingerprint({})
    )


PHYSICS = [
    {"cutoff": 6.0},
    {"max_epochs": 7},
    {"max_basis_size": 9},
    {"kappa": 0.5},
    {"seed": 1},
    {"test_fraction": 0.3},
    {"elements": ["Si", "C"]},
    {"backend": "tensorpot"},
    {"ladder_step": 3},
    {"min_loss_change": 1e-3},
    {"loss_patience": 10},
    {"physics_baseline": {"type": "ZBL"}},
    {"physics_baseline": {"type": "ZBL", "inner_cutoff": 1.2}},
    {"physics_baseline": {"type": "LJ", "epsilon": 0.1, "sigma": 2.0}},
    {"physics_baseline": {"type": "LJ", "epsilon": 0.1, "sigma": 2.1}},
]


def test_every_physics_setting_changes_the_fingerprint():
    prints = [settings_fingerprint(cfg) for cfg in [{}, *PHYSICS]]
    assert len(set(prints)) == len(prints)
    # defaults spelled out or left out: the same physics
    assert settings_fingerprint({"cutoff": DEFAULTS["cutoff"]}) == settings_fingerprint({})
    assert settings_fingerprint({"elements": ["Si", "C"]}) == settings_fingerprint(
        {"elements": ["C", "Si"]}
    )
