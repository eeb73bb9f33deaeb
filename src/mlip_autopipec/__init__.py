"""mlip-autopipec: one YAML recipe in, a trained ACE interatomic potential out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from mlip_autopipec.api import Run, labelled_structures, open_run, run, status

__all__ = [
    "Run",
    "__version__",
    "labelled_structures",
    "load_calculator",
    "open_run",
    "run",
    "status",
]

if TYPE_CHECKING:
    from pathlib import Path


def load_calculator(run_dir: str | Path, *, extrapolation: bool = False) -> Any:
    """Return an ASE calculator (ACE + physics baseline) for a trained run directory.

    With ``extrapolation=True`` the calculator also fills ``calc.results["gamma"]``,
    the per-atom extrapolation grade computed from the run's active set.
    """
    from mlip_autopipec.trainer.calculator import load_calculator as _load

    return _load(run_dir, extrapolation=extrapolation)
