"""The trainer interface: write inputs, execute, read results (ASE's CalculatorTemplate shape).

A :class:`Trainer` turns labelled structures into a fit folder in three steps that each
read only what the previous one left on disk, so a step can be rerun on its own:

* ``write_inputs(dataset, settings, workdir, initial_potential=None)``: every input file
  plus ``fit_inputs.json`` (split, reference energies, baseline, settings, notes);
* ``execute(workdir, profile)``: run the fitting program and its converters;
* ``read_results(workdir) -> FitResult``: parse what the program left.

A *profile* says how to launch the program (argv, time limit), as ASE's profiles do; the
settings say what to fit. :class:`~mlip_autopipec.trainer.pacemaker.PacemakerTrainer` is
the implementation; a second backend implements the same three methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ase import Atoms

from mlip_autopipec.trainer.result import FitResult


@dataclass(frozen=True)
class TrainerProfile:
    """How to start a trainer program: argv prefix and wall-time limit (seconds)."""

    argv: tuple[str, ...]
    timeout: float


class Trainer(Protocol):
    """Write inputs / execute / read results for one fit folder."""

    name: str

    def profile(self, settings: Mapping[str, Any]) -> TrainerProfile:
        """How to launch the program for these (filled-in) trainer settings."""

    def write_inputs(
        self,
        dataset: Sequence[Atoms],
        settings: Mapping[str, Any],
        workdir: Path,
        initial_potential: Path | None = None,
        reference: Mapping[str, float] | None = None,
    ) -> None:
        """Validate ``dataset`` and write every input of the fit into ``workdir``
        (``reference``: given per-element reference energies instead of fitted ones)."""

    def execute(self, workdir: Path, profile: TrainerProfile) -> None:
        """Run the fit in ``workdir`` (inputs written by :meth:`write_inputs`)."""

    def read_results(self, workdir: Path) -> FitResult:
        """The :class:`FitResult` of the finished fit in ``workdir``."""
