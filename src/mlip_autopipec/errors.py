"""The exception tree. Every user-facing error says where, what, and what to do.

The CLI maps these to exit codes: ``RecipeError``/``UsageError``/``RunLockedError`` -> 2,
``RunFailedError`` -> 1; anything else is a bug and is reported as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class AutopipecError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class UsageError(AutopipecError):
    """Bad command-line arguments or an unusable path."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One located problem in a recipe, printed GCC style."""

    path: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.severity}: {self.message}"


class RecipeError(AutopipecError):
    """A recipe failed to load or validate; carries every diagnostic found."""

    exit_code = 2

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class RunLockedError(AutopipecError):
    """Another live runner holds the run directory."""

    exit_code = 2


class RecipeChangedError(AutopipecError):
    """The recipe changed in a way that invalidates existing labels."""

    exit_code = 2


class OracleError(AutopipecError):
    """pw.x could not be run at all (not a per-structure failure: those are diagnoses)."""


class TrainerError(AutopipecError):
    """pacemaker failed; labels are untouched and a rerun retries training only."""

    def __init__(self, message: str, workdir: Path | None = None):
        self.workdir = workdir
        where = f"{workdir}: " if workdir is not None else ""
        super().__init__(f"{where}{message}")


class RunFailedError(AutopipecError):
    """The run finished but some structures were quarantined or a stage failed."""

    exit_code = 1


class Interrupted(AutopipecError):
    """SIGINT/SIGTERM received; the runner stopped gracefully."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")
