"""Diagnosis of one finished pw.x attempt: exactly one failure class per attempt.

Parsing is pure text matching on the exit code, ``espresso.pwo``, ``espresso.err`` and
pw.x's ``CRASH`` file. The message -> class table and the classes themselves live in
:mod:`mlip_autopipec.oracle.failures` (``ERROR_RULES``, ``OUTPUT_RULES``: lists, so the
order is the precedence); this module extracts the messages and applies the stages below
in order (``Modules/error_handler.f90`` prints ``Error in routine NAME (N):`` followed by
the message; ``N`` changes from run to run, e.g. ``cdiaghg (35)`` / ``cdiaghg (39)``).

Stages (first match wins), so that every attempt gets exactly one class:

1. an ``Error in routine`` block (in ``.pwo``, else in ``CRASH``, else in ``.err``):
   classified by ``failures.ERROR_RULES``;
2. a message of ``failures.OUTPUT_RULES`` in ``.pwo`` or ``.err`` (``Maximum CPU time
   exceeded`` -> ``walltime``, ...);
3. ``convergence has been achieved`` and ``JOB DONE.`` with a zero exit code, or killed
   by our timeout after it had written both -> ``converged`` (a complete output wins
   over the walltime flag);
4. our own timeout killed the process -> ``walltime``;
5. ``convergence NOT achieved`` -> ``scf_not_converged``;
6. memory messages or death by SIGKILL without a message -> ``out_of_memory``;
7. anything else (non-zero exit, truncated or garbage output) -> ``crashed``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from mlip_autopipec.oracle.failures import (
    OUT_OF_MEMORY_RE,
    PERMANENT,
    RETRYABLE,
    FailureClass,
    classify_error,
    match_output,
)

__all__ = [
    "PERMANENT",
    "RETRYABLE",
    "Diagnosis",
    "FailureClass",
    "ScfInfo",
    "diagnose",
    "parse_scf",
    "parse_printed",
    "parse_version",
]


# --- output markers -------------------------------------------------------------------

#: ``Error in routine cdiaghg (35):`` -- the number varies between runs.
ERROR_ROUTINE_RE: Final = re.compile(r"^\s*Error in routine\s+(\S+)\s*\(\s*(-?\d+)\s*\):\s*$", re.M)
#: The CRASH file's form of the same: ``from cdiaghg : error #        35``.
CRASH_ROUTINE_RE: Final = re.compile(r"^\s*from\s+(\S+)\s*:\s*error\s*#\s*(-?\d+)\s*$", re.M)
CONVERGED_RE: Final = re.compile(r"^\s*convergence has been achieved in\s+(\d+)\s+iterations", re.M)
NOT_CONVERGED_RE: Final = re.compile(
    r"^\s*convergence NOT achieved after\s+(\d+)\s+iterations.*$", re.M
)
SCF_ITERATION_RE: Final = re.compile(r"^\s*iteration #\s*(\d+)\s+ecut=", re.M)
SCF_ACCURACY_RE: Final = re.compile(r"^\s*estimated scf accuracy\s+<\s+([-+0-9.EeDd]+)\s+Ry", re.M)
#: The final (``!``) block repeats the last accuracy; only iteration blocks are counted.
FINAL_ENERGY_RE: Final = re.compile(r"^!\s+total energy", re.M)
JOB_DONE_RE: Final = re.compile(r"JOB DONE\.")
PW_VERSION_RE: Final = re.compile(r"^\s*Program PWSCF\s+v\.(\S+)", re.M)
#: ``number of Kohn-Sham states=            8`` (pw.x's nbnd, printed at every verbosity).
KS_STATES_RE: Final = re.compile(r"^\s*number of Kohn-Sham states=\s*(\d+)", re.M)
END_OF_SCF_RE: Final = re.compile(r"^\s*End of self-consistent calculation", re.M)
#: With ``verbosity='high'`` pw.x prints, per k-point (and spin), the band energies and
#: then ``occupation numbers`` (0..1, Marzari-Vanderbilt may overshoot slightly).
OCCUPATIONS_RE: Final = re.compile(
    r"^\s*occupation numbers\s*\n((?:[ \t]*[-+0-9.Ee]+[ \t\d.Ee+-]*\n)+)", re.M
)

#: Fortran runtime errors and signals that pw.x prints when it dies without an error block.
FORTRAN_RUNTIME_RE: Final = re.compile(
    r"^.*(Program received signal \w+.*|Fortran runtime error.*|Segmentation fault.*)$", re.M
)

#: pw.x's exit code when it stops on ``convergence NOT achieved`` (``STOP 2`` in QE >= 6.6).
EXIT_NOT_CONVERGED: Final = 2


@dataclass(frozen=True)
class Diagnosis:
    """The one failure class of a finished attempt and the exact pw.x message line(s)."""

    failure_class: str
    message: str

    @property
    def ok(self) -> bool:
        return self.failure_class == FailureClass.CONVERGED


@dataclass(frozen=True)
class ScfInfo:
    """What the SCF loop of one ``.pwo`` says (units: eV)."""

    n_scf: int
    scf_history_ev: tuple[float, ...]

    @property
    def scf_accuracy_ev(self) -> float | None:
        return self.scf_history_ev[-1] if self.scf_history_ev else None


def _float(text: str) -> float | None:
    try:
        value = float(text.replace("D", "E").replace("d", "e"))
    except ValueError:
        # pw.x prints '*****' when the number does not fit the format
        return None
    return value if math.isfinite(value) else None


def parse_scf(pwo_text: str) -> ScfInfo:
    """Iteration count and estimated SCF accuracy per iteration (Ry converted to eV).

    Only the accuracies inside iteration blocks count: the final ``!`` block repeats the
    converged value and is not a new iteration.
    """
    # ASE's Rydberg (imported here: the text classification itself needs no ASE)
    from ase.units import Ry

    end = FINAL_ENERGY_RE.search(pwo_text)
    body = pwo_text[: end.start()] if end else pwo_text
    iterations = [int(m.group(1)) for m in SCF_ITERATION_RE.finditer(body)]
    matches = list(SCF_ACCURACY_RE.finditer(body))
    if end is not None:
        # the converged accuracy is printed in the ``!`` block only
        tail = SCF_ACCURACY_RE.search(pwo_text, end.start())
        if tail is not None:
            matches.append(tail)
    # unprintable values ('*****') are left out: the history stays JSON-safe and finite
    values = (_float(m.group(1)) for m in matches)
    history = tuple(v * Ry for v in values if v is not None)
    return ScfInfo(n_scf=max(iterations, default=0), scf_history_ev=history)


def parse_printed(pwo_text: str) -> dict[str, float | int]:
    """Values pw.x printed that a ladder step may read (``scale_printed``).

    ``nbnd``: the number of Kohn-Sham states; ``highest_band_occupation``: the largest
    occupation of the highest band over k-points and spins in the final band listing
    (only printed with ``verbosity='high'``; absent otherwise).
    """
    out: dict[str, float | int] = {}
    m = KS_STATES_RE.search(pwo_text)
    if m is not None:
        out["nbnd"] = int(m.group(1))
    ends = list(END_OF_SCF_RE.finditer(pwo_text))
    tail = pwo_text[ends[-1].end() :] if ends else ""
    highest = []
    for block in OCCUPATIONS_RE.finditer(tail):
        numbers = [_float(x) for x in block.group(1).split()]
        if numbers and numbers[-1] is not None:
            highest.append(numbers[-1])
    if highest:
        out["highest_band_occupation"] = max(highest)
    return out


def parse_version(pwo_text: str) -> str | None:
    """``6.7MaX`` from ``Program PWSCF v.6.7MaX starts on ...``."""
    m = PW_VERSION_RE.search(pwo_text)
    return m.group(1) if m else None


def _error_block(text: str, routine_re: re.Pattern[str]) -> tuple[str, str, str] | None:
    """(routine, header line, first message line) of the first error block in ``text``."""
    m = routine_re.search(text)
    if m is None:
        return None
    header = m.group(0).strip()
    rest = text[m.end() :].splitlines()
    msg = next((ln.strip() for ln in rest if ln.strip() and not ln.strip().startswith("%")), "")
    return m.group(1), header, msg


def _signal_of(returncode: int) -> int | None:
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def diagnose(
    returncode: int | None,
    pwo_text: str,
    err_text: str = "",
    crash_text: str = "",
    timed_out: bool = False,
) -> Diagnosis:
    """Classify one finished attempt; pure (no file or process access).

    ``returncode`` is None when the process could not be started at all. The message is
    the exact pw.x line(s): ``Error in routine cdiaghg (35): S matrix not positive
    definite``, ``convergence NOT achieved after 3 iterations: stopping``, ...
    """
    for text, routine_re in (
        (pwo_text, ERROR_ROUTINE_RE),
        (crash_text, CRASH_ROUTINE_RE),
        (crash_text, ERROR_ROUTINE_RE),
        (err_text, ERROR_ROUTINE_RE),
    ):
        block = _error_block(text, routine_re)
        if block is not None:
            routine, header, msg = block
            if routine_re is CRASH_ROUTINE_RE:
                # rebuild the .pwo form of the header from the CRASH file's
                number = header.split("#")[-1].strip()
                header = f"Error in routine {routine} ({number}):"
            return Diagnosis(classify_error(routine, msg), f"{header} {msg}".strip())

    for text in (pwo_text, err_text, crash_text):
        found = match_output(text)
        if found is not None:
            return Diagnosis(*found)
    m = CONVERGED_RE.search(pwo_text)
    complete = m is not None and JOB_DONE_RE.search(pwo_text) is not None
    if m is not None and complete and (returncode == 0 or timed_out):
        # a complete, converged output wins over a walltime kill that came after it
        return Diagnosis(FailureClass.CONVERGED, m.group(0).strip())
    if timed_out:
        return Diagnosis(FailureClass.WALLTIME, "killed by the oracle timeout (no pw.x message)")
    m = NOT_CONVERGED_RE.search(pwo_text)
    if m:
        return Diagnosis(FailureClass.SCF_NOT_CONVERGED, m.group(0).strip())

    for text in (err_text, pwo_text, crash_text):
        m = OUT_OF_MEMORY_RE.search(text)
        if m:
            line = text[text.rfind("\n", 0, m.start()) + 1 :].splitlines()[0].strip()
            return Diagnosis(FailureClass.OUT_OF_MEMORY, line)
    if returncode is None:
        return Diagnosis(FailureClass.CRASHED, "pw.x could not be started")
    sig = _signal_of(returncode)
    if sig == 9:
        return Diagnosis(
            FailureClass.OUT_OF_MEMORY,
            f"killed by signal 9 (SIGKILL) with no pw.x message, exit code {returncode}",
        )
    for text in (err_text, pwo_text):
        m = FORTRAN_RUNTIME_RE.search(text)
        if m:
            return Diagnosis(FailureClass.CRASHED, m.group(0).strip())
    if returncode != 0:
        what = f"signal {sig}" if sig else f"exit code {returncode}"
        return Diagnosis(FailureClass.CRASHED, f"pw.x died ({what}) with no known message")
    if CONVERGED_RE.search(pwo_text):
        return Diagnosis(FailureClass.CRASHED, "output truncated after convergence (no JOB DONE)")
    return Diagnosis(FailureClass.CRASHED, "output truncated or unreadable (no known message)")
