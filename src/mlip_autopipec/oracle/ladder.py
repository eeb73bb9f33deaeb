"""The self-healing retry ladder: data, plus one pure planning function.

A ladder maps a failure class to an ordered list of *steps*. A step is plain data::

    {"set": {"electrons.mixing_beta": 0.3}}            # set dotted pw.x keys
    {"scale": {"system.degauss": 2}}                    # multiply (pw.x default if unset)
    {"kspacing": 0.2}                                   # change the k-point density (1/Å)
    {"restart": "charge_density"}                       # start from the previous attempt's
                                                        # saved density (startingpot='file')
    {"restart": "scratch"}                              # start clean (the default)
    {"when": ["decreasing"]}                            # only if the last SCF trajectory was
                                                        # decreasing / oscillating / stagnant
    {"match": "tot_magnetization"}                      # only if the pw.x message matches
    {"only_if": {"system.occupations": ["fixed", None]}} # only if the current parameters
                                                        # hold one of these values (None:
                                                        # unset)
    {"scale_printed": {"system.nbnd": {"factor": 1.05, "at_least": 4}}}
                                                        # from the value pw.x printed in
                                                        # the failed attempt (nbnd: the
                                                        # number of Kohn-Sham states):
                                                        # max(value x factor, value +
                                                        # at_least), rounded up
    {"probe": 25}                                       # a charge_density restart runs
                                                        # at most 25 SCF steps; if that
                                                        # fails, the next step runs from
                                                        # scratch with the full budget
    {"when_kgrid_at_most": 2}                           # only if the failed attempt's
                                                        # k-grid has <= 2 points per axis
    {"when_below": {"electrons.mixing_beta": 0.35}}     # only if the current value (or
                                                        # pw.x default) is below this
    {"denser_k": 2}                                     # k-point density x 2 (spacing
                                                        # / 2, or an explicit grid x 2)
    {"changes_theory": true}                            # the step changes the level of
                                                        # theory (smearing, k-points):
                                                        # recorded with the attempt
    {"repeat": true}                                    # may repeat an already tried
                                                        # parameter set (a fault of the
                                                        # run, not of the settings)
    {"note": "why this step"}

Planning rules (:func:`plan_next`):

* steps accumulate along one structure's history (each attempt starts from the effective
  parameters of the previous one);
* ``max_attempts`` bounds the total number of attempts;
* permanent classes (:data:`PERMANENT`) are never retried;
* every step is used at most once per structure, and a step that would repeat an already
  tried parameter set (parameters + restart mode) is skipped unless it says
  ``repeat: true``, and so is a step whose
  ``set``/``scale`` changes nothing (e.g. "use smearing" when smearing is already on);
* the next step is the first unused step of the last attempt's class whose ``when``,
  ``match`` and ``only_if`` conditions hold, so the SCF accuracy trajectory of the failed
  attempt chooses between "keep going from the density" and "mix more gently";
* planning is a pure function of (recipe parameters, ladders, history): deterministic.

The default ladder (:data:`DEFAULT_LADDERS`) is rendered as markdown by
:func:`default_ladder_markdown`.

Measured with pw.x 6.7 on this project's machine (the cases are in
``tests/oracle/test_pwx.py`` and ``tests/data/make_pwx_outputs.py``):

* Si (2 atoms), ``electron_maxstep=4``: steadily decreasing; continuing from the saved
  density needs 2 more iterations (6 from scratch), same energy to 1e-6 eV.
* Fe bcc magnetic, ``mixing_beta=0.9``, 12 steps: decreasing; from the density with 24
  steps converges in 6. With ``mixing_beta=0.95``, 10 steps: oscillating; beta 0.475 from
  the density converges in 8.
* Al fcc with fixed occupations: ``charge is wrong: smearing is needed`` at iteration 1;
  m-v smearing 0.02 Ry converges in 4.
* Rattled 8-atom Si cell at Gamma (levels cross the Fermi level): 100 erratic steps;
  200 more from the density do not converge, smearing from scratch converges in 13.
* Eigensolver order (``diagonalization`` ladder), measured on two-atom cells at Gamma
  with m-v smearing (SCF iterations / wall seconds on the shared 2-core machine):

  =====================  ===============  ===========  ===========  ===========
  case                   david            cg           ppcg         paro
  =====================  ===============  ===========  ===========  ===========
  Ni2 at 0.7 Å           S matrix (15)    17 / 13.9    16 / 13.2    17 / 14.3
  Fe2 at 0.8 Å, nspin 2  S matrix (1)     signal 11    zhegvd (3)   32 / 27.1
  Ni2 at 0.6 Å           S matrix (1)     signal 11    zhegvd (1)   S matrix (2)
  =====================  ===============  ===========  ===========  ===========

  paro is never worse and is the only one that rescues Fe2, so the ladder is
  david -> paro -> cg (aiida-quantumespresso's order too); ppcg never rescued a case
  the others did not and is left out. Ni2 at 0.6 Å, where every eigensolver fails
  (paro too, cg segfaults), is refused in preflight from the pseudopotentials' core
  radii (``oracle/preflight.py``): 0 runs instead of 3.
* Ni2 at 0.9 Å (smearing): 100 oscillating steps; beta 0.35 from the density: 24.
* Fe bcc magnetic with ``max_seconds=0.8``: pw.x stops, writes the density; two
  continuations from it converge (accuracy 0.31 -> 1.4e-3 -> converged).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from mlip_autopipec.oracle.effective import pwx_default
from mlip_autopipec.oracle.failures import PERMANENT, RETRYABLE, FailureClass, classes_markdown


def _printed_factor() -> float:
    """The schema's default factor of a ``scale_printed`` rule."""
    from mlip_autopipec.recipe.schema import schema_default  # recipe imports this module

    return float(schema_default("$defs", "ladder", "scale_printed", "system.nbnd", "factor"))


