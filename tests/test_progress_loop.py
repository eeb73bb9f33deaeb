"""The active-learning progress line (``iteration_summary``): pure, property-tested."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.lifecycle.progress import iteration_summary

counts = st.integers(min_value=0, max_value=10_000)
maybe_float = st.none() | st.floats(allow_nan=True, allow_infinity=True)
budgets = st.fixed_dictionaries(
    {},
    optional={
        "pwx_calls": st.none() | counts,
        "iterations": st.none() | counts,
        "wall_seconds": st.none() | st.floats(min_value=0, max_value=1e6),
    },
)


@given(
    iteration=st.integers(min_value=1, max_value=100),
    walkers=counts,
    candidates=counts,
    selected=counts,
    e=maybe_float,
    gamma=maybe_float,
    survival=maybe_float,
    calls=st.none() | counts,
    budget=st.none() | budgets,
    refits=st.none() | counts,
)
def test_summary_is_one_line_with_the_budget_left(
    iteration: int,
    walkers: int,
    candidates: int,
    selected: int,
    e: float | None,
    gamma: float | None,
    survival: float | None,
    calls: int | None,
    budget: dict | None,
    refits: int | None,
) -> None:
    row = {
        "iteration": iteration,
        "walkers": walkers,
        "candidates": candidates,
        "selected": selected,
        "heldout_rmse_energy_mev_per_atom": e,
        "gamma_max": gamma,
        "gamma_median": gamma,
        "survival_fs_mean": survival,
        "pwx_calls_total": calls,
        "wall_seconds_total": 12.0,
    }
    line = iteration_summary(row, budget, refits_done=refits)
    assert "\n" not in line and line.startswith(f"active learning iteration {iteration}: ")
    assert f"{candidates} candidates, {selected} selected" in line
    assert ("held-out" in line) == (e is not None)
    if e is not None and not math.isfinite(e):
        assert "E - meV/atom" in line
    limit = (budget or {}).get("pwx_calls")
    if calls is not None and limit is not None:
        assert f"pw.x calls {calls} of {limit} ({max(limit - calls, 0)} left)" in line
    elif calls is not None:
        assert f"pw.x calls {calls} (no pw.x budget)" in line
    else:
        assert "pw.x calls" not in line
    if refits is not None and (budget or {}).get("iterations") is not None:
        assert f"iterations {refits} of {budget['iterations']}" in line  # type: ignore[index]


def test_summary_of_a_finished_iteration() -> None:
    row = {
        "iteration": 2,
        "walkers": 4,
        "frames": 120,
        "candidates": 9,
        "selected": 3,
        "labelled": 3,
        "heldout_labelled": 2,
        "heldout_rmse_energy_mev_per_atom": 12.34,
        "heldout_rmse_forces_mev_per_ang": 95.4,
        "refit_heldout_rmse_energy_mev_per_atom": 8.0,
        "refit_heldout_rmse_forces_mev_per_ang": 70.2,
        "gamma_median": 1.234,
        "gamma_max": 35.0,
        "survival_fs_mean": 850.0,
        "survival_fs_min": 300.0,
        "walkers_halted": 1,
        "pwx_calls_total": 36,
        "wall_seconds_total": 600.0,
        "stop_reason": None,
    }
    budget = {"pwx_calls": 60, "iterations": 5, "wall_seconds": 3600}
    assert iteration_summary(row, budget, refits_done=2, pwx_calls=40) == (
        "active learning iteration 2: 4 walkers, 120 frames, 9 candidates, 3 selected, "
        "3 labelled | held-out (2) E 12.3 meV/atom, F 95 meV/Å (refit: E 8.0, F 70) | "
        "γ median 1.23, max 35 | MD survival mean 850 fs, min 300 fs, 1 halted | "
        "pw.x calls 40 of 60 (20 left) | iterations 2 of 5 | wall 10m00s of 1h00m"
    )
