"""The loop's stop rule: a pure function of the per-iteration figures.

Converged when, for ``consecutive`` iterations in a row (2), at least ``survive_fraction`` of
the frames explored at the hottest condition stayed at or below ``gamma_select``, no walker
halted (gamma above ``gamma_halt`` or atoms too close), and the held-out errors of the
exploring potential are at or below the targets. Otherwise the loop stops when a budget
(pw.x calls, iterations, wall seconds; None = unlimited) is spent: "stopped by budget, not
converged".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IterationFigures:
    """What one finished exploration iteration measured (cumulative counts where named)."""

    iteration: int
    frames_hot: int
    frames_hot_below_select: int
    walkers_halted: int
    heldout_rmse_energy_mev_per_atom: float | None
    heldout_rmse_forces_mev_per_ang: float | None
    pwx_calls_total: int
    wall_seconds_total: float

    @property
    def survive_fraction(self) -> float:
        """Fraction of hottest-condition frames at or below the selection threshold."""
        return self.frames_hot_below_select / self.frames_hot if self.frames_hot else 0.0


@dataclass(frozen=True)
class StopDecision:
    """``stop``: end the loop; ``converged``: it ended because the rule holds."""

    stop: bool
    converged: bool
    reason: str


def iteration_holds(fig: IterationFigures, settings: dict[str, Any]) -> bool:
    """Whether one iteration meets the convergence criteria of ``settings``
    (the filled-in ``active_learning`` section)."""
    targets = settings["targets"]
    e, f = fig.heldout_rmse_energy_mev_per_atom, fig.heldout_rmse_forces_mev_per_ang
    return (
        fig.frames_hot > 0
        and fig.survive_fraction >= float(settings["survive_fraction"])
        and fig.walkers_halted == 0
        and e is not None
        and f is not None
        and e <= float(targets["energy_mev_per_atom"])
        and f <= float(targets["forces_mev_per_ang"])
    )


def budget_spent(
    iterations_done: int, pwx_calls: int, wall_seconds: float, budget: dict[str, Any]
) -> str | None:
    """Which budget is spent (a readable phrase), or None."""
    limit = budget.get("iterations")
    if limit is not None and iterations_done >= int(limit):
        return f"{iterations_done} of {limit} iterations"
    limit = budget.get("pwx_calls")
    if limit is not None and pwx_calls >= int(limit):
        return f"{pwx_calls} of {limit} pw.x calls"
    limit = budget.get("wall_seconds")
    if limit is not None and wall_seconds >= float(limit):
        return f"{wall_seconds:.0f} of {limit} wall seconds"
    return None


def should_stop(
    figures: Sequence[IterationFigures],
    settings: dict[str, Any],
    *,
    refits_done: int,
    consecutive: int = 2,
) -> StopDecision:
    """Apply the stop rule to the figures of every measured iteration, oldest first.

    ``refits_done`` counts the select-label-refit cycles finished so far (what the
    ``iterations`` budget limits); convergence is checked before any budget.
    """
    last = list(figures)[-consecutive:]
    if len(last) == consecutive and all(iteration_holds(f, settings) for f in last):
        first = last[0].iteration
        return StopDecision(
            True, True, f"converged: iterations {first}-{last[-1].iteration} met every target"
        )
    if figures:
        tail = figures[-1]
        spent = budget_spent(
            refits_done, tail.pwx_calls_total, tail.wall_seconds_total, settings["budget"]
        )
        if spent is not None:
            return StopDecision(True, False, f"stopped by budget, not converged ({spent})")
    return StopDecision(False, False, "continue")