RESTART_SCRATCH: Final = "scratch"
RESTART_CHARGE_DENSITY: Final = "charge_density"

#: SCF trajectory labels used by a step's ``when``.
TREND_DECREASING: Final = "decreasing"
TREND_OSCILLATING: Final = "oscillating"
TREND_STAGNANT: Final = "stagnant"
TREND_NONE: Final = "none"
TRENDS: Final = (TREND_DECREASING, TREND_OSCILLATING, TREND_STAGNANT, TREND_NONE)

#: Flat keys that are not pw.x namelist entries.
KSPACING_KEY: Final = "kspacing"
KPTS_KEY: Final = "kpts"
#: The SCF iteration budget (a ``probe`` step shortens it for one attempt).
MAXSTEP_KEY: Final = "electrons.electron_maxstep"
#: Set by the oracle for charge-density restarts; never accumulated across attempts.
STARTINGPOT_KEY: Final = "electrons.startingpot"

#: pw.x (QE 6.7) defaults, used when a ``scale`` step targets a key the recipe left unset
#: (None: pw.x has none); the values are those of the one table, ``effective.PWX_DEFAULTS``.
PW_DEFAULTS: Final[Mapping[str, Any]] = {
    key: pwx_default(key)
    for key in (
        "electrons.mixing_beta",
        "electrons.electron_maxstep",
        "electrons.mixing_ndim",
        "electrons.conv_thr",
        "electrons.diago_david_ndim",
        "system.degauss",
        "system.ecutwfc",
    )
}

_SMEARING: Final = {
    "system.occupations": "smearing",
    "system.smearing": "mv",
    "system.degauss": 0.02,
}
#: Keys a ``when_below`` condition may name (the schema lists the same).
WHEN_BELOW_KEYS: Final = ("electrons.mixing_beta", "system.degauss")

#: SCF steps of a ``probe`` restart from the density (measured: restarts that help
#: converge in 8 (Fe2, beta 0.475) and 24 (Ni2 0.9 Å, beta 0.35) steps).
DENSITY_PROBE: Final = 25

#: ``scale_printed`` for too few bands: max(5 %, 4) more than pw.x used (as aiida's
#: ``sanity_check_insufficient_bands``).
_MORE_BANDS: Final = {"factor": 1.05, "at_least": 4}
#: A smeared SCF stalled by too few bands: 25 % (at least 4) more than pw.x printed.
_STALLED_BANDS: Final = {"factor": 1.25, "at_least": 4}
#: pw.x key -> the name of the printed value (:func:`diagnose.parse_printed`) it scales.
PRINTED_KEYS: Final[Mapping[str, str]] = {"system.nbnd": "nbnd"}

#: ``only_if`` for the smearing steps: the occupations are fixed (pw.x's default).
_FIXED_OCCUPATIONS: Final = {"system.occupations": ["fixed", None]}

