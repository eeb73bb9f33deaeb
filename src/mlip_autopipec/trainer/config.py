"""Trainer settings: the recipe's ``trainer`` section with defaults filled in."""

from __future__ import annotations

import copy
from typing import Any

from mlip_autopipec.errors import TrainerError

#: Defaults chosen to fit ~50 small structures in about a minute on 2 cores with the CPU
#: ``pyace`` backend (see bench/train_time.py). The recipe schema carries the same values.
DEFAULTS: dict[str, Any] = {
    "engine": "pacemaker",
    "command": "pacemaker",
    "backend": "pyace",
    "cutoff": 5.0,
    "elements": None,  # None: the elements found in the data
    "batch_size": 50,
    "max_epochs": 60,  # BFGS iterations; ~0.6 s each for 40 small cells on one core
    "kappa": 0.3,
    "max_basis_size": 30,
    "ladder_step": None,
    "physics_baseline": {"type": "none"},
    "test_fraction": 0.2,
    "seed": 42,
    "timeout": 3600,
}

BASELINE_TYPES = ("none", "ZBL", "LJ")
BACKENDS = ("pyace", "tensorpot")


def with_defaults(trainer_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``trainer_cfg`` with every missing key set from :data:`DEFAULTS`.

    Raises :class:`TrainerError` for values pacemaker cannot use (the recipe schema
    normally catches these first; this guards direct API callers).
    """
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(trainer_cfg or {}))
    if cfg["backend"] not in BACKENDS:
        raise TrainerError(f"trainer.backend: {cfg['backend']!r} is not one of {BACKENDS}")
    baseline = cfg["physics_baseline"] or {"type": "none"}
    if baseline.get("type", "none") not in BASELINE_TYPES:
        raise TrainerError(
            f"trainer.physics_baseline.type: {baseline.get('type')!r} "
            f"is not one of {BASELINE_TYPES}"
        )
    if baseline.get("type") == "LJ":
        missing = [k for k in ("epsilon", "sigma") if k not in baseline]
        if missing:
            raise TrainerError(f"trainer.physics_baseline: LJ needs {', '.join(missing)}")
    cfg["physics_baseline"] = {"type": "none", **baseline}
    if not 0.0 <= float(cfg["test_fraction"]) < 1.0:
        raise TrainerError(f"trainer.test_fraction: {cfg['test_fraction']} is not in [0, 1)")
    for key in ("cutoff", "kappa"):
        if float(cfg[key]) <= 0:
            raise TrainerError(f"trainer.{key}: must be positive, got {cfg[key]}")
    for key in ("batch_size", "max_epochs", "max_basis_size"):
        if int(cfg[key]) < 1:
            raise TrainerError(f"trainer.{key}: must be >= 1, got {cfg[key]}")
    return cfg
