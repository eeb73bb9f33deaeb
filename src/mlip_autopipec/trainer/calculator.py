"""An ASE calculator for a trained run directory: ACE + physics baseline + reference energies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.trainer.baseline import AceWithBaseline, ReferenceEnergies, baseline_calculator
from mlip_autopipec.trainer.result import CURRENT_JSON, POTENTIAL_JSON, FitResult


def find_fit(run_dir: str | Path) -> Path:
    """The fit folder of ``run_dir``: the folder itself if it holds ``potential.json``;
    in a run directory the store's current potential (the one record, as ``status``
    shows it); else the one ``trainer/current.json`` (or ``current.json``) points to."""
    root = Path(run_dir)
    if (root / POTENTIAL_JSON).is_file():
        return root
    from mlip_autopipec.lifecycle.store import DB_NAME, Store

    if (root / DB_NAME).is_file():
        with Store.open(root, create=False) as store:
            current = store.current_potential()
        if current is None:
            raise TrainerError(f"{root}: no potential recorded yet; run the training step first")
        target = root / current["fit_dir"]
        if not (target / POTENTIAL_JSON).is_file():
            raise TrainerError(f"{root}: the current potential's {target} has no {POTENTIAL_JSON}")
        return target
    for pointer in (root / "trainer" / CURRENT_JSON, root / CURRENT_JSON):
        if pointer.is_file():
            try:
                target = pointer.parent / json.loads(pointer.read_text())["fit_dir"]
            except (ValueError, KeyError, TypeError) as exc:
                raise TrainerError(f"{pointer}: unreadable pointer to the current fit") from exc
            if not (target / POTENTIAL_JSON).is_file():
                raise TrainerError(f"{pointer} points to {target}, which has no {POTENTIAL_JSON}")
            return target
    raise TrainerError(
        f"{root}: no trained potential found (no {POTENTIAL_JSON} and no "
        f"trainer/{CURRENT_JSON}); run the recipe's training step first"
    )


def load_fit(run_dir: str | Path) -> FitResult:
    """The :class:`FitResult` of the latest fit of ``run_dir`` (see :func:`find_fit`)."""
    fit_dir = find_fit(run_dir)
    path = fit_dir / POTENTIAL_JSON
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return FitResult.from_dict(data, fit_dir.resolve())
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainerError(f"{path}: unreadable potential record: {exc}") from exc


def load_calculator(run_dir: str | Path, extrapolation: bool = False) -> Calculator:
    """ASE calculator of the latest potential of ``run_dir`` (or of a fit folder).

    Returns ACE + the additive physics baseline (LJ) + the per-element reference energies
    (inside the .yace as its E0 values, or added here for fits that predate that), so
    energies are totals comparable with pw.x's. With ``extrapolation=True`` the active
    set is loaded and ``calc.results["gamma"]`` holds per-atom extrapolation grades.
    """
    from pyace import PyACECalculator

    fit = load_fit(run_dir)
    if extrapolation:
        if fit.asi is None or not fit.asi.is_file():
            raise TrainerError(f"{fit.workdir}: no active set (.asi) for extrapolation grades")
        # Grades need the B-basis (.yaml); the .yace C-tilde form has no projections.
        ace = PyACECalculator(str(fit.potential_yaml))
        ace.set_active_set(str(fit.asi))
    else:
        ace = PyACECalculator(str(fit.yace))
    additive: list[Calculator] = []
    base = baseline_calculator(fit.baseline)
    if base is not None:
        additive.append(base)
    if extrapolation or not fit.reference_in_yace:
        # The B-basis (.yaml) and .yace files of older fits carry no E0 values.
        additive.append(ReferenceEnergies(fit.baseline["reference_energies"]))
    return AceWithBaseline(ace, additive, extrapolation=extrapolation)