#: The shipped ladder. Facts measured with pw.x 6.7 on this project's test cases are in
#: the notes; see ``tests/oracle/test_ladder_pwx.py`` for the runs that check them.
DEFAULT_LADDERS: Final[Mapping[str, list[dict[str, Any]]]] = {
    FailureClass.SCF_NOT_CONVERGED: [
        {
            "when": [TREND_DECREASING],
            "scale": {"electrons.electron_maxstep": 2},
            "restart": RESTART_CHARGE_DENSITY,
            "note": "SCF was still converging steadily: continue from the saved charge "
            "density with twice the iterations",
        },
        {
            "when": [TREND_OSCILLATING, TREND_STAGNANT],
            "only_if": dict(_FIXED_OCCUPATIONS),
            "set": dict(_SMEARING),
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "erratic SCF with fixed occupations: levels crossing the Fermi level "
            "(metal, or a gap closed by rattling): Marzari-Vanderbilt smearing",
        },
        {
            "when": [TREND_OSCILLATING, TREND_STAGNANT],
            "only_if": {"system.occupations": ["smearing"]},
            "when_below": {"electrons.mixing_beta": 0.35},
            "when_kgrid_at_most": 2,
            "denser_k": 2,
            "set": {"system.degauss": 0.02},
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "erratic SCF of a metal or magnet on a coarse k-grid (<= 2 points per "
            "axis) that already mixes gently (beta < 0.35): go to twice the k-point "
            "density and 0.02 Ry smearing at once (Fe2 rattled at Gamma, beta 0.3: 60 "
            "oscillating steps; a 25-step probe with beta 0.15 does not help; 2x2x2 "
            "converges in 16-20)",
        },
        {
            "scale": {"electrons.mixing_beta": 0.5},
            "restart": RESTART_CHARGE_DENSITY,
            "probe": DENSITY_PROBE,
            "note": "halve mixing_beta and start from the saved charge density (pw.x "
            "writes it even after 'convergence NOT achieved'); a short probe budget: "
            "when the density helps it converges fast",
        },
        {
            "when": [TREND_OSCILLATING, TREND_STAGNANT],
            "only_if": {"system.occupations": ["smearing"]},
            "when_kgrid_at_most": 2,
            "denser_k": 2,
            "set": {"system.degauss": 0.02},
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "still erratic after gentler mixing, a metal or magnet on a coarse "
            "k-grid (<= 2 points per axis): no mixing knob converges it; twice the k-point "
            "density and 0.02 Ry smearing with the gentle beta do (Fe2 rattled at Gamma, "
            "beta 0.3: 60 oscillating steps; 2x2x2 converges in 15). Not first: a magnet "
            "that only needs gentler mixing (Fe2 at 2x2x2, beta 0.95 -> 0.475: 8 steps) "
            "keeps its level of theory",
        },
        {
            "when": [TREND_OSCILLATING, TREND_STAGNANT],
            "only_if": {"system.occupations": ["smearing"], "system.nbnd": [None]},
            "scale_printed": {"system.nbnd": dict(_STALLED_BANDS)},
            "restart": RESTART_SCRATCH,
            "note": "a smeared SCF stuck with pw.x's default bands (20 % above the valence "
            "bands): the top band takes charge and the occupations flip; 25 % more bands "
            "(than pw.x printed) from scratch (Al 16-layer column, 48 electrons: 29 bands "
            "stuck at 1e-3 Ry for 40 steps at beta 0.9 and 60 at beta 0.3, plain or "
            "local-TF; 36 bands converge in 13 at beta 0.9). Not first: it changes no "
            "mixing, and a magnet that only needs gentler mixing keeps its bands",
        },
        {
            "restart": RESTART_SCRATCH,
            "note": "same settings from scratch with the full budget: a saved density can "
            "keep metals whose occupations flip every step stuck",
        },
        {
            "set": {"electrons.mixing_mode": "local-TF", "electrons.mixing_ndim": 12},
            "scale": {"electrons.mixing_beta": 0.5, "electrons.electron_maxstep": 2},
            "restart": RESTART_SCRATCH,
            "note": "inhomogeneous system (cluster, surface, magnet): local-TF mixing, "
            "longer history, gentler beta",
        },
        {
            "set": {"electrons.diagonalization": "cg"},
            "restart": RESTART_CHARGE_DENSITY,
            "note": "last resort: the robust conjugate-gradient eigensolver",
        },
    ],
    FailureClass.CHARGE_WRONG: [
        {
            "only_if": dict(_FIXED_OCCUPATIONS),
            "set": dict(_SMEARING),
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "'charge is wrong: smearing is needed': a metal run with fixed occupations",
        },
        {
            "scale": {"system.degauss": 2, "electrons.mixing_beta": 0.5},
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "escalate the smearing and mix more gently",
        },
        {
            "set": {"electrons.diagonalization": "cg"},
            "restart": RESTART_SCRATCH,
            "note": "charge lost in the eigensolver: conjugate gradient",
        },
    ],
    FailureClass.DIAGONALIZATION: [
        {
            "set": {"electrons.diagonalization": "paro"},
            "restart": RESTART_SCRATCH,
            "note": "the eigensolver failed (S matrix / Cholesky / zhegvd): ParO, measured "
            "first: it rescues Fe2 at 0.8 A where cg segfaults and ppcg fails, and costs "
            "the same as cg on Ni2 at 0.7 A",
        },
        {
            "set": {"electrons.diagonalization": "cg"},
            "restart": RESTART_SCRATCH,
            "note": "conjugate gradient: the slowest and most robust eigensolver, last",
        },
    ],
    FailureClass.WALLTIME: [
        {
            "restart": RESTART_CHARGE_DENSITY,
            "note": "continue from the density pw.x saved when max_seconds was reached",
        },
        {
            "scale": {"electrons.mixing_beta": 0.5},
            "restart": RESTART_CHARGE_DENSITY,
            "note": "still too slow: gentler mixing from the saved density",
        },
    ],
    FailureClass.INPUT_ERROR: [
        {
            "match": "tot_magnetization|smearing",
            "only_if": dict(_FIXED_OCCUPATIONS),
            "set": dict(_SMEARING),
            "restart": RESTART_SCRATCH,
            "changes_theory": True,
            "note": "'fixed occupations and lsda need tot_magnetization': use smearing",
        },
    ],
    FailureClass.CRASHED: [
        {
            "set": {"electrons.diagonalization": "cg"},
            "restart": RESTART_SCRATCH,
            "note": "unexplained crash: retry once from scratch (cg: smallest eigensolver "
            "workspace); a second crash quarantines the structure",
        },
    ],
    FailureClass.MIXING_FAILED: [
        {
            "set": {"electrons.mixing_ndim": 4},
            "scale": {"electrons.mixing_beta": 0.5},
            "restart": RESTART_SCRATCH,
            "note": "Broyden 'factorization' failed: the mixing history became singular; "
            "a shorter history and gentler beta, from scratch (the saved density is the "
            "one the mixer choked on)",
        },
        {
            "set": {"electrons.mixing_mode": "local-TF"},
            "restart": RESTART_SCRATCH,
            "note": "still singular: Thomas-Fermi screened mixing",
        },
    ],
    FailureClass.TOO_FEW_BANDS: [
        {
            "scale_printed": {"system.nbnd": dict(_MORE_BANDS)},
            "restart": RESTART_CHARGE_DENSITY,
            "note": "the highest band is occupied: nbnd + max(5 %, 4) from the number of "
            "Kohn-Sham states pw.x printed, continuing from the converged density",
        },
        {
            "scale_printed": {"system.nbnd": dict(_MORE_BANDS)},
            "restart": RESTART_CHARGE_DENSITY,
            "note": "still occupied: raise nbnd once more",
        },
    ],
    FailureClass.INCOMPLETE_OUTPUT: [
        {
            "restart": RESTART_SCRATCH,
            "repeat": True,
            "note": "converged but energy/forces/stress missing or not finite: the same "
            "settings once more from scratch; a second such output quarantines the structure",
        },
    ],
    FailureClass.OUT_OF_MEMORY: [
        {
            "set": {"electrons.diagonalization": "cg"},
            "restart": RESTART_SCRATCH,
            "note": "cg needs no Davidson subspace (diago_david_ndim x nbnd): less memory",
        },
    ],
}

