"""Fit an ACE potential: the convenience entry over the trainer template.

:func:`fit_potential` runs a :class:`~mlip_autopipec.trainer.template.Trainer` (by default
:class:`~mlip_autopipec.trainer.pacemaker.PacemakerTrainer`) through write inputs, execute
and read results, then records the result as ``workdir / "potential.json"``. After a
successful fit ``workdir.parent / "current.json"`` points at ``workdir`` (relative); the
fit folder layout is described in :mod:`mlip_autopipec.trainer.pacemaker`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ase import Atoms

from mlip_autopipec.fsutil import atomic_write_json
from mlip_autopipec.trainer.baseline import REF_GIVEN
from mlip_autopipec.trainer.config import with_defaults
from mlip_autopipec.trainer.pacemaker import (
    PacemakerTrainer,
    resolve_command,
)
from mlip_autopipec.trainer.result import (
    CURRENT_JSON,
    INPUT_YAML,
    LOG,
    POTENTIAL_ASI,
    POTENTIAL_JSON,
    POTENTIAL_YACE,
    POTENTIAL_YAML,
    TEST_FILE,
    TRAIN_FILE,
    FitResult,
)
from mlip_autopipec.trainer.template import Trainer, TrainerProfile

__all__ = [
    "CURRENT_JSON",
    "INPUT_YAML",
    "LOG",
    "POTENTIAL_ASI",
    "POTENTIAL_JSON",
    "POTENTIAL_YACE",
    "POTENTIAL_YAML",
    "TEST_FILE",
    "TRAIN_FILE",
    "FitResult",
    "fit_potential",
    "next_fit_dir",
    "resolve_command",
]


def fit_potential(
    atoms_list: list[Atoms],
    trainer_cfg: dict[str, Any],
    workdir: Path,
    initial_potential: Path | None = None,
    trainer: Trainer | None = None,
    execute: Callable[[Trainer, Path, TrainerProfile], object] | None = None,
    reference: Mapping[str, float] | None = None,
    reference_record: Mapping[str, Any] | None = None,
) -> FitResult:
    """Fit an ACE potential to ``atoms_list`` with pacemaker in ``workdir``.

    ``atoms_list``: labelled structures (SinglePointCalculator with energy and forces, ASE
    units) with ``atoms.info["structure_id"]``. ``trainer_cfg``: the recipe's trainer section
    (missing keys take the schema's defaults). ``workdir``: the fit folder, normally
    ``RUN_DIR/trainer/fit-NNN`` (see :func:`next_fit_dir`). ``initial_potential``: a previous
    fit folder (or its ``output_potential.yaml``) to continue from when ``trainer.refit`` is
    ``continue`` and its elements and settings fingerprint match; otherwise the fit starts
    fresh and a note says why. ``reference``: per-element reference energies (eV) to use
    instead of fitted ones (``trainer.reference: isolated_atoms``: pw.x isolated atoms);
    ``reference_record``: what to record of them (``baseline.isolated_atoms`` in
    potential.json, when the fit used them).

    Raises :class:`TrainerError` (with the log path) when pacemaker or its converter fail,
    time out or leave no potential; nothing outside ``workdir`` is touched in that case.
    A fit that reached ``max_epochs`` or has no active set is returned with a note.
    ``execute(trainer, workdir, profile)`` runs the execute step (the run's executor:
    ``stages.train`` sends it to the pilot job on Parsl); None runs it here.
    """
    cfg = with_defaults(trainer_cfg)
    workdir = Path(workdir).resolve()
    backend: Trainer = trainer if trainer is not None else PacemakerTrainer()
    if reference is None:
        backend.write_inputs(atoms_list, cfg, workdir, initial_potential)
    else:
        backend.write_inputs(atoms_list, cfg, workdir, initial_potential, reference=reference)
    if execute is None:
        backend.execute(workdir, backend.profile(cfg))
    else:
        execute(backend, workdir, backend.profile(cfg))
    fit = backend.read_results(workdir)
    if reference_record is not None and fit.baseline.get("reference_method") == REF_GIVEN:
        fit.baseline["isolated_atoms"] = dict(reference_record)
    atomic_write_json(workdir / POTENTIAL_JSON, fit.to_dict())
    # Only a complete fit moves the pointer: a failed rerun leaves the previous one current.
    atomic_write_json(
        workdir.parent / CURRENT_JSON,
        {"fit_dir": workdir.name, "potential": f"{workdir.name}/{POTENTIAL_JSON}"},
    )
    return fit


def next_fit_dir(run_dir: Path) -> Path:
    """A new, unused fit folder ``RUN_DIR/trainer/fit-NNN``."""
    trainer = Path(run_dir) / "trainer"
    numbers = [
        int(p.name[4:]) for p in trainer.glob("fit-*") if p.is_dir() and p.name[4:].isdigit()
    ]
    return trainer / f"fit-{max(numbers, default=0) + 1:03d}"
