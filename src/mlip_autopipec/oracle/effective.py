"""Every pw.x value the oracle writes, where it came from, and pw.x's own default.

A pw.x input copied into a recipe must not silently become a different (costlier) run:
the oracle defaults ``conv_thr`` to 1e-8 Ry and ``ecutrho`` to 8 x ``ecutwfc`` (pw.x: 1e-6
and 4 x), always computes forces and stress, sets ``verbosity='high'`` for smeared runs and
``max_seconds`` from ``oracle.timeout``. :func:`effective_values` reads the inputs the oracle
wrote (``espresso.pwi``) and says, for every variable, whether the recipe set it, the
oracle chose it, or the structure fixed it, next to pw.x 6.7's default (``INPUT_PW``);
the dry run prints it (``autopipec run --dry-run``) and writes it to ``summary.json``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: Where a value came from.
SOURCE_RECIPE: Final = "recipe"
SOURCE_DEFAULT: Final = "oracle default"
SOURCE_ORACLE: Final = "oracle"
SOURCE_STRUCTURE: Final = "structure"


@dataclass(frozen=True)
class PwDefault:
    """pw.x 6.7's default of one variable: a value, or only a text when it depends."""

    value: Any
    text: str = ""


_NONE: Final = object()  # pw.x has no default (the variable is required)

#: pw.x 6.7 defaults (``PW/Doc/INPUT_PW``) of the variables the oracle may write.
PWX_DEFAULTS: Final[Mapping[str, PwDefault]] = {
    "control.calculation": PwDefault("scf"),
    "control.verbosity": PwDefault("low"),
    "control.tprnfor": PwDefault(False, "false for scf"),
    "control.tstress": PwDefault(False, "false for scf"),
    "control.outdir": PwDefault(_NONE, "$ESPRESSO_TMPDIR or ./"),
    "control.prefix": PwDefault("pwscf"),
    "control.pseudo_dir": PwDefault(_NONE, "$ESPRESSO_PSEUDO or ~/espresso/pseudo"),
    "control.max_seconds": PwDefault(1.0e7, "1e7 s (no limit)"),
    "control.restart_mode": PwDefault("from_scratch"),
    "control.disk_io": PwDefault("low", "'low' for scf"),
    "system.ecutwfc": PwDefault(_NONE, "none: required"),
    "system.ecutrho": PwDefault(_NONE, "4 x ecutwfc"),
    "system.occupations": PwDefault("fixed"),
    "system.smearing": PwDefault("gaussian"),
    "system.degauss": PwDefault(0.0),
    "system.nspin": PwDefault(1),
    "system.nbnd": PwDefault(_NONE, "valence bands; metals +20 % (at least 4 more)"),
    "system.noncolin": PwDefault(False),
    "system.lspinorb": PwDefault(False),
    "system.tot_magnetization": PwDefault(_NONE, "unconstrained"),
    "system.starting_magnetization": PwDefault(0.0),
    "system.input_dft": PwDefault(_NONE, "read from the pseudopotentials"),
    "system.nosym": PwDefault(False),
    "electrons.conv_thr": PwDefault(1.0e-6),
    "electrons.electron_maxstep": PwDefault(100),
    "electrons.mixing_beta": PwDefault(0.7),
    "electrons.mixing_mode": PwDefault("plain"),
    "electrons.mixing_ndim": PwDefault(8),
    "electrons.diagonalization": PwDefault("david"),
    "electrons.diago_david_ndim": PwDefault(2),
    "electrons.startingpot": PwDefault("atomic"),
    "electrons.startingwfc": PwDefault("atomic+random"),
    "electrons.scf_must_converge": PwDefault(True),
}


def pwx_default(key: str) -> Any:
    """pw.x's default value of ``key`` (``section.name``), None when it has none or it
    depends on the system."""
    default = PWX_DEFAULTS.get(key)
    return None if default is None or default.value is _NONE else default.value


#: Variables the oracle writes itself whatever the recipe says (or when it is silent),
#: and why.
ORACLE_SET: Final[Mapping[str, str]] = {
    "control.calculation": "single points only",
    "control.tprnfor": "every label has forces",
    "control.tstress": "every label has a stress",
    "control.outdir": "the attempt folder (density restarts read it)",
    "control.prefix": "the attempt folder (density restarts read it)",
    "control.pseudo_dir": "the resolved pseudopotentials",
    "control.verbosity": "smeared runs: occupations printed for the too-few-bands check",
    "control.max_seconds": "oracle.timeout - 10 %: pw.x stops and saves its density first",
    "system.nspin": "2 when a structure has initial moments (oracle.magnetism)",
    "system.starting_magnetization": "the atoms' initial moments / valence",
}
#: Variables fixed by the structure (cell and species), not settings.
STRUCTURE_KEYS: Final = ("system.nat", "system.ntyp", "system.ibrav", "system.celldm")
#: The k-point card's row name.
KPOINTS_KEY: Final = "K_POINTS"


@dataclass(frozen=True)
class EffectiveValue:
    """One pw.x variable over the inputs the oracle wrote."""

    key: str  # "section.name" (a species index stripped), or "K_POINTS"
    values: tuple[Any, ...]  # distinct values in the order met
    source: str  # SOURCE_* (the recipe wins over every other source)
    why: str  # what chose it, for a value the recipe did not set
    pwx_default: str  # pw.x's default as text
    differs: bool  # some value differs from pw.x's default

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "values": list(self.values),
            "source": self.source,
            "why": self.why,
            "pwx_default": self.pwx_default,
            "differs_from_pwx": self.differs,
        }