STEP_KEYS: Final = frozenset(
    {
        "set",
        "scale",
        "scale_printed",
        "kspacing",
        "restart",
        "when",
        "match",
        "only_if",
        "repeat",
        "probe",
        "when_kgrid_at_most",
        "when_below",
        "denser_k",
        "changes_theory",
        "note",
    }
)


class HistoryEntry(Protocol):
    """What the planner reads from each past attempt (AttemptResult satisfies it)."""

    @property
    def failure_class(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def step(self) -> Mapping[str, Any] | None: ...
    @property
    def params_diff(self) -> Mapping[str, Any]: ...
    @property
    def scf_history_ev(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class Plan:
    """The next attempt: which step, the effective flat parameters, how to start."""

    number: int
    step: dict[str, Any] | None
    params: dict[str, Any]
    params_diff: dict[str, Any]
    restart: str


# --- flat dotted parameters ------------------------------------------------------------


def flatten_input(input_data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"system": {"ecutwfc": 30}}`` -> ``{"system.ecutwfc": 30}`` (section names lowercased)."""
    flat: dict[str, Any] = {}
    for section, values in input_data.items():
        if isinstance(values, Mapping):
            for key, value in values.items():
                flat[f"{str(section).lower()}.{key}"] = value
        else:
            # ASE also accepts flat input_data; keep such keys under their own name
            flat[str(section)] = values
    return flat


def nest_input(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Inverse of :func:`flatten_input` for dotted keys; k-point keys are left out."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key in (KSPACING_KEY, KPTS_KEY) or "." not in key:
            continue
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def base_params(oracle_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's effective flat parameter set (namelists + k-points)."""
    params = flatten_input(oracle_cfg.get("input_data") or {})
    if oracle_cfg.get("kpts") is not None:
        params[KPTS_KEY] = [int(k) for k in oracle_cfg["kpts"]]
    elif oracle_cfg.get("kspacing") is not None:
        params[KSPACING_KEY] = float(oracle_cfg["kspacing"])
    return params


def params_diff(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Keys whose value differs from the recipe (removed keys map to None), sorted."""
    diff = {k: v for k, v in params.items() if k not in base or base[k] != v}
    diff.update({k: None for k in base if k not in params})
    return dict(sorted(diff.items()))


def apply_diff(base: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """Effective parameters of an attempt from the recipe and its recorded diff."""
    params = dict(base)
    for key, value in diff.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        raise TypeError("cannot scale a boolean")
    if isinstance(value, int):
        return max(1, int(round(value * factor)))
    # round away float noise (0.7 * 0.5 * 0.5 ...) so parameter sets compare equal
    return float(f"{float(value) * float(factor):.12g}")


def apply_step(
    params: Mapping[str, Any],
    step: Mapping[str, Any],
    printed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A new parameter dict with ``step`` applied to a copy of ``params``.

    ``printed`` holds the values pw.x printed in the failed attempt (``scale_printed``
    reads them); a step that needs a value pw.x did not print raises ValueError.
    """
    out = dict(params)
    for key, rule in (step.get("scale_printed") or {}).items():
        name = PRINTED_KEYS.get(key)
        value = None if name is None else (printed or {}).get(name)
        if value is None:
            raise ValueError(f"cannot scale {key!r}: pw.x did not print it")
        factor = float(rule.get("factor", _printed_factor()))
        at_least = int(rule.get("at_least", 0))
        out[key] = max(math.ceil(int(value) * factor), int(value) + at_least)
    for key, value in (step.get("set") or {}).items():
        out[key] = value
    for key, factor in (step.get("scale") or {}).items():
        current = out.get(key, PW_DEFAULTS.get(key))
        if current is None:
            raise ValueError(f"cannot scale {key!r}: not set in the recipe and no pw.x default")
        out[key] = _scaled(current, factor)
    if step.get("kspacing") is not None:
        out.pop(KPTS_KEY, None)
        out[KSPACING_KEY] = float(step["kspacing"])
    denser = step.get("denser_k")
    if denser is not None:
        # k-point density x denser: a smaller spacing, or more points of an explicit grid
        if out.get(KPTS_KEY) is not None:
            out[KPTS_KEY] = [int(math.ceil(int(k) * float(denser))) for k in out[KPTS_KEY]]
        elif out.get(KSPACING_KEY) is not None:
            out[KSPACING_KEY] = float(f"{float(out[KSPACING_KEY]) / float(denser):.12g}")
        else:
            raise ValueError("denser_k: no k-points to refine")
    return out


def theory_preserving(
    ladders: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """``ladders`` without the steps marked ``changes_theory`` (smearing, degauss, denser
    k-points): for a calculation whose level of theory is fixed by others' (an isolated
    atom's reference for the labels), where such a rescue could only be refused."""
    return {
        cls: [dict(step) for step in steps if not step.get("changes_theory")]
        for cls, steps in ladders.items()
    }


def validate_ladders(ladders: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Every problem with a ladder definition (empty when usable)."""
    problems: list[str] = []
    for cls, steps in ladders.items():
        if cls not in RETRYABLE:
            why = "is permanent" if cls in PERMANENT else "is not a failure class"
            problems.append(f"retry.ladders.{cls}: {cls!r} {why}; it cannot have a ladder")
            continue
        for i, step in enumerate(steps):
            where = f"retry.ladders.{cls}[{i}]"
            unknown = set(step) - STEP_KEYS
            if unknown:
                problems.append(f"{where}: unknown step keys {sorted(unknown)}")
            if step.get("restart", RESTART_SCRATCH) not in (
                RESTART_SCRATCH,
                RESTART_CHARGE_DENSITY,
            ):
                problems.append(f"{where}: restart must be 'scratch' or 'charge_density'")
            for key, factor in (step.get("scale") or {}).items():
                if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
                    problems.append(f"{where}: scale factor for {key} must be a positive number")
            when = step.get("when")
            if when is not None:
                for t in [when] if isinstance(when, str) else when:
                    if t not in TRENDS:
                        problems.append(f"{where}: when={t!r} is not one of {list(TRENDS)}")
            for key, rule in (step.get("scale_printed") or {}).items():
                if key not in PRINTED_KEYS:
                    problems.append(
                        f"{where}: scale_printed: pw.x prints no value for {key}; "
                        f"one of {sorted(PRINTED_KEYS)}"
                    )
                ok = isinstance(rule, Mapping) and set(rule) <= {"factor", "at_least"}
                factor = (
                    rule.get("factor", _printed_factor()) if isinstance(rule, Mapping) else None
                )
                at_least = rule.get("at_least", 0) if isinstance(rule, Mapping) else None
                if not (
                    ok
                    and isinstance(factor, int | float)
                    and not isinstance(factor, bool)
                    and factor >= 1
                    and isinstance(at_least, int)
                    and not isinstance(at_least, bool)
                    and at_least >= 0
                    and (factor > 1 or at_least > 0)
                ):
                    problems.append(
                        f"{where}: scale_printed.{key} must be {{factor: >= 1, at_least: "
                        "integer >= 0}} and grow the value"
                    )
            for flag in ("repeat", "changes_theory"):
                if flag in step and not isinstance(step[flag], bool):
                    problems.append(f"{where}: {flag} must be true or false")
            below = step.get("when_below")
            if below is not None and (
                not isinstance(below, Mapping)
                or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in below.values()
                )
            ):
                problems.append(f"{where}: when_below must map dotted keys to numbers")
            for key in step.get("when_below") or {}:
                if key not in WHEN_BELOW_KEYS:
                    problems.append(f"{where}: when_below: {key} is not one of {WHEN_BELOW_KEYS}")
            dk = step.get("denser_k")
            if dk is not None and (
                not isinstance(dk, int | float) or isinstance(dk, bool) or dk <= 1
            ):
                problems.append(f"{where}: denser_k must be a number > 1")
            for count in ("probe", "when_kgrid_at_most"):
                value = step.get(count)
                if value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 1
                ):
                    problems.append(f"{where}: {count} must be a positive integer")
            if step.get("only_if") is not None and not isinstance(step["only_if"], Mapping):
                problems.append(f"{where}: only_if must map dotted keys to allowed values")
            if step.get("match") is not None:
                try:
                    re.compile(step["match"])
                except re.error as exc:
                    problems.append(f"{where}: match is not a regular expression: {exc}")
    return problems


# --- SCF trajectory ----------------------------------------------------------------------


def scf_trend(history: Sequence[float]) -> str:
    """Label an SCF accuracy trajectory: decreasing, oscillating, stagnant or none.

    Looks at the second half of the iterations (the start is always noisy):

    * ``decreasing``: it fell by at least a factor 10 there, at most a third of the steps
      went up and none by more than a factor 3, and the last value is (within a factor 2)
      the best so far -- more iterations from the saved density will finish the job
      (a sawtooth that drops and jumps back is *not* decreasing: measured on a rattled
      8-atom Si cell at Gamma whose gap closes, 200 more steps did not help, smearing
      converged in 13);
    * ``oscillating``: at least a third of the steps went up, or at least two jumps up by
      more than a factor 3 -- charge sloshing or occupations flipping between steps;
    * ``stagnant``: neither; ``none``: fewer than 4 iterations.
    """
    values = [v for v in history if v > 0 and math.isfinite(v)]
    if len(values) < 4:
        return TREND_NONE
    tail = values[len(values) // 2 :]
    logs = [math.log10(v) for v in tail]
    steps = [b - a for a, b in zip(logs, logs[1:], strict=False)]
    rises = sum(1 for d in steps if d > 0)
    jumps = sum(1 for d in steps if d > math.log10(3.0))
    frac_rises = rises / max(1, len(steps))
    steady = frac_rises <= 1 / 3 and jumps == 0
    if steady and logs[0] - logs[-1] >= 1.0 and tail[-1] <= 2 * min(values):
        return TREND_DECREASING
    if frac_rises >= 1 / 3 or jumps >= 2:
        return TREND_OSCILLATING
    return TREND_STAGNANT


# --- planning ----------------------------------------------------------------------------


def _key(diff: Mapping[str, Any]) -> str:
    return json.dumps(diff, sort_keys=True, default=str)


def _restart_diff(diff: dict[str, Any], restart: str) -> dict[str, Any]:
    out = {k: v for k, v in diff.items() if k != STARTINGPOT_KEY}
    if restart == RESTART_CHARGE_DENSITY:
        out[STARTINGPOT_KEY] = "file"
    return dict(sorted(out.items()))


def _conditions_hold(
    step: Mapping[str, Any], trend: str, message: str, params: Mapping[str, Any]
) -> bool:
    for key, allowed in (step.get("only_if") or {}).items():
        values = allowed if isinstance(allowed, list | tuple) else [allowed]
        if params.get(key) not in values:
            return False
    when = step.get("when")
    if when is not None:
        wanted = [when] if isinstance(when, str) else list(when)
        if trend not in wanted:
            return False
    match = step.get("match")
    return not (match is not None and re.search(match, message or "") is None)


def plan_next(
    base: Mapping[str, Any],
    ladders: Mapping[str, Sequence[Mapping[str, Any]]],
    max_attempts: int,
    history: Sequence[HistoryEntry],
    density_available: bool = True,
) -> Plan | None:
    """The next attempt for a structure, or None to stop (success, permanent, exhausted).

    ``base`` is the recipe's flat parameter set (:func:`base_params`); ``history`` the
    structure's attempts in order. ``density_available`` says whether a previous attempt
    left a charge density to restart from; when it did not, ``charge_density`` steps run
    from scratch (and are skipped if that repeats a tried parameter set).
    """
    if not history:
        return Plan(1, None, dict(base), {}, RESTART_SCRATCH) if max_attempts >= 1 else None
    last = history[-1]
    if (
        last.failure_class == FailureClass.CONVERGED
        or last.failure_class in PERMANENT
        or len(history) >= max_attempts
    ):
        return None
    steps = ladders.get(last.failure_class) or []
    used = {(h.step.get("ladder"), h.step.get("index")) for h in history if h.step is not None}
    tried = {_key(dict(h.params_diff)) for h in history}
    current = apply_diff(base, {k: v for k, v in last.params_diff.items() if k != STARTINGPOT_KEY})
    if last.step is not None and "probe_restores" in last.step:
        # a probe's short iteration budget is for that attempt only
        restored = last.step["probe_restores"]
        if restored is None:
            current.pop(MAXSTEP_KEY, None)
        else:
            current[MAXSTEP_KEY] = restored
    trend = scf_trend(last.scf_history_ev)
    kgrid = getattr(last, "kgrid", None)
    for index, step in enumerate(steps):
        if (last.failure_class, index) in used:
            continue
        if not _conditions_hold(step, trend, last.message, current):
            continue
        below = step.get("when_below") or {}
        if any(
            not isinstance(current.get(k, PW_DEFAULTS.get(k)), int | float)
            or current.get(k, PW_DEFAULTS.get(k)) >= limit
            for k, limit in below.items()
        ):
            continue
        coarse = step.get("when_kgrid_at_most")
        if coarse is not None and (not kgrid or max(int(k) for k in kgrid) > int(coarse)):
            continue
        try:
            params = apply_step(current, step, getattr(last, "printed", None))
        except (TypeError, ValueError):
            # e.g. a scale of a key that is unset (no pw.x default) or not a number: the
            # step does not apply to this structure; planning must never raise
            continue
        changes = ("set", "scale", "scale_printed", "kspacing", "denser_k")
        if any(step.get(k) for k in changes) and params == current:
            # the step exists to change something it finds already in place
            continue
        restart = step.get("restart", RESTART_SCRATCH)
        if restart == RESTART_CHARGE_DENSITY and not density_available:
            restart = RESTART_SCRATCH
        record = {"ladder": last.failure_class, "index": index, "trend": trend, **step}
        probe = step.get("probe")
        if probe is not None and restart == RESTART_CHARGE_DENSITY:
            # a short budget from the density: when the restart helps it converges fast;
            # when it does not, the next step runs the same settings from scratch
            full = params.get(MAXSTEP_KEY)
            record["probe_restores"] = full
            budget = full if full is not None else PW_DEFAULTS[MAXSTEP_KEY]
            params = {**params, MAXSTEP_KEY: min(int(probe), int(budget))}
        diff = _restart_diff(params_diff(base, params), restart)
        if _key(diff) in tried and not step.get("repeat"):
            continue
        return Plan(len(history) + 1, record, params, diff, restart)
    return None


def default_ladder_markdown(
    ladders: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """The ladder as a markdown table (for the docs and the schema description)."""
    ladders = DEFAULT_LADDERS if ladders is None else ladders
    rows = [
        "| failure class | # | when | changes | restart | why |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, str) else v

    for cls in RETRYABLE:
        for i, step in enumerate(ladders.get(cls) or []):
            changes = [f"`{k} = {fmt(v)}`" for k, v in (step.get("set") or {}).items()]
            changes += [f"`{k} x {fmt(v)}`" for k, v in (step.get("scale") or {}).items()]
            for k, v in (step.get("scale_printed") or {}).items():
                changes.append(
                    f"`{k}` = max(printed x {v.get('factor', _printed_factor()):g}, "
                    f"printed + {v.get('at_least', 0)})"
                )
            if step.get("kspacing") is not None:
                changes.append(f"`kspacing = {step['kspacing']}`")
            if step.get("denser_k") is not None:
                changes.append(f"k-point density x {step['denser_k']}")
            if step.get("probe") is not None:
                changes.append(f"at most {step['probe']} SCF steps (probe)")
            if step.get("changes_theory"):
                changes.append("**changes the level of theory**")
            cond = []
            if step.get("when_kgrid_at_most") is not None:
                cond.append(f"k-grid <= {step['when_kgrid_at_most']} per axis")
            if step.get("when"):
                w = step["when"]
                cond.append("SCF " + (" or ".join(w) if not isinstance(w, str) else w))
            if step.get("match"):
                # a '|' inside a table cell ends the cell, even in backticks
                cond.append("message ~ `" + step["match"].replace("|", "\\|") + "`")
            for key, allowed in (step.get("only_if") or {}).items():
                cond.append(f"`{key}` in {fmt(allowed)}")
            rows.append(
                f"| {cls} | {i + 1} | {'; '.join(cond) or 'always'} | "
                f"{'<br>'.join(changes) or '(none)'} | {step.get('restart', RESTART_SCRATCH)} | "
                f"{step.get('note', '')} |"
            )
    perm = ", ".join(sorted(PERMANENT))
    rows.append("")
    rows.append(f"Never retried (permanent): {perm}.")
    return "\n".join(rows)


def failure_docs_markdown() -> str:
    """``docs/failure-classes.md``: the classes and the default ladder, from the tables.

    Regenerate with ``python -m mlip_autopipec.oracle.ladder > docs/failure-classes.md``.
    """
    return "\n".join(
        [
            "# Failure classes and the default retry ladder",
            "",
            "Generated from `mlip_autopipec/oracle/failures.py` (`CLASSES`) and",
            "`mlip_autopipec/oracle/ladder.py` (`DEFAULT_LADDERS`); regenerate with",
            "`python -m mlip_autopipec.oracle.ladder > docs/failure-classes.md`.",
            "",
            "## Classes",
            "",
            classes_markdown(),
            "",
            "## Default ladder",
            "",
            "A recipe's `oracle.retry.ladders.<class>` replaces the ladder of that class.",
            "",
            default_ladder_markdown(),
            "",
        ]
    )


if __name__ == "__main__":
    print(failure_docs_markdown(), end="")
