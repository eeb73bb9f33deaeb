"""The retry ladder as pure logic: examples plus hypothesis properties."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.oracle import DEFAULT_LADDERS, PERMANENT, FailureClass, plan_next
from mlip_autopipec.oracle.diagnose import RETRYABLE
from mlip_autopipec.oracle.ladder import (
    RESTART_CHARGE_DENSITY,
    RESTART_SCRATCH,
    apply_step,
    base_params,
    default_ladder_markdown,
    params_diff,
    scf_trend,
    validate_ladders,
)

BASE = base_params(
    {
        "kspacing": 0.25,
        "input_data": {"system": {"ecutwfc": 30}, "electrons": {"conv_thr": 1e-8}},
    }
)


@dataclass(frozen=True)
class Entry:
    failure_class: str
    message: str = ""
    step: dict[str, Any] | None = None
    params_diff: dict[str, Any] = field(default_factory=dict)
    scf_history_ev: tuple[float, ...] = ()


def _run(
    classes: list[str],
    trends: list[tuple[float, ...]],
    max_attempts: int,
    density: list[bool],
    ladders: Any = DEFAULT_LADDERS,
    base: dict[str, Any] = BASE,
) -> list[Any]:
    """Feed a sequence of diagnoses to the planner; return the plans it made."""
    history: list[Entry] = []
    plans = []
    for i in range(len(classes) + 1):
        plan = plan_next(
            base, ladders, max_attempts, history, density_available=density[i % len(density)]
        )
        if plan is None:
            break
        plans.append(plan)
        if i == len(classes):
            break
        history.append(
            Entry(classes[i], "msg", plan.step, plan.params_diff, trends[i % len(trends)])
        )
    return plans


DECREASING = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 1e-3, 3e-4)
OSCILLATING = (1.0, 0.1, 0.5, 0.05, 0.4, 0.06, 0.5, 0.05)


def test_default_ladder_is_valid_and_covers_every_retryable_class() -> None:
    assert validate_ladders(DEFAULT_LADDERS) == []
    assert set(DEFAULT_LADDERS) == set(RETRYABLE)
    md = default_ladder_markdown()
    for cls in RETRYABLE:
        assert f"| {cls} |" in md
    assert "permanent" in md


def test_validate_ladders_reports_problems() -> None:
    bad = {
        "overlapping_atoms": [{}],
        "scf_not_converged": [
            {"restart": "maybe", "scale": {"x.y": -1}, "when": ["bumpy"], "bogus": 1}
        ],
    }
    problems = validate_ladders(bad)
    assert len(problems) == 5, problems


SMEARING_BASE = {
    **BASE,
    "system.occupations": "smearing",
    "system.smearing": "mv",
    "system.degauss": 0.02,
}


def test_trend_picks_the_step() -> None:
    assert scf_trend(DECREASING) == "decreasing"
    assert scf_trend(OSCILLATING) == "oscillating"
    assert scf_trend((1.0, 0.9, 0.85, 0.8, 0.8, 0.79)) == "stagnant"
    # fell a decade but the last value is far from the best one: not "still converging"
    assert scf_trend((1.0, 0.1, 0.01, 0.001, 0.1, 0.08, 0.07, 0.05)) != "decreasing"
    dec = _run(["scf_not_converged"], [DECREASING], 6, [True])
    assert dec[1].params_diff == {
        "electrons.electron_maxstep": 200,
        "electrons.startingpot": "file",
    }
    assert dec[1].restart == RESTART_CHARGE_DENSITY
    # erratic with fixed occupations: smearing first
    osc = _run(["scf_not_converged"], [OSCILLATING], 6, [True])
    assert osc[1].params["system.occupations"] == "smearing"
    assert osc[1].restart == RESTART_SCRATCH
    # erratic with smearing already on: the smearing step changes nothing and is skipped
    osc = _run(["scf_not_converged"], [OSCILLATING], 6, [True], base=SMEARING_BASE)
    # (from the density with a probe budget of 25 SCF steps, issue 14.2)
    assert osc[1].params_diff == {
        "electrons.electron_maxstep": 25,
        "electrons.mixing_beta": 0.35,
        "electrons.startingpot": "file",
    }


def test_steps_accumulate_and_fall_back_to_scratch() -> None:
    plans = _run(["scf_not_converged"] * 5, [OSCILLATING], 6, [True])
    # 2: smearing, 3: beta/2 from density, 4: same settings from scratch, 5: local-TF
    assert plans[1].params["system.occupations"] == "smearing"
    assert plans[2].params["electrons.mixing_beta"] == 0.35
    assert plans[2].params["system.occupations"] == "smearing"  # accumulated
    assert plans[2].restart == RESTART_CHARGE_DENSITY
    # 3 was a probe (25 SCF steps from the density); 4 has the same settings, full budget
    assert plans[2].params["electrons.electron_maxstep"] == 25
    full = {k: v for k, v in plans[2].params.items() if k != "electrons.electron_maxstep"}
    assert plans[3].params == full  # the recipe left electron_maxstep at pw.x's default
    assert plans[3].restart == RESTART_SCRATCH
    assert plans[4].params["electrons.mixing_mode"] == "local-TF"
    assert plans[4].params["electrons.mixing_beta"] == 0.175
    assert plans[5].params["electrons.diagonalization"] == "cg"
    assert len(plans) == 6


def test_no_density_turns_restart_into_scratch() -> None:
    plans = _run(["walltime"], [()], 6, [False])
    # "continue from the density" without a density would repeat attempt 1: skipped
    assert plans[1].params_diff == {"electrons.mixing_beta": 0.35}
    assert plans[1].restart == RESTART_SCRATCH


def test_input_error_step_only_for_matching_message() -> None:
    h = [
        Entry(
            "input_error",
            "Error in routine iosys (1): fixed occupations and lsda need tot_magnetization",
        )
    ]
    plan = plan_next(BASE, DEFAULT_LADDERS, 6, h)
    assert plan is not None and plan.params["system.occupations"] == "smearing"
    h = [Entry("input_error", "Error in routine iosys (1): ibrav=0: must read cell parameters")]
    assert plan_next(BASE, DEFAULT_LADDERS, 6, h) is None


def test_crashed_is_retried_once() -> None:
    plans = _run(["crashed", "crashed", "crashed"], [()], 6, [True])
    assert len(plans) == 2


def test_kspacing_step_replaces_kpts() -> None:
    p = apply_step({"kpts": [2, 2, 2]}, {"kspacing": 0.2})
    assert p == {"kspacing": 0.2}
    assert params_diff({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"b": None, "c": 3}


classes = st.sampled_from(list(FailureClass.ALL))
histories = st.lists(st.floats(1e-10, 10.0), max_size=12).map(tuple)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.lists(classes, min_size=0, max_size=15),
    trends=st.lists(histories, min_size=1, max_size=4),
    max_attempts=st.integers(1, 10),
    density=st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_ladder_properties(
    seq: list[str], trends: list[tuple[float, ...]], max_attempts: int, density: list[bool]
) -> None:
    plans = _run(seq, trends, max_attempts, density)
    # never exceeds max_attempts
    assert len(plans) <= max_attempts
    assert [p.number for p in plans] == list(range(1, len(plans) + 1))
    # never retries a permanent class (nor anything after success)
    for i in range(1, len(plans)):
        assert seq[i - 1] not in PERMANENT
        assert seq[i - 1] != FailureClass.CONVERGED
        assert plans[i].step is not None and plans[i].step["ladder"] == seq[i - 1]
    # never repeats an identical parameter set (parameters + restart mode), except by a
    # step that says ``repeat`` (incomplete_output: the same settings once more)
    keys = [
        json.dumps(p.params_diff, sort_keys=True) for p in plans if not (p.step or {}).get("repeat")
    ]
    assert len(keys) == len(set(keys))
    # deterministic
    again = _run(seq, trends, max_attempts, density)
    assert again == plans


@settings(max_examples=100, deadline=None)
@given(
    ladders=st.dictionaries(
        st.sampled_from(list(RETRYABLE)),
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "set": st.dictionaries(
                        st.sampled_from(
                            ["electrons.mixing_beta", "system.degauss", "electrons.diagonalization"]
                        ),
                        st.sampled_from([0.1, 0.3, "cg", 0.02]),
                        max_size=2,
                    ),
                    "scale": st.dictionaries(
                        st.sampled_from(["electrons.mixing_beta", "electrons.electron_maxstep"]),
                        st.sampled_from([0.5, 2.0, 1.0]),
                        max_size=2,
                    ),
                    "restart": st.sampled_from([RESTART_SCRATCH, RESTART_CHARGE_DENSITY]),
                    "only_if": st.just({"system.occupations": ["fixed", None]}),
                    "when": st.sampled_from([["decreasing"], ["oscillating", "stagnant"]]),
                },
            ),
            max_size=4,
        ),
    ),
    seq=st.lists(classes, max_size=12),
    max_attempts=st.integers(1, 12),
)
def test_properties_hold_for_any_user_ladder(
    ladders: Any, seq: list[str], max_attempts: int
) -> None:
    plans = _run(seq, [DECREASING, OSCILLATING], max_attempts, [True, False], ladders)
    assert len(plans) <= max_attempts
    keys = [json.dumps(p.params_diff, sort_keys=True) for p in plans]
    assert len(keys) == len(set(keys))
    for i in range(1, len(plans)):
        assert seq[i - 1] not in PERMANENT and seq[i - 1] != FailureClass.CONVERGED
    assert _run(seq, [DECREASING, OSCILLATING], max_attempts, [True, False], ladders) == plans


def test_charge_wrong_with_smearing_on_escalates_degauss() -> None:
    fixed = _run(["charge_wrong"], [()], 6, [True])
    assert fixed[1].params["system.occupations"] == "smearing"
    smeared = _run(["charge_wrong"], [()], 6, [True], base=SMEARING_BASE)
    assert smeared[1].params_diff == {"electrons.mixing_beta": 0.35, "system.degauss": 0.04}
