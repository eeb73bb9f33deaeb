"""The pw.x namelist variables a recipe may set, and the one check of keys and values.

Whitelist: ASE's list of pw.x keys (``ase.io.espresso_namelist.keys.pw_keys``, QE 7.x) minus
the ones pw.x 6.7 does not read, plus the &SYSTEM Hubbard keys QE < 7.1 (the Debian pw.x
6.7) still reads, each with its Fortran type and array rank (QE's INPUT_PW). ASE writes
``input_data`` into the namelists verbatim (``key = repr(value)``), so a key or value that is
not a plain pw.x variable and scalar can end a namelist and inject input; this module is the
one place that decides what may pass. :func:`check_namelists` is used by ``validate`` and
may be called by the oracle at run time on the effective parameters of an attempt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ase.io.espresso_namelist.keys import pw_keys

from mlip_autopipec.recipe.schema import did_you_mean

SECTIONS = ("control", "system", "electrons", "ions", "cell")

B, N, F, S = bool, int, float, str  # pw.x LOGICAL, INTEGER, REAL, CHARACTER


@dataclass(frozen=True)
class Var:
    """A pw.x namelist variable: its Fortran type and array shape (``()``: scalar).

    ``dims`` holds one entry per index: the fixed extent, or 0 when it runs over
    species/atoms (any positive index).
    """

    type: type
    dims: tuple[int, ...] = ()


_SP = (0,)  # one index per species

_TYPES: dict[str, dict[str, Var]] = {
    "control": {
        **{k: Var(S) for k in ("calculation", "title", "verbosity", "restart_mode", "outdir")},
        **{k: Var(S) for k in ("wfcdir", "prefix", "disk_io", "pseudo_dir")},
        **{k: Var(B) for k in ("wf_collect", "tstress", "tprnfor", "lkpoint_dir", "tefield")},
        **{k: Var(B) for k in ("dipfield", "lelfield", "lorbm", "lberry", "gate", "twochem")},
        **{k: Var(B) for k in ("lfcp", "trism")},
        **{k: Var(N) for k in ("nstep", "iprint", "nberrycyc", "gdir", "nppstr")},
        **{k: Var(F) for k in ("dt", "max_seconds", "etot_conv_thr", "forc_conv_thr")},
    },
    "system": {
        **{k: Var(N) for k in ("ibrav", "nat", "ntyp", "nbnd", "nbnd_cond", "nspin", "edir")},
        **{k: Var(N) for k in ("nr1", "nr2", "nr3", "nr1s", "nr2s", "nr3s", "nqx1", "nqx2")},
        **{k: Var(N) for k in ("nqx3", "report", "esm_nfit", "dftd3_version", "space_group")},
        **{k: Var(N) for k in ("origin_choice", "nextffield", "lda_plus_u_kind")},
        **{k: Var(S) for k in ("occupations", "smearing", "pol_type", "input_dft")},
        **{k: Var(S) for k in ("exxdiv_treatment", "dmft_prefix", "constrained_magnetization")},
        **{k: Var(S) for k in ("assume_isolated", "esm_bc", "vdw_corr", "u_projection_type")},
        **{
            k: Var(B)
            for k in (
                "nosym",
                "nosym_evc",
                "noinv",
                "no_t_rev",
                "force_symmorphic",
                "use_all_frac",
                "one_atom_occupations",
                "starting_spin_angle",
                "sic_energy",
                "noncolin",
                "ace",
                "x_gamma_extrapolation",
                "dmft",
                "ensemble_energies",
                "lforcet",
                "lspinorb",
                "lgcscf",
                "london",
                "dftd3_threebody",
                "ts_vdw_isolated",
                "xdm",
                "uniqueb",
                "rhombohedral",
                "relaxz",
                "block",
                "lda_plus_u",
            )
        },
        **{
            k: Var(F)
            for k in (
                "a",
                "b",
                "c",
                "cosab",
                "cosac",
                "cosbc",
                "tot_charge",
                "tot_magnetization",
                "ecutwfc",
                "ecutrho",
                "ecutfock",
                "degauss_cond",
                "nelec_cond",
                "degauss",
                "sic_gamma",
                "sci_vb",
                "sci_cb",
                "ecfixed",
                "qcutz",
                "q2sigma",
                "exx_fraction",
                "screening_parameter",
                "ecutvcut",
                "localization_thr",
                "emaxpos",
                "eopreg",
                "eamp",
                "lambda",
                "esm_w",
                "esm_efield",
                "gcscf_mu",
                "gcscf_conv_thr",
                "gcscf_beta",
                "london_s6",
                "london_rcut",
                "ts_vdw_econv_thr",
                "xdm_a1",
                "xdm_a2",
                "zgate",
                "block_1",
                "block_2",
                "block_height",
            )
        },
        "celldm": Var(F, (6,)),
        "fixed_magnetization": Var(F, (3,)),
        "hubbard_j": Var(F, (3, 0)),
        "hubbard_v": Var(F, (0, 0, 4)),
        "hubbard_occ": Var(F, (0, 3)),
        "starting_ns_eigenvalue": Var(F, (0, 2, 0)),
        **{
            k: Var(F, _SP)
            for k in (
                "starting_charge",
                "starting_magnetization",
                "hubbard_alpha",
                "hubbard_beta",
                "hubbard_u",
                "hubbard_j0",
                "angle1",
                "angle2",
                "london_c6",
                "london_rvdw",
            )
        },
    },
    "electrons": {
        **{k: Var(N) for k in ("electron_maxstep", "exx_maxstep", "mixing_ndim")},
        **{k: Var(N) for k in ("mixing_fixed_ns", "diago_cg_maxiter", "diago_ppcg_maxiter")},
        **{k: Var(N) for k in ("diago_david_ndim", "diago_rmm_ndim", "diago_gs_nblock")},
        **{k: Var(B) for k in ("scf_must_converge", "adaptive_thr", "diago_rmm_conv")},
        **{k: Var(B) for k in ("diago_full_acc", "tqr", "real_space")},
        **{k: Var(F) for k in ("conv_thr", "conv_thr_init", "conv_thr_multi", "mixing_beta")},
        **{k: Var(F) for k in ("diago_thr_init", "efield")},
        **{k: Var(S) for k in ("mixing_mode", "diagonalization", "efield_phase")},
        **{k: Var(S) for k in ("startingpot", "startingwfc")},
        "efield_cart": Var(F, (3,)),
    },
    "ions": {
        **{k: Var(S) for k in ("ion_positions", "ion_velocities", "ion_dynamics")},
        **{k: Var(S) for k in ("pot_extrapolation", "wfc_extrapolation", "ion_temperature")},
        **{k: Var(B) for k in ("remove_rigid_rot", "refold_pos")},
        **{k: Var(N) for k in ("nraise", "bfgs_ndim", "fire_nmin")},
        **{
            k: Var(F)
            for k in (
                "tempw",
                "tolp",
                "delta_t",
                "upscale",
                "trust_radius_max",
                "trust_radius_min",
                "trust_radius_ini",
                "w_1",
                "w_2",
                "fire_alpha_init",
                "fire_falpha",
                "fire_f_inc",
                "fire_f_dec",
                "fire_dtmax",
            )
        },
    },
    "cell": {
        "cell_dynamics": Var(S),
        "cell_dofree": Var(S),
        **{k: Var(F) for k in ("press", "wmass", "cell_factor", "press_conv_thr")},
    },
}

#: Keys pw.x < 7.1 (e.g. the Debian QE 6.7) still reads from &SYSTEM; ASE's list follows
#: QE 7.x where Hubbard parameters moved to the HUBBARD card.
_LEGACY: dict[str, set[str]] = {
    "system": {
        "lda_plus_u",
        "lda_plus_u_kind",
        "hubbard_u",
        "hubbard_j0",
        "hubbard_j",
        "hubbard_v",
        "u_projection_type",
    },
}

#: In ASE's list but not read by pw.x 6.7 (its namelist read fails on them: measured with
#: the Debian pw.x 6.7 by tests/recipe/test_namelists_pwx.py); QE 6.8 and later.
NEWER_THAN_67: dict[str, set[str]] = {
    "control": {"lfcp", "trism", "twochem"},
    "system": {
        "degauss_cond",
        "dmft",
        "dmft_prefix",
        "ensemble_energies",
        "gcscf_beta",
        "gcscf_conv_thr",
        "gcscf_mu",
        "hubbard_occ",
        "lgcscf",
        "nbnd_cond",
        "nelec_cond",
        "nextffield",
        "pol_type",
        "sci_cb",
        "sci_vb",
        "sic_energy",
        "sic_gamma",
    },
    "electrons": {
        "diago_gs_nblock",
        "diago_ppcg_maxiter",
        "diago_rmm_conv",
        "diago_rmm_ndim",
        "exx_maxstep",
    },
    "ions": {
        "fire_alpha_init",
        "fire_dtmax",
        "fire_f_dec",
        "fire_f_inc",
        "fire_falpha",
        "fire_nmin",
    },
    "cell": set(),
}

#: Section -> the pw.x 6.7 variables a recipe may name (lower case).
NAMELISTS: dict[str, set[str]] = {
    section: ({k.lower() for k in pw_keys[section]} | _LEGACY.get(section, set()))
    - NEWER_THAN_67[section]
    for section in SECTIONS
}
#: Section -> name -> type and shape; every whitelisted name has one.
VARIABLES: dict[str, dict[str, Var]] = {
    section: {name: _TYPES[section].get(name, Var(F)) for name in sorted(NAMELISTS[section])}
    for section in SECTIONS
}

#: Keys autopipec sets itself (from the structure, other recipe settings or the attempt).
#: Refused in every spelling: any case, with spaces, with an index.
MANAGED: dict[str, str] = {
    "nat": "set from the structure",
    "ntyp": "set from the structure",
    "ibrav": "the cell is always given explicitly (ibrav = 0)",
    "celldm": "the cell comes from the structure",
    "a": "the cell comes from the structure",
    "b": "the cell comes from the structure",
    "c": "the cell comes from the structure",
    "cosab": "the cell comes from the structure",
    "cosac": "the cell comes from the structure",
    "cosbc": "the cell comes from the structure",
    "space_group": "the cell comes from the structure",
    "pseudo_dir": "use oracle.pseudo_dir",
    "outdir": "every attempt runs in its own directory",
    "prefix": "every attempt runs in its own directory",
    "wfcdir": "every attempt runs in its own directory",
    "lkpoint_dir": "every attempt runs in its own directory",
    "disk_io": "the oracle needs pw.x's saved charge density for its restarts",
    "restart_mode": "restarts are retry steps (restart: charge_density)",
    "startingpot": "set by a retry step's restart: charge_density",
    "max_seconds": "set from oracle.timeout (pw.x stops cleanly just before it)",
    "nstep": "labels are single points (one SCF)",
    "starting_magnetization": "set it per element under oracle.magnetism (ASE derives "
    "starting_magnetization from the initial moments)",
}

#: Managed keys a recipe may still give, with the only value they can have.
FIXED: dict[str, Any] = {"calculation": "scf", "tprnfor": True, "tstress": True}
_FIXED_WHY = {
    "calculation": "labels are single points: pw.x must not move the atoms or the cell "
    "(a relaxed energy stored with the unrelaxed structure is a wrong label); "
    "relax structures before labelling them",
    "tprnfor": "forces are part of every label",
    "tstress": "stress is part of every label",
}

#: Exact spelling of a key: a name, and an integer index only where pw.x takes one.
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\(([0-9]+(?:,[0-9]+){0,2})\))?$")
#: Characters a string value may contain: a pw.x string value is a word like 'smearing',
#: 'local-TF' or 'vdw-df2-b86r'. Quotes, '/', '&', '!', ',', '=' and newlines could end
#: the value or the namelist.
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_.+\- ]*$")
#: pw.x reads string variables into CHARACTER(len=80) (titles, functionals, ...).
MAX_STRING = 80
#: pw.x's own limit on species (ntypx in QE 6.7).
MAX_SPECIES = 10
_LOOSE = re.compile(r"[\s()',=/&!]")


def base_key(key: str) -> str:
    """``Hubbard_U(1)`` -> ``hubbard_u``; also the base of a garbled key (for messages)."""
    text = str(key).strip().lower()
    return re.split(r"[\s(]", text, maxsplit=1)[0] if text else text


def _home(name: str) -> str | None:
    for section in SECTIONS:
        if name in NAMELISTS[section]:
            return section
    return None


def home_of(key: str) -> str | None:
    """The namelist a pw.x variable belongs to (``ecutwfc`` -> ``system``), else None."""
    return _home(base_key(key))


def _managed_name(key: str) -> str | None:
    """The managed name hidden in ``key`` in any spelling, else None."""
    text = str(key).lower()
    for name in (*MANAGED, *FIXED):
        if re.search(rf"(^|[^a-z0-9_]){re.escape(name)}($|[^a-z0-9_])", text):
            if name in ("a", "b", "c") and base_key(key) != name:
                continue  # one-letter names only as the whole key
            return name
    return None


def check_key(section: str, key: str) -> str | None:
    """None if ``key`` is an exact pw.x variable of namelist ``section`` that a recipe
    may set, else a message saying why not."""
    if section not in NAMELISTS:
        return f"{section!r} is not a pw.x namelist; expected one of {', '.join(SECTIONS)}"
    key = str(key)
    m = _KEY.match(key)
    name = m.group(1).lower() if m else None
    hidden = _managed_name(key)
    if hidden is not None and (hidden not in FIXED or key != hidden):
        if hidden in FIXED:
            return (
                f"{key!r}: {hidden} is set by autopipec ({_FIXED_WHY[hidden]}); "
                f"write it as plain '{hidden}' or leave it out"
            )
        return f"{key!r} is managed by autopipec ({MANAGED[hidden]}); remove it"
    if m is None or name is None:
        return (
            f"{key!r} is not a pw.x variable name: expected a name such as 'mixing_beta' "
            "or an indexed one such as 'Hubbard_U(1)' (letters, digits, '_', no spaces)"
        )
    if name in FIXED:
        return None
    if name not in NAMELISTS[section]:
        if any(name in NEWER_THAN_67[sec] for sec in SECTIONS):
            return (
                f"{key!r} is a pw.x variable of QE 6.8 or later; the pw.x 6.7 this tool "
                "drives does not read it"
            )
        home = _home(name)
        if home:
            return f"{key!r} belongs to &{home.upper()} (input_data.{home}), not &{section.upper()}"
        hint = did_you_mean(name, sorted(NAMELISTS[section]))
        if not hint:
            hint = did_you_mean(name, sorted(set().union(*NAMELISTS.values())))
        return f"{key!r} is not a pw.x &{section.upper()} variable{hint}"
    var = VARIABLES[section][name]
    index = m.group(2)
    if not var.dims:
        if index is not None:
            return f"{key!r}: {name} is not an array in pw.x; write {name} without an index"
        return None
    if index is None:
        example = f"{name}({','.join('1' * len(var.dims))})"
        return f"{key!r}: {name} is an array in pw.x; give the index, e.g. {example!r}"
    numbers = [int(n) for n in index.split(",")]
    if len(numbers) != len(var.dims):
        return f"{key!r}: {name} takes {len(var.dims)} index(es), not {len(numbers)}"
    for n, extent in zip(numbers, var.dims, strict=True):
        top = extent or (MAX_SPECIES if len(var.dims) == 1 else 10_000)
        if not 1 <= n <= top:
            return f"{key!r}: index {n} is out of range (1..{top})"
    return None


def _type_name(t: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[t]


def check_value(section: str, key: str, value: Any) -> str | None:
    """None if ``value`` is a valid scalar for pw.x variable ``section.key``, else why not.

    Assumes :func:`check_key` accepted the key.
    """
    m = _KEY.match(str(key))
    name = m.group(1).lower() if m else base_key(key)
    if name in FIXED:
        if value != FIXED[name] or type(value) is not type(FIXED[name]):
            if name in ("tprnfor", "tstress") and value is False:
                return None  # forced back to true; validate warns
            return f"{name} must be {FIXED[name]!r}: {_FIXED_WHY[name]}"
        return None
    var = VARIABLES.get(section, {}).get(name)
    if var is None:
        return None
    if isinstance(value, dict | list | tuple | set):
        kind = "a mapping" if isinstance(value, dict) else "a list"
        hint = ""
        if var.dims:
            hint = f"; give one key per index, e.g. {name}({','.join('1' * len(var.dims))})"
        return f"{key!r} needs a single value ({_type_name(var.type)}), not {kind}{hint}"
    if value is None:
        return f"{key!r} needs {_type_name(var.type)}, not null (leave the key out instead)"
    want = var.type
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        shown = repr(value) if not isinstance(value, str) else "a string"
        return f"{key!r} needs {_type_name(want)}, got {shown}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key!r} must be a finite number, not {value!r}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**31:
        return f"{key!r}: {value} does not fit a pw.x (32-bit) integer"
    if isinstance(value, float) and value != 0 and not 1e-300 < abs(value) < 1e300:
        return f"{key!r}: {value!r} is outside the range pw.x reads"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"{key!r}: string longer than {MAX_STRING} characters (pw.x truncates it)"
        if not _SAFE_STRING.match(value):
            return (
                f"{key!r}: string contains a character pw.x input cannot carry safely "
                "(quotes, '/', '&', '!', ',', '=', newlines, ...); a pw.x value is a word "
                "of letters, digits, '_', '.', '+', '-' and spaces"
            )
    return None


def iter_problems(
    input_data: Any, *, allow: Collection[str] = ()
) -> Iterator[tuple[str | None, str | None, bool, str]]:
    """(section, key, at_key, message) for every problem in nested ``input_data``.

    ``allow`` names managed keys the caller sets itself (``"electrons.startingpot"``).
    """
    if not isinstance(input_data, Mapping):
        yield None, None, False, "input_data must map namelist names to mappings"
        return
    for section, values in input_data.items():
        sec = str(section)
        if sec not in SECTIONS:
            hint = did_you_mean(sec.lower(), SECTIONS)
            yield sec, None, True, f"{sec!r} is not a pw.x namelist{hint}"
            continue
        if not isinstance(values, Mapping):
            yield sec, None, False, f"input_data.{sec} must be a mapping of pw.x variables"
            continue
        seen: dict[str, str] = {}
        for key, value in values.items():
            k = str(key)
            if f"{sec}.{k}" in allow:
                continue
            problem = check_key(sec, k)
            if problem:
                yield sec, k, True, problem
                continue
            canonical = k.lower()
            if canonical in seen:
                yield sec, k, True, f"{k!r} is given twice (also as {seen[canonical]!r})"
                continue
            seen[canonical] = k
            problem = check_value(sec, k, value)
            if problem:
                yield sec, k, False, problem


def check_namelists(input_data: Any, *, allow: Collection[str] = ()) -> list[str]:
    """Every problem with nested pw.x ``input_data`` (``{"system": {"ecutwfc": 30}}``).

    Empty when every key is an exact, unmanaged pw.x variable of its namelist (with an
    integer index only where pw.x takes one) and every value a finite, injection-free
    scalar of the variable's type. ``allow`` lists dotted managed keys the caller itself
    sets (the oracle's ``electrons.startingpot``). Messages start with ``section.key:``.
    """
    out = []
    for section, key, _, message in iter_problems(input_data, allow=allow):
        where = ".".join(p for p in (section, key) if p is not None)
        out.append(f"{where}: {message}" if where else message)
    return out


def value_type(section: str, key: str) -> type | None:
    """Python type of pw.x variable ``section.key`` (int/float/bool/str), else None."""
    m = _KEY.match(str(key))
    if m is None:
        return None
    var = VARIABLES.get(section, {}).get(m.group(1).lower())
    return None if var is None else var.type
