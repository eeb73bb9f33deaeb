"""Generate pacemaker's ``input.yaml`` from the recipe's trainer section.

Keys follow python-ace 0.4.0rc1 (``pyace/cli/pacemaker.py``, ``generalfit.py``,
``multispecies_basisextension.py``); the tests load the result with pacemaker's own
``--dry-run``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

#: A deliberately small basis shape. The pyace backend differentiates by finite differences,
#: so each iteration costs (number of parameters + 1) evaluations; the radial coefficients
#: (nradmax x (lmax+1) x nradbase) dominate that count, hence nradbase 6 rather than
#: pacemaker's template 15 (measured on 50 Si cells: 84 instead of 141 parameters, same
#: test error). ``max_basis_size`` then limits the number of functions.
FUNCTIONS_ALL = {"nradmax_by_orders": [6, 3, 2, 1], "lmax_by_orders": [0, 2, 2, 1]}

#: One linear density (F(rho) = rho): half the coefficients of the template's two densities;
#: on the 50-cell Si benchmark it fitted as well (test 20 vs 24 meV/atom).
EMBEDDING_ALL = {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1], "ndensity": 1}

#: Spline resolution (Å). 0.01 is ~10x cheaper per evaluation than pacemaker's 0.001 default
#: with negligible accuracy cost for fitting (measured by the team).
DELTA_SPLINE_BINS = 0.01


def build_input(
    cfg: Mapping[str, Any],
    *,
    elements: Sequence[str],
    train_file: str,
    test_file: str | None,
    metadata: Mapping[str, Any] | None = None,
    basis_size: int | None = None,
    zbl: Mapping[str, Mapping[str, Any]] | None = None,
    initial_potential: str | None = None,
) -> dict[str, Any]:
    """pacemaker's input as a dict; ``cfg`` is the trainer section with defaults filled in.

    ``basis_size``: functions per element (default ``cfg["max_basis_size"]``; the trainer
    caps it by the number of atomic environments). ``zbl``: per-pair inner cutoffs from
    :func:`mlip_autopipec.trainer.zbl.zbl_cutoffs` (computed here when the baseline is ZBL
    and none are given). ``initial_potential``: a B-basis YAML (relative to the fit folder)
    whose shape and coefficients the fit continues from (pacemaker's ``potential.filename``).
    """
    baseline = cfg["physics_baseline"]
    bonds: dict[str, Any] = {
        "radbase": "SBessel",
        "radparameters": [5.25],
        "rcut": float(cfg["cutoff"]),
        "dcut": 0.01,
        "NameOfCutoffFunction": "cos",
    }
    fit: dict[str, Any] = {
        "loss": {"kappa": float(cfg["kappa"]), "L1_coeffs": 1e-8, "L2_coeffs": 1e-8},
        "optimizer": "BFGS",
        "maxiter": int(cfg["max_epochs"]),
    }
    if cfg.get("min_loss_change") is not None:
        # pacemaker's own stop: over `patience` iterations no train-loss decrease larger
        # than this fraction per iteration (generalfit.detect_early_stopping).
        fit["min_relative_train_loss_per_iter"] = float(cfg["min_loss_change"])
        fit["early_stopping_patience"] = int(cfg["loss_patience"])
    if cfg.get("ladder_step") is not None:
        fit["ladder_step"] = cfg["ladder_step"]
        fit["ladder_type"] = "power_order"
    per_pair: dict[str, dict[str, Any]] = {}
    if baseline["type"] == "ZBL":
        from mlip_autopipec.trainer.zbl import bonds_per_pair, zbl_cutoffs

        # ZBL below r_in - delta_in, switching to ACE at r_in, per pair: active during the
        # fit too (pacemaker's radial functions carry one inner-cutoff type for all pairs).
        per_pair = bonds_per_pair(zbl if zbl is not None else zbl_cutoffs(baseline, elements))
    data: dict[str, Any] = {"filename": train_file}
    if test_file is not None:
        data["test_filename"] = test_file
    backend: dict[str, Any] = {
        "evaluator": cfg["backend"],
        "batch_size": int(cfg["batch_size"]),
        "display_step": 10,
    }
    if cfg["backend"] == "pyace":
        backend["parallel_mode"] = "serial"
    potential: dict[str, Any]
    if initial_potential is not None:
        # The previous potential is the target: same shape, its coefficients as the start
        # (a ladder would restart from an empty basis instead).
        potential = {"filename": initial_potential}
        fit.pop("ladder_step", None)
        fit.pop("ladder_type", None)
    else:
        potential = {
            "deltaSplineBins": DELTA_SPLINE_BINS,
            "elements": list(elements),
            "embeddings": {"ALL": dict(EMBEDDING_ALL)},
            "bonds": {"ALL": bonds, **per_pair},
            "functions": {
                "number_of_functions_per_element": int(basis_size or cfg["max_basis_size"]),
                "ALL": dict(FUNCTIONS_ALL),
            },
        }
    return {
        "seed": int(cfg["seed"]),
        # pacemaker copies metadata into the potential; values must be strings there.
        "metadata": {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()
        },
        "potential": potential,
        "data": data,
        "fit": fit,
        "backend": backend,
    }


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text of ``data`` (block style, keys in insertion order)."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(dict(data), buf)
    return buf.getvalue()


def write_input(data: Mapping[str, Any], path: Path) -> None:
    """Write ``input.yaml``."""
    path.write_text(dump_yaml(data))
