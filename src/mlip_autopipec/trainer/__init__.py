"""pacemaker: dataset export, input.yaml, baselines, metrics, active set, calculator."""

from mlip_autopipec.trainer.calculator import load_calculator, load_fit
from mlip_autopipec.trainer.config import DEFAULTS, with_defaults
from mlip_autopipec.trainer.fit import FitResult, fit_potential, next_fit_dir

__all__ = [
    "DEFAULTS",
    "FitResult",
    "fit_potential",
    "load_calculator",
    "load_fit",
    "next_fit_dir",
    "with_defaults",
]
