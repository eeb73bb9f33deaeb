"""The failure classes of a pw.x attempt and the pw.x message -> class table.

This module is the one definition: the planner, the lifecycle (``PERMANENT``), the recipe
schema's ``oracle.retry.ladders`` keys and descriptions, and the docs all come from
:data:`CLASSES` and :data:`ERROR_RULES` / :data:`OUTPUT_RULES`. It imports nothing but the
standard library (no ASE, no numpy), so the lifecycle can use it on its own.

Like aiida-quantumespresso's ``detect_important_message`` (``parse_raw/pw.py``), a message
maps to a class through a table; unlike a dict, the table is a *list*, so precedence is
its order: the first rule that matches wins and every attempt gets exactly one class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final


class FailureClass:
    """The failure classes (plain ``str`` constants, stored as text in the lifecycle store)."""

    CONVERGED: Final = "converged"
    SCF_NOT_CONVERGED: Final = "scf_not_converged"
    CHARGE_WRONG: Final = "charge_wrong"
    DIAGONALIZATION: Final = "diagonalization"
    WALLTIME: Final = "walltime"
    INPUT_ERROR: Final = "input_error"
    MISSING_PSEUDOPOTENTIAL: Final = "missing_pseudopotential"
    XC_CONFLICT: Final = "xc_conflict"
    NEEDS_SPINORBIT: Final = "needs_spinorbit"
    OVERLAPPING_ATOMS: Final = "overlapping_atoms"
    CRASHED: Final = "crashed"
    OUT_OF_MEMORY: Final = "out_of_memory"
    INCOMPLETE_OUTPUT: Final = "incomplete_output"
    MIXING_FAILED: Final = "mixing_failed"
    DEXX_NEGATIVE: Final = "dexx_negative"
    PARALLELIZATION: Final = "parallelization"
    TOO_FEW_BANDS: Final = "too_few_bands"

    #: Every class, in the order of :data:`CLASSES` (set below from that table).
    ALL: ClassVar[tuple[str, ...]]


@dataclass(frozen=True)
class ClassInfo:
    """One failure class: whether a retry can help, and what it means (for the docs)."""

    name: str
    permanent: bool  # no retry step can fix it: quarantined at once
    retryable: bool  # a ladder may retry it (neither success nor permanent)
    description: str


F = FailureClass

#: The classes. ``permanent`` and ``retryable`` exclude each other; ``converged`` is neither.
CLASSES: Final[tuple[ClassInfo, ...]] = (
    ClassInfo(
        F.CONVERGED,
        False,
        False,
        "pw.x converged and the output holds a complete, finite label.",
    ),
    ClassInfo(
        F.SCF_NOT_CONVERGED,
        False,
        True,
        "`convergence NOT achieved`: the SCF loop used up `electron_maxstep`.",
    ),
    ClassInfo(
        F.CHARGE_WRONG,
        False,
        True,
        "`charge is wrong`: electrons lost, usually a metal run with fixed occupations.",
    ),
    ClassInfo(
        F.DIAGONALIZATION,
        False,
        True,
        "The eigensolver failed (S matrix not positive definite, Cholesky, too many bands "
        "not converged, an error in an eigensolver routine).",
    ),
    ClassInfo(
        F.WALLTIME,
        False,
        True,
        "pw.x stopped at `max_seconds` (`Maximum CPU time exceeded`) or the oracle timeout "
        "killed it.",
    ),
    ClassInfo(
        F.INPUT_ERROR,
        False,
        True,
        "pw.x refused the input (an `iosys`/namelist/card check); retried only where a step "
        "fixes the message (`fixed occupations and lsda need tot_magnetization`).",
    ),
    ClassInfo(
        F.MISSING_PSEUDOPOTENTIAL,
        True,
        False,
        "A pseudopotential file is missing or unreadable.",
    ),
    ClassInfo(
        F.XC_CONFLICT,
        True,
        False,
        "The pseudopotentials (or the input) disagree on the exchange-correlation functional "
        "(read from the UPF headers in preflight, no pw.x run, unless `input_dft` is set).",
    ),
    ClassInfo(
        F.NEEDS_SPINORBIT,
        True,
        False,
        "A fully-relativistic ultrasoft/PAW pseudopotential without `lspinorb` (preflight "
        "from the UPF header; pw.x averages a norm-conserving one by itself).",
    ),
    ClassInfo(
        F.OVERLAPPING_ATOMS,
        True,
        False,
        "Two atoms closer than `oracle.min_distance` or than `oracle.min_core_fraction` x "
        "the sum of their pseudopotentials' core radii (preflight, no pw.x run), or "
        "overlapping for pw.x.",
    ),
    ClassInfo(
        F.CRASHED,
        False,
        True,
        "pw.x died without a known message (a signal, a Fortran runtime error, a truncated "
        "output).",
    ),
    ClassInfo(
        F.OUT_OF_MEMORY,
        False,
        True,
        "An allocation failed, or the process was killed by SIGKILL without a message.",
    ),
    ClassInfo(
        F.INCOMPLETE_OUTPUT,
        False,
        True,
        "The output claims convergence but the energy, free energy, a force on some atom or "
        "the requested stress is missing or not finite: never a label; the same settings "
        "are tried once more from scratch.",
    ),
    ClassInfo(
        F.MIXING_FAILED,
        False,
        True,
        "The charge-density mixing failed (`Error in routine broyden`: `factorization`): "
        "the Broyden history became singular.",
    ),
    ClassInfo(
        F.TOO_FEW_BANDS,
        False,
        True,
        "A smeared run converged but its highest band holds an occupation above 0.005 "
        "(printed with `verbosity='high'`, which the oracle sets for smeared runs): `nbnd` "
        "is raised from the number pw.x printed and the run continues from the density.",
    ),
    ClassInfo(
        F.DEXX_NEGATIVE,
        True,
        False,
        "`dexx is negative` in a hybrid-functional run: `exxdiv_treatment`, `ecutfock` or "
        "the q-mesh must change, which changes the level of theory: fix the recipe.",
    ),
    ClassInfo(
        F.PARALLELIZATION,
        True,
        False,
        "The pw.x command's parallel options do not fit this structure or the process "
        "count (`-nk`/`-nb` above the processes: `invalid number of pools`/`band groups`; "
        "`-nt` that does not divide them: `nyfft value incompatible`; too few bands for "
        "`-nd`; pw.x 6.4's `some nodes have no k-points`): fix `oracle.command`; no "
        "namelist change helps.",
    ),
)


FailureClass.ALL = tuple(c.name for c in CLASSES)

#: name -> :class:`ClassInfo`.
BY_NAME: Final = {c.name: c for c in CLASSES}

#: Classes that no retry step can fix: never retried, the structure is quarantined.
#: The only copy: the lifecycle imports it from here.
PERMANENT: Final = frozenset(c.name for c in CLASSES if c.permanent)

#: Classes a ladder may retry (everything that is neither success nor permanent).
RETRYABLE: Final = tuple(c.name for c in CLASSES if c.retryable)


# --- message -> class ---------------------------------------------------------------------


def _names(*names: str) -> re.Pattern[str]:
    """A pattern that fullmatches exactly these routine names."""
    return re.compile("|".join(re.escape(n) for n in names))


@dataclass(frozen=True)
class Rule:
    """One row of the table: ``failure_class`` if every given condition holds.

    ``routine`` must *fullmatch* the routine of an ``Error in routine NAME (N):`` block
    (lowercased); ``message`` is *searched* in its message (or, for :data:`OUTPUT_RULES`,
    in the whole output). A rule with neither matches everything (a catch-all).
    """

    failure_class: str
    message: re.Pattern[str] | None = None
    routine: re.Pattern[str] | None = None
    note: str = ""

    def matches(self, routine: str, message: str) -> bool:
        if self.routine is not None and not self.routine.fullmatch(routine.lower()):
            return False
        return self.message is None or self.message.search(message) is not None


# Messages (searched in the text of an ``Error in routine`` block or the whole output).
SPINORBIT_RE: Final = re.compile(r"FR-PP please use lspinorb", re.I)
XC_CONFLICT_RE: Final = re.compile(
    r"conflicting values for i\w+|dft is already set|inconsistent dft|"
    r"mismatch.*functional|enforce_input_dft",
    re.I,
)
XC_ROUTINES: Final = _names("set_dft_from_name", "set_dft_from_indices", "enforce_input_dft")
MISSING_PSEUDO_RE: Final = re.compile(
    r"not found|cannot open|file .* not|no such file|error reading|wrong pseudopotential", re.I
)
PSEUDO_ROUTINES: Final = _names("readpp", "read_pseudo", "upf_read", "import_upf")
OVERLAP_RE: Final = re.compile(
    r"atoms?\s+#?\s*\d+\s+and\s+#?\s*\d+\s+overlap|overlapping atoms", re.I
)
CHARGE_WRONG_RE: Final = re.compile(r"charge is wrong", re.I)
DIAGONALIZATION_RE: Final = re.compile(
    r"problems computing cholesky|S matrix not positive definite|"
    r"too many bands are not converged|zhegvd? failed|dsygvd? failed|zheev\w* failed|"
    r"eigenvectors failed to converge|diagonalization failed",
    re.I,
)
#: Eigensolver routines: an unrecognised error raised in one of them is still a
#: diagonalisation failure.
DIAGONALIZATION_ROUTINES: Final = _names(
    "cdiaghg",
    "rdiaghg",
    "cegterg",
    "regterg",
    "pcegterg",
    "pregterg",
    "ccgdiagg",
    "rcgdiagg",
    "ppcg_k",
    "ppcg_gamma",
    "paro_k",
    "paro_gamma",
    "c_bands",
    "cdiagh",
    "rdiagh",
    "laxlib_cdiaghg",
    "pcdiaghg",
    "prdiaghg",
)
OUT_OF_MEMORY_RE: Final = re.compile(
    r"cannot allocate|error allocating|allocation (?:failed|error)|not enough memory|"
    r"out of memory|std::bad_alloc|"
    r"insufficient virtual memory|Allocation would exceed memory limit|oom-kill",
    re.I,
)
MAX_CPU_TIME_RE: Final = re.compile(r"^.*Maximum CPU time exceeded.*$", re.M)
#: Input checks of pw.x (``iosys`` and the namelist/card readers): some are fixable by a
#: step (``fixed occupations and lsda need tot_magnetization`` -> smearing).
INPUT_ROUTINES_RE: Final = re.compile(
    r"iosys|read_namelists|read_cards|card_\w+|readin\w*|cell_base_init|setup|input|"
    r"check_\w+|sm_not_set|read_line|namelist\w*|\w*_readin|set_nks\w*|iosys\w*",
    re.I,
)
INPUT_MESSAGE_RE: Final = re.compile(r"reading namelist|bad line|wrong|invalid|not allowed", re.I)
#: ``nbnd`` larger than the basis (``memory_report``): the recipe's bands for a small cell.
MORE_BANDS_THAN_PWS_RE: Final = re.compile(r"more bands than PWs", re.I)
#: Berry phase / electric field (``lelfield``, ``lberry``): an input that cannot work.
G_PAR_RE: Final = re.compile(r"G_par is NOT a reciprocal lattice vector", re.I)
DEXX_NEGATIVE_RE: Final = re.compile(r"dexx is negative", re.I)
MIXING_ROUTINES: Final = _names("broyden", "mix_rho", "approx_screening", "approx_screening2")
#: Parallel setup. Measured with pw.x 6.7 (``tests/data/make_pwx_outputs.py``):
#: ``-nk``/``-nb`` above the process count (``mp_start_pools``/``mp_start_bands``:
#: ``invalid number of pools/band groups, out of range``), ``-nt`` that does not divide
#: (``mp_bands``: ``nyfft value incompatible with nproc_bgrp``), ``-nd`` larger than the
#: bands (``check_para_diag``). More pools than k-points is an error in pw.x 6.4
#: (``some nodes have no k-points``, aiida-quantumespresso's fixture); 6.7 prints it as a
#: ``Message`` (``suboptimal parallelization``) and converges with idle pools.
PARALLEL_RE: Final = re.compile(
    r"some nodes have no k-points|too few bands for required ndiag|"
    r"processes with no planes|invalid number of (?:pools|band groups|task groups)|"
    r"nyfft value incompatible|"
    r"too many (?:pools|task groups|processors|band groups)",
    re.I,
)
PARALLEL_ROUTINES: Final = _names(
    "divide_et_impera",
    "check_para_diag",
    "task_groups_init",
    "mp_start_pools",
    "mp_start_bands",
    "mp_bands",
    "mp_start_pots",
    "fft_type_set",
)
#: PPCG's QR failure: pw.x prints this line and stops with a plain ``STOP`` (exit 0, no
#: error block, no convergence line).
PPCG_QR_RE: Final = re.compile(r"^.*\[Q, R\] = qr\(X, 0\) failed.*$", re.M)

#: The ``Error in routine`` table, in precedence order (first match wins). The
#: permanent classes come first: a message that names a hopeless cause must not be
#: retried because a later, broader rule also matches it.
ERROR_RULES: Final[tuple[Rule, ...]] = (
    Rule(F.NEEDS_SPINORBIT, SPINORBIT_RE),
    Rule(F.DEXX_NEGATIVE, DEXX_NEGATIVE_RE),
    Rule(F.PARALLELIZATION, PARALLEL_RE),
    Rule(F.PARALLELIZATION, routine=PARALLEL_ROUTINES),
    Rule(F.XC_CONFLICT, routine=XC_ROUTINES),
    Rule(F.XC_CONFLICT, XC_CONFLICT_RE),
    Rule(F.MISSING_PSEUDOPOTENTIAL, MISSING_PSEUDO_RE, PSEUDO_ROUTINES),
    Rule(F.OVERLAPPING_ATOMS, OVERLAP_RE),
    Rule(F.CHARGE_WRONG, CHARGE_WRONG_RE),
    Rule(F.DIAGONALIZATION, DIAGONALIZATION_RE),
    Rule(F.DIAGONALIZATION, routine=DIAGONALIZATION_ROUTINES),
    Rule(F.MIXING_FAILED, routine=MIXING_ROUTINES),
    Rule(F.OUT_OF_MEMORY, OUT_OF_MEMORY_RE),
    Rule(F.WALLTIME, MAX_CPU_TIME_RE),
    Rule(F.INPUT_ERROR, MORE_BANDS_THAN_PWS_RE, note="nbnd exceeds the plane waves"),
    Rule(F.INPUT_ERROR, G_PAR_RE),
    Rule(
        F.MISSING_PSEUDOPOTENTIAL,
        routine=PSEUDO_ROUTINES,
        note="an unreadable/corrupt pseudopotential is as hopeless as a missing one",
    ),
    Rule(F.INPUT_ERROR, routine=INPUT_ROUTINES_RE),
    Rule(F.INPUT_ERROR, INPUT_MESSAGE_RE),
    Rule(F.CRASHED, note="an error block no rule knows"),
)

#: Messages pw.x prints without an error block, searched in ``.pwo``, ``.err`` and
#: ``CRASH`` after the error-block stage and before the convergence markers (precedence:
#: list order). Only messages that stop pw.x belong here: a warning that a converged run
#: may also print would turn a good label into a failure.
OUTPUT_RULES: Final[tuple[Rule, ...]] = (
    Rule(F.WALLTIME, MAX_CPU_TIME_RE, note="pw.x's own max_seconds stop"),
    Rule(F.DIAGONALIZATION, PPCG_QR_RE, note="PPCG's QR failure, then a plain STOP"),
    Rule(F.INPUT_ERROR, G_PAR_RE, note="printed before the Berry-phase error"),
)


def classify_error(routine: str, message: str) -> str:
    """The class of an ``Error in routine ROUTINE (N): MESSAGE`` block (:data:`ERROR_RULES`)."""
    for rule in ERROR_RULES:
        if rule.matches(routine, message):
            return rule.failure_class
    return F.CRASHED


def match_output(text: str) -> tuple[str, str] | None:
    """(class, the matching line) of the first :data:`OUTPUT_RULES` row found in ``text``."""
    for rule in OUTPUT_RULES:
        if rule.message is None:
            continue
        m = rule.message.search(text)
        if m is not None:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            return rule.failure_class, text[start : end if end >= 0 else len(text)].strip()
    return None


def classes_markdown() -> str:
    """The classes as a markdown table (for the docs)."""
    rows = ["| failure class | retried | meaning |", "|---|---|---|"]
    for c in CLASSES:
        if c.name == F.CONVERGED:
            kind = "success"
        else:
            kind = "never (permanent)" if c.permanent else "by its ladder"
        text = c.description.replace("|", "\\|")  # a '|' ends a table cell
        rows.append(f"| `{c.name}` | {kind} | {text} |")
    return "\n".join(rows)


def schema_ladder_properties() -> dict[str, dict[str, str]]:
    """What the recipe schema's ``oracle.retry.ladders.properties`` must be: one entry per
    retryable class, in table order, with the class description."""
    return {
        name: {"$ref": "#/$defs/ladder", "description": BY_NAME[name].description}
        for name in RETRYABLE
    }