def _base_key(section: str, name: str) -> str:
    return f"{section.lower()}.{name.lower().split('(')[0]}"


def _fortran(value: Any) -> str:
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _differs(key: str, value: Any, wfc: Any) -> bool | None:
    """Whether ``value`` differs from pw.x's default (None: pw.x has no comparable one)."""
    if key == "system.ecutrho":
        return wfc is None or float(value) != 4.0 * float(wfc)
    default = PWX_DEFAULTS.get(key)
    if default is None or default.value is _NONE:
        return None
    if isinstance(default.value, str):
        return str(value).lower() != default.value
    if isinstance(default.value, bool) or isinstance(value, bool):
        return bool(value) != default.value
    return float(value) != float(default.value)


def _kpoints(cards: list[str]) -> str | None:
    for i, line in enumerate(cards):
        if line.strip().upper().startswith("K_POINTS"):
            kind = line.split()[1].strip("{}()").lower() if len(line.split()) > 1 else "tpiba"
            if kind == "automatic" and i + 1 < len(cards):
                return f"automatic {' '.join(cards[i + 1].split())}"
            return kind
    return None


def effective_values(
    pwi_texts: Iterable[str],
    recipe_input_data: Mapping[str, Any],
    filled_input_data: Mapping[str, Any],
    kpoints_source: str = "",
    *,
    kpoints_from_recipe: bool = False,
) -> list[EffectiveValue]:
    """Every variable of the written inputs ``pwi_texts``, in input order.

    ``recipe_input_data`` is ``oracle.input_data`` as the user wrote it, ``filled_input_data``
    after the oracle's defaults were filled in; ``kpoints_source`` says what chose the
    k-point grid (e.g. ``oracle.kspacing 0.2``), ``kpoints_from_recipe`` whether the recipe
    wrote it (else it is the schema's default).
    """
    from ase.io.espresso import read_fortran_namelist

    written = {
        _base_key(sec, name)
        for sec, vals in (recipe_input_data or {}).items()
        if isinstance(vals, Mapping)
        for name in vals
    }
    filled = {
        _base_key(sec, name)
        for sec, vals in (filled_input_data or {}).items()
        if isinstance(vals, Mapping)
        for name in vals
    }
    seen: dict[str, list[Any]] = {}
    differs: dict[str, bool] = {}
    for text in pwi_texts:
        namelists, cards = read_fortran_namelist(io.StringIO(text))
        wfc = namelists.get("system", {}).get("ecutwfc")
        for sec, vals in namelists.items():
            for name, value in vals.items():
                key = _base_key(sec, name)
                values = seen.setdefault(key, [])
                if value not in values:
                    values.append(value)
                d = _differs(key, value, wfc)
                differs[key] = differs.get(key, False) or bool(d)
        kp = _kpoints(cards)
        if kp is not None:
            values = seen.setdefault(KPOINTS_KEY, [])
            if kp not in values:
                values.append(kp)
            differs[KPOINTS_KEY] = True
    out = []
    for key, values in seen.items():
        if key == KPOINTS_KEY:
            out.append(
                EffectiveValue(
                    key,
                    tuple(values),
                    SOURCE_RECIPE if kpoints_from_recipe else SOURCE_DEFAULT,
                    kpoints_source,
                    "no card: the Gamma point only",
                    True,
                )
            )
            continue
        if key in written:
            source, why = SOURCE_RECIPE, ""
        elif key in ORACLE_SET:
            source, why = SOURCE_ORACLE, ORACLE_SET[key]
        elif key in STRUCTURE_KEYS:
            source, why = SOURCE_STRUCTURE, "the cell and its species"
        elif key in filled:
            source = SOURCE_DEFAULT
            why = "8 x ecutwfc" if key == "system.ecutrho" else "the schema's default"
        else:
            source, why = SOURCE_ORACLE, "retry ladder or ASE's writer"
        default = PWX_DEFAULTS.get(key)
        if default is None:
            shown = "-"
        elif default.text:
            shown = default.text
        else:
            shown = _fortran(default.value)
        out.append(EffectiveValue(key, tuple(values), source, why, shown, differs.get(key, False)))
    return out


def effective_lines(values: Iterable[EffectiveValue]) -> list[str]:
    """One line per variable: ``key = value  [source: why]  (pw.x default: ...)``, a ``*``
    before the variables whose value differs from pw.x's default."""
    lines = []
    for v in values:
        if v.source == SOURCE_STRUCTURE:
            continue  # nat, ntyp, ibrav: the structure, not a setting
        shown = ", ".join(_fortran(x) if v.key != KPOINTS_KEY else str(x) for x in v.values[:4])
        if len(v.values) > 4:
            shown += f", ... ({len(v.values)} values)"
        origin = v.source + (f": {v.why}" if v.why else "")
        mark = "*" if v.differs else " "
        lines.append(f"{mark} {v.key} = {shown}  [{origin}]  (pw.x: {v.pwx_default})")
    return lines
