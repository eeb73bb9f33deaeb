"""The stop rule as a pure function (hypothesis)."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.explore.stop import IterationFigures, should_stop

SETTINGS = {
    "survive_fraction": 0.99,
    "targets": {"energy_mev_per_atom": 5.0, "forces_mev_per_ang": 150.0},
    "budget": {"iterations": None, "pwx_calls": None, "wall_seconds": None},
}


def good(i: int, calls: int = 10 * 1, wall: float = 1.0) -> IterationFigures:
    return IterationFigures(i, 100, 100, 0, 2.0, 100.0, calls, wall)


figures = st.builds(
    IterationFigures,
    iteration=st.integers(1, 50),
    frames_hot=st.integers(0, 200),
    frames_hot_below_select=st.integers(0, 200),
    walkers_halted=st.integers(0, 3),
    heldout_rmse_energy_mev_per_atom=st.none() | st.floats(0, 20),
    heldout_rmse_forces_mev_per_ang=st.none() | st.floats(0, 400),
    pwx_calls_total=st.integers(0, 500),
    wall_seconds_total=st.floats(0, 1e4),
).filter(lambda f: f.frames_hot_below_select <= f.frames_hot)


def holds(f: IterationFigures) -> bool:
    e, fo = f.heldout_rmse_energy_mev_per_atom, f.heldout_rmse_forces_mev_per_ang
    return (
        f.frames_hot > 0
        and f.frames_hot_below_select >= 0.99 * f.frames_hot
        and f.walkers_halted == 0
        and e is not None
        and fo is not None
        and e <= 5.0
        and fo <= 150.0
    )


@given(st.lists(figures, max_size=6))
def test_converged_iff_last_two_hold(figs: list[IterationFigures]) -> None:
    decision = should_stop(figs, SETTINGS, refits_done=len(figs))
    expected = len(figs) >= 2 and holds(figs[-1]) and holds(figs[-2])
    assert decision.converged == expected
    assert decision.stop == expected  # no budget: only convergence stops
    if decision.stop:
        assert decision.reason.startswith("converged")


@given(st.lists(figures, min_size=1, max_size=6), st.integers(1, 6))
def test_iteration_budget_stops_not_converged(figs: list[IterationFigures], limit: int) -> None:
    settings = copy.deepcopy(SETTINGS)
    settings["budget"]["iterations"] = limit
    decision = should_stop(figs, settings, refits_done=len(figs))
    converged = len(figs) >= 2 and holds(figs[-1]) and holds(figs[-2])
    if converged:
        assert decision.converged and decision.stop
    else:
        assert decision.stop == (len(figs) >= limit)
        assert not decision.converged
        if decision.stop:
            assert decision.reason.startswith("stopped by budget, not converged")


@given(st.integers(0, 300), st.integers(1, 300))
def test_pwx_budget(calls: int, limit: int) -> None:
    settings = copy.deepcopy(SETTINGS)
    settings["budget"]["pwx_calls"] = limit
    bad = IterationFigures(1, 10, 5, 1, None, None, calls, 1.0)
    decision = should_stop([bad], settings, refits_done=0)
    assert decision.stop == (calls >= limit)
    assert not decision.converged
    if decision.stop:
        assert "pw.x calls" in decision.reason


def test_one_good_iteration_is_not_enough() -> None:
    assert not should_stop([good(1)], SETTINGS, refits_done=1).stop
    assert should_stop([good(1), good(2)], SETTINGS, refits_done=2).converged


def test_a_halted_walker_or_a_missing_heldout_blocks_convergence() -> None:
    halted = IterationFigures(2, 100, 100, 1, 2.0, 100.0, 10, 1.0)
    no_heldout = IterationFigures(2, 100, 100, 0, None, None, 10, 1.0)
    hot_escape = IterationFigures(2, 100, 98, 0, 2.0, 100.0, 10, 1.0)
    for second in (halted, no_heldout, hot_escape):
        assert not should_stop([good(1), second], SETTINGS, refits_done=2).stop


def test_wall_budget() -> None:
    settings = copy.deepcopy(SETTINGS)
    settings["budget"]["wall_seconds"] = 60
    decision = should_stop([good(1, wall=61.0)], settings, refits_done=1)
    assert decision.stop and not decision.converged
    assert "wall seconds" in decision.reason
