"""pacemaker: dataset export, input.yaml, baselines, metrics, active set, calculator."""

from mlip_autopipec.trainer.calculator import load_calculator, load_fit
from mlip_autopipec.trainer.config import DEFAULTS, settings_fingerprint, with_defaults
from mlip_autopipec.trainer.fit import FitResult, fit_potential, next_fit_dir
from mlip_autopipec.trainer.pacemaker import PacemakerTrainer
from mlip_autopipec.trainer.template import Trainer, TrainerProfile

__all__ = [
    "DEFAULTS",
    "FitResult",
    "PacemakerTrainer",
    "Trainer",
    "TrainerProfile",
    "fit_potential",
    "load_calculator",
    "load_fit",
    "next_fit_dir",
    "settings_fingerprint",
    "with_defaults",
]
