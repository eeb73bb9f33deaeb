"""The exception tree and the exit codes. Every user-facing error says where, what, and
what to do.

The CLI maps these to exit codes: ``RecipeError``/``UsageError``/``RunLockedError`` -> 2,
``RunFailedError`` -> 1; anything else is a bug and is reported as one (exit 3, after every
structure in flight was requeued).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The exit codes of ``autopipec`` (the one definition; cli and pipeline use these).
EXIT_OK = 0
#: The run finished, with failures to look at (quarantined structures, a failed fit).
EXIT_FAILED = 1
#: Bad recipe, arguments or run directory, or the run directory is locked.
EXIT_USAGE = 2
#: A bug: one line with a bug-report hint; structures in flight were requeued.
EXIT_INTERNAL = 3


def exit_code_for_signal(signum: int) -> int:
    """128 + signal number (130 for SIGINT, 143 for SIGTERM), as shells report it."""
    return 128 + signum


class AutopipecError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_FAILED


class UsageError(AutopipecError):
    """Bad command-line arguments or an unusable path."""

    exit_code = EXIT_USAGE


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

    exit_code = EXIT_USAGE

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class RunLockedError(AutopipecError):
    """Another live runner holds the run directory."""

    exit_code = EXIT_USAGE


class RunEnvironmentError(UsageError):
    """The run directory or a file the run needs is unusable: damaged or empty database,
    full disk, read-only folder, a pseudopotential that vanished mid-run. Nothing finished
    is lost; fix the cause and rerun to resume."""

    exit_code = EXIT_USAGE


class RecipeChangedError(AutopipecError):
    """The recipe changed in a way that invalidates existing labels."""

    exit_code = EXIT_USAGE


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

    exit_code = EXIT_FAILED


class Interrupted(AutopipecError):
    """SIGINT/SIGTERM received; the runner stopped gracefully."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = exit_code_for_signal(signum)
        super().__init__(f"interrupted by signal {signum}")
