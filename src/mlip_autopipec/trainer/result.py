"""The record of one fitted potential (``potential.json``) and the names of a fit folder."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

POTENTIAL_JSON = "potential.json"
CURRENT_JSON = "current.json"
INPUT_YAML = "input.yaml"
FIT_INPUTS_JSON = "fit_inputs.json"
EXECUTE_JSON = "execute.json"
LOG = "pacemaker.log"
POTENTIAL_YAML = "output_potential.yaml"
POTENTIAL_YACE = "output_potential.yace"
POTENTIAL_ASI = "output_potential.asi"
INITIAL_YAML = "initial_potential.yaml"
TRAIN_FILE = "train.pckl.gzip"
TEST_FILE = "test.pckl.gzip"

_PATHS = ("yace", "asi", "potential_yaml", "input_yaml", "log", "initial_potential")


@dataclass(frozen=True)
class FitResult:
    """Everything about one fitted potential. Paths are absolute; errors are RMSEs.

    ``rmse_energy_mev_per_atom`` and ``rmse_forces_mev_per_ang`` map ``"train"``/``"test"``
    to meV/atom and meV/Å (force components); ``test`` is None without a test set.
    ``baseline`` holds the physics baseline, the per-element ``reference_energies`` (eV)
    that were subtracted before fitting and how they were chosen, the ZBL ``pairs`` cutoffs,
    and what the ``.yace`` holds by itself (``in_yace``) and what it lacks (``not_in_yace``).

    ``converged``: the optimiser stopped on its own criterion (not on ``max_epochs``);
    ``iterations`` and ``loss_history`` (train loss per iteration, the learning curve) come
    from pacemaker's log; ``status_message`` is the optimiser's verdict. ``asi`` is None when
    the active set could not be built (then extrapolation grades are unavailable; a note
    says why). ``settings`` are the trainer settings the fit used (defaults filled) and
    ``settings_fingerprint`` their :func:`~mlip_autopipec.trainer.config.settings_fingerprint`.
    ``reference_in_yace``: the reference energies are the ``.yace``'s E0 values, so the
    ``.yace`` alone gives total energies.
    """

    workdir: Path
    yace: Path
    asi: Path | None
    potential_yaml: Path
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    rmse_energy_mev_per_atom: dict[str, float | None]
    rmse_forces_mev_per_ang: dict[str, float | None]
    baseline: dict[str, Any]
    pacemaker_version: str
    wall_time: float
    input_yaml: Path
    log: Path
    backend: str = "pyace"
    metrics_source: dict[str, str] = field(default_factory=dict)
    #: Things the user should know that did not stop the fit.
    notes: tuple[str, ...] = ()
    converged: bool = False
    iterations: int = 0
    loss_history: list[float] = field(default_factory=list)
    status_message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    settings_fingerprint: str = ""
    basis_size: int | None = None
    initial_potential: Path | None = None
    reference_in_yace: bool = False

    @property
    def convergence_note(self) -> str | None:
        """A sentence for the run output, status and report when the fit did not converge."""
        if self.converged:
            return None
        limit = self.settings.get("max_epochs", "?")
        verdict = (self.status_message or "no optimiser verdict").rstrip(". ")
        return (
            f"the fit did not converge: {verdict} after "
            f"{self.iterations} iterations (trainer.max_epochs {limit}); the potential is kept "
            "but may be under-fitted: raise trainer.max_epochs"
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every note, the convergence note included: what the pipeline prints."""
        note = self.convergence_note
        return (*self.notes, *([note] if note else []))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; paths relative to ``workdir`` so a run directory can be moved."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = os.path.relpath(value, self.workdir) if key != "workdir" else str(value)
        out["train_ids"] = list(self.train_ids)
        out["notes"] = list(self.notes)
        out["test_ids"] = list(self.test_ids)
        out["loss_history"] = list(self.loss_history)
        out["convergence_note"] = self.convergence_note
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], workdir: Path) -> FitResult:
        """Inverse of :meth:`to_dict` for a fit folder found at ``workdir``.

        Records written before a field existed load with that field's default; unknown keys
        (from a newer version) are ignored.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["workdir"] = workdir
        for key in _PATHS:
            kwargs[key] = workdir / data[key] if data.get(key) is not None else None
        kwargs["train_ids"] = tuple(data["train_ids"])
        kwargs["test_ids"] = tuple(data["test_ids"])
        kwargs["notes"] = tuple(data.get("notes", ()))
        kwargs["loss_history"] = [float(v) for v in data.get("loss_history", ())]
        return cls(**kwargs)
