"""Trainer settings: the recipe's ``trainer`` section with the schema's defaults filled in.

The defaults live only in the recipe schema (``schemas/recipe.schema.json``, section
``trainer``); :func:`with_defaults` fills them for callers that pass a partial section (the
API, tests, benchmarks). :func:`settings_fingerprint` names the physics of a fit.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from mlip_autopipec.errors import TrainerError

BASELINE_TYPES = ("none", "ZBL", "LJ")
BACKENDS = ("pyace", "tensorpot")
REFIT_MODES = ("continue", "fresh")

#: Bumped whenever the generated pacemaker input changes for the same settings (basis shape,
#: loss, reference-energy or ZBL rules), so that the fingerprint of old fits differs.
FIT_SCHEME = 2

#: Settings that change how a fit is run or started but not the potential it aims at.
_NOT_PHYSICS = ("command", "timeout", "refit")
#: Settings of ``reference: isolated_atoms`` only (left out of the fingerprint otherwise, so
#: adding them did not make every fitted-reference run refit).
_ISOLATED_ONLY = ("reference_box_step", "reference_box_max", "reference_box_tolerance")


def _trainer_schema() -> dict[str, Any]:
    from mlip_autopipec.recipe.schema import load_schema

    schema: dict[str, Any] = load_schema()["properties"]["trainer"]
    return schema


def _filled(section: dict[str, Any]) -> dict[str, Any]:
    from mlip_autopipec.recipe.schema import fill_defaults

    out: dict[str, Any] = fill_defaults(section, _trainer_schema())
    return out


#: The schema's defaults of the trainer section (read-only view for benchmarks and docs).
DEFAULTS: dict[str, Any] = _filled({})


def with_defaults(trainer_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``trainer_cfg`` with every missing key set from the schema.

    Raises :class:`TrainerError` for values pacemaker cannot use (the recipe schema
    normally catches these first; this guards direct API callers).
    """
    cfg = copy.deepcopy(trainer_cfg or {})
    if cfg.get("physics_baseline") is None:
        cfg.pop("physics_baseline", None)
    none = DEFAULTS["physics_baseline"]  # the schema's: no baseline
    baseline = cfg.get("physics_baseline", none)
    if not isinstance(baseline, dict) or baseline.get("type", none["type"]) not in BASELINE_TYPES:
        kind = baseline.get("type") if isinstance(baseline, dict) else baseline
        raise TrainerError(
            f"trainer.physics_baseline.type: {kind!r} is not one of {BASELINE_TYPES}"
        )
    if "physics_baseline" in cfg:
        cfg["physics_baseline"] = {**none, **baseline}
    cfg = _filled(cfg)
    if cfg["backend"] not in BACKENDS:
        raise TrainerError(f"trainer.backend: {cfg['backend']!r} is not one of {BACKENDS}")
    if cfg["refit"] not in REFIT_MODES:
        raise TrainerError(f"trainer.refit: {cfg['refit']!r} is not one of {REFIT_MODES}")
    baseline = cfg["physics_baseline"]
    if baseline.get("type") == "LJ":
        missing = [k for k in ("epsilon", "sigma") if k not in baseline]
        if missing:
            raise TrainerError(f"trainer.physics_baseline: LJ needs {', '.join(missing)}")
    if not 0.0 <= float(cfg["test_fraction"]) < 1.0:
        raise TrainerError(f"trainer.test_fraction: {cfg['test_fraction']} is not in [0, 1)")
    for key in ("cutoff", "kappa"):
        if float(cfg[key]) <= 0:
            raise TrainerError(f"trainer.{key}: must be positive, got {cfg[key]}")
    for key in ("batch_size", "max_epochs", "max_basis_size"):
        if int(cfg[key]) < 1:
            raise TrainerError(f"trainer.{key}: must be >= 1, got {cfg[key]}")
    return cfg


def physics_settings(trainer_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that change the fitted potential (baseline included), defaults filled."""
    cfg = with_defaults(trainer_cfg)
    for key in _NOT_PHYSICS:
        cfg.pop(key, None)
    if cfg.get("reference") != "isolated_atoms":
        for key in _ISOLATED_ONLY:
            cfg.pop(key, None)
    if cfg.get("elements") is not None:
        cfg["elements"] = sorted(cfg["elements"])
    return {"fit_scheme": FIT_SCHEME, **cfg}


#: When the optimiser stops: a fit may continue from a potential that differs only here
#: (e.g. the final fit after active learning's capped fits, ``trainer.refit: continue``).
_STOPPING = ("max_epochs", "min_loss_change", "loss_patience")


def continuation_fingerprint(trainer_cfg: dict[str, Any] | None) -> str:
    """:func:`settings_fingerprint` without the optimiser's stopping rule (``max_epochs``,
    ``min_loss_change``, ``loss_patience``): equal for two fits of the same basis, loss and
    data preparation, so one may start from the other's coefficients."""
    cfg = physics_settings(trainer_cfg)
    for key in _STOPPING:
        cfg.pop(key, None)
    return _short_hash(cfg)


def settings_fingerprint(trainer_cfg: dict[str, Any] | None) -> str:
    """A short hash of every trainer setting that changes the fit, the baseline included.

    Two sections with equal fingerprints give the same potential on the same data (up to
    the fit's own numerics); ``command``, ``timeout`` and ``refit`` do not count. The
    pipeline stores it with each potential and refits when the recipe's value differs.
    """
    return _short_hash(physics_settings(trainer_cfg))


def _short_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
