"""The level of theory of a label, and one level of theory per training set.

Every attempt records ``theory``: what defines the Hamiltonian it solved (functional and
pseudopotentials from the UPF headers with their md5, cutoffs, occupations and smearing,
spin, and every other &SYSTEM/&CONTROL key that changes the physics), plus the k-point
sampling, which is recorded but *not* part of the key: k-point densification is a
refinement toward the same converged answer, not another theory.

``theory_key`` is a short stable hash of the key part and a readable summary, e.g.
``3f2a9c01d4e7 PBE ecut=30/240Ry fixed nspin=1``. Two labels share a level of theory
exactly when their keys are equal.

:func:`dominant_theory` picks the theory most labels share, so that the trainer can fit
one level of theory and list the structures it left out.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

#: Keys of the theory dict that are recorded but not hashed into the key.
NOT_IN_KEY: Final = frozenset({"kpoints"})

#: pw.x 6.7 defaults of the keys the summary and the key need even when unset.
PW_THEORY_DEFAULTS: Final[Mapping[str, Any]] = {
    "system.occupations": "fixed",
    "system.smearing": "gaussian",
    "system.nspin": 1,
}

#: &SYSTEM keys that do not change the Hamiltonian (numerics, symmetry, bookkeeping,
#: initial guesses). Every other &SYSTEM key that is set is part of the theory.
SYSTEM_NOT_THEORY: Final = frozenset(
    {
        "nat",
        "ntyp",
        "ibrav",
        "celldm",
        "a",
        "b",
        "c",
        "cosab",
        "cosac",
        "cosbc",
        "nbnd",
        "nr1",
        "nr2",
        "nr3",
        "nr1s",
        "nr2s",
        "nr3s",
        "nosym",
        "nosym_evc",
        "noinv",
        "no_t_rev",
        "force_symmorphic",
        "use_all_frac",
        "starting_charge",
        "starting_magnetization",
        "starting_spin_angle",
        "space_group",
        "uniqueb",
        "origin_choice",
        "rhombohedral",
        "one_atom_occupations",
        "report",
    }
)

#: &CONTROL keys that add a term to the Hamiltonian (fields, gates, dipoles).
CONTROL_THEORY: Final = frozenset(
    {"tefield", "dipfield", "lelfield", "gate", "lfcp", "trism", "lorbm", "nberrycyc"}
)

_Z_VALENCE_V2 = re.compile(r'z_valence\s*=\s*"\s*([^"]+?)\s*"', re.IGNORECASE)
_Z_VALENCE_V1 = re.compile(r"^\s*([-+0-9.eEdD]+)\s+Z\s*valence", re.MULTILINE | re.IGNORECASE)
_FUNCTIONAL_V2 = re.compile(r'functional\s*=\s*"([^"]*)"', re.IGNORECASE)
_FUNCTIONAL_V1 = re.compile(r"^\s*(.+?)\s+Exchange-Correlation functional", re.MULTILINE)


@dataclass(frozen=True)
class PseudoInfo:
    """What a UPF file's header says (and its md5)."""

    file: str
    md5: str
    functional: str | None
    z_valence: float | None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip().lower().replace("d", "e"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@functools.lru_cache(maxsize=256)
def _pseudo_info(path: str, mtime_ns: int, size: int) -> PseudoInfo:
    data = Path(path).read_bytes()
    # the header is near the top; never scan a whole multi-MB file with regexes
    head = data[:200_000].decode("utf-8", errors="replace")
    z = None
    if (m := _Z_VALENCE_V2.search(head)) or (m := _Z_VALENCE_V1.search(head)):
        z = _number(m.group(1))
    functional = None
    if (f := _FUNCTIONAL_V2.search(head)) or (f := _FUNCTIONAL_V1.search(head)):
        functional = " ".join(f.group(1).split()) or None
    return PseudoInfo(Path(path).name, hashlib.md5(data).hexdigest(), functional, z)


def pseudo_info(path: Path | str) -> PseudoInfo:
    """Functional, valence charge and md5 of a UPF file (v1 or v2); cached per file version.

    Raises OSError when the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    return _pseudo_info(str(p), st.st_mtime_ns, st.st_size)


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # 30 and 30.0 are the same cutoff; round float noise away
        return int(value) if value.is_integer() else float(f"{value:.10g}")
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | np.ndarray):
        return [_canonical(v) for v in value]
    return str(value)


def kpoint_record(
    cell: np.ndarray | None,
    kgrid: tuple[int, int, int] | None,
    kspacing: float | None,
    kpts: tuple[int, int, int] | None,
) -> dict[str, Any]:
    """The k-point sampling of an attempt (recorded, never in the key).

    ``spacing`` is the achieved spacing ``max_i |b_i| / n_i`` in 1/Å (ASE convention, no
    2π; smaller is denser), comparable across cells of different size.
    """
    rec: dict[str, Any] = {"kspacing": kspacing, "kpts": None if kpts is None else list(kpts)}
    if kgrid is not None:
        rec["grid"] = [int(k) for k in kgrid]
        if cell is not None:
            recip = np.linalg.norm(np.linalg.inv(np.asarray(cell, dtype=float)).T, axis=1)
            rec["spacing"] = float(f"{max(recip / np.asarray(kgrid, dtype=float)):.6g}")
    return rec


def theory_of(
    params: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path | str],
    *,
    kpoints: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The theory dict of one attempt from its effective flat pw.x parameters.

    ``params`` are dotted keys (``system.ecutwfc``) as the retry ladder applies them, with
    ``system.nspin`` already the effective value; ``pseudopotentials`` maps each element
    of the structure to its file. Unset keys take pw.x's defaults (ecutrho = 4 ecutwfc;
    smearing and degauss only count when ``occupations`` is ``smearing``).
    """
    p = {str(k).lower(): v for k, v in params.items()}
    pps: dict[str, Any] = {}
    functionals: dict[str, str | None] = {}
    for el in sorted(pseudopotentials):
        try:
            info = pseudo_info(pseudopotentials[el])
        except OSError:
            pps[el] = {"file": Path(pseudopotentials[el]).name, "md5": None}
            functionals[el] = None
            continue
        pps[el] = {"file": info.file, "md5": info.md5}
        functionals[el] = info.functional
    ecutwfc = p.get("system.ecutwfc")
    ecutrho = p.get("system.ecutrho")
    if ecutrho is None and ecutwfc is not None:
        ecutrho = 4 * float(ecutwfc)
    occupations = p.get("system.occupations") or PW_THEORY_DEFAULTS["system.occupations"]
    theory: dict[str, Any] = {
        "functional": functionals,
        "input_dft": p.get("system.input_dft"),
        "pseudopotentials": pps,
        "ecutwfc": ecutwfc,
        "ecutrho": ecutrho,
        "occupations": occupations,
        "smearing": None,
        "degauss": None,
        "nspin": int(p.get("system.nspin") or PW_THEORY_DEFAULTS["system.nspin"]),
    }
    if occupations == "smearing":
        theory["smearing"] = p.get("system.smearing") or PW_THEORY_DEFAULTS["system.smearing"]
        theory["degauss"] = float(p.get("system.degauss") or 0.0)
    named = {
        "system.ecutwfc",
        "system.ecutrho",
        "system.occupations",
        "system.smearing",
        "system.degauss",
        "system.nspin",
        "system.input_dft",
    }
    other: dict[str, Any] = {}
    for key, value in p.items():
        if key in named or "." not in key or value is None:
            continue
        section, name = key.split(".", 1)
        base = name.split("(", 1)[0]
        if (section == "system" and base not in SYSTEM_NOT_THEORY) or (
            section == "control" and base in CONTROL_THEORY
        ):
            other[key] = value
    theory["other"] = other
    theory["kpoints"] = dict(kpoints or {})
    out: dict[str, Any] = _canonical(theory)
    return out


def _short_functional(theory: Mapping[str, Any]) -> str:
    if theory.get("input_dft"):
        return str(theory["input_dft"])
    names = sorted({str(f) for f in (theory.get("functional") or {}).values() if f})
    if not names:
        return "?"
    short = {"SLA PW PBE PBE": "PBE", "SLA PZ NOGX NOGC": "LDA", "SLA PW PSX PSC": "PBEsol"}
    return "+".join(short.get(n, n) for n in names)


def theory_summary(theory: Mapping[str, Any]) -> str:
    """One readable line: functional, cutoffs, occupations, spin (and 'other' keys)."""

    def num(v: Any) -> str:
        return "?" if v is None else f"{float(v):g}"

    parts = [
        _short_functional(theory),
        f"ecut={num(theory.get('ecutwfc'))}/{num(theory.get('ecutrho'))}Ry",
    ]
    if theory.get("occupations") == "smearing":
        parts.append(f"{theory.get('smearing')}:{num(theory.get('degauss'))}Ry")
    else:
        parts.append(str(theory.get("occupations")))
    parts.append(f"nspin={theory.get('nspin')}")
    other = theory.get("other") or {}
    if other:
        parts.append("+" + ",".join(sorted(k.split(".", 1)[-1] for k in other)))
    return " ".join(parts)


def theory_key(theory: Mapping[str, Any]) -> str:
    """``<12 hex digits> <summary>``; the hash covers every field except the k-points."""
    keyed = {k: v for k, v in theory.items() if k not in NOT_IN_KEY}
    text = json.dumps(_canonical(keyed), sort_keys=True, separators=(",", ":"))
    return f"{hashlib.sha256(text.encode()).hexdigest()[:12]} {theory_summary(theory)}"


def _key_of(label: Any) -> str | None:
    if isinstance(label, Mapping):
        return label.get("theory_key")
    return getattr(label, "theory_key", None)


def _id_of(label: Any, index: int) -> Any:
    if isinstance(label, Mapping):
        return label.get("id", label.get("structure_id", index))
    sid = getattr(label, "structure_id", None)
    return index if sid in (None, "") else sid


def dominant_theory(labels: Iterable[Any]) -> tuple[str | None, list[Any], list[Any]]:
    """(key, kept ids, left-out ids): the theory most labels share, and who is left out.

    ``labels`` are objects with ``theory_key`` and ``structure_id`` attributes (e.g.
    :class:`AttemptResult`), or mappings with ``theory_key`` and ``id`` (or
    ``structure_id``); a label without an id is named by its position. A tie goes to the
    theory of the first label in the list (the recipe's own settings label first).
    Labels without a recorded key (stored before theories were recorded) count as one
    theory of their own, ``None``.
    """
    items = [(_key_of(label), _id_of(label, i)) for i, label in enumerate(labels)]
    if not items:
        return None, [], []
    counts = Counter(k for k, _ in items)
    first_seen = {k: i for i, (k, _) in reversed(list(enumerate(items)))}
    best = max(counts, key=lambda k: (counts[k], -first_seen[k]))
    kept = [i for k, i in items if k == best]
    left = [i for k, i in items if k != best]
    return best, kept, left


#: What the trainer does with labels of another theory than the one it fits
#: (recipe ``oracle.theory_mismatch``).
MISMATCH_EXCLUDE: Final = "exclude"
MISMATCH_RELABEL: Final = "relabel"


def theory_settings(params_diff: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an attempt's ``params_diff`` that changes the level of theory.

    E.g. a smearing rescue's ``{"system.occupations": "smearing", "system.smearing": "mv",
    "system.degauss": 0.02, "electrons.mixing_beta": 0.35}`` -> the three &SYSTEM keys.
    A removed key maps to None, as in ``params_diff``.
    """
    out: dict[str, Any] = {}
    for key, value in params_diff.items():
        if "." not in key:
            continue
        section, name = key.lower().split(".", 1)
        base = name.split("(", 1)[0]
        if (section == "system" and base not in SYSTEM_NOT_THEORY) or (
            section == "control" and base in CONTROL_THEORY
        ):
            out[key] = value
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class RelabelPlan:
    """``relabel``: give every label the theory of the rescues (see :func:`relabel_plan`)."""

    target_key: str
    settings: dict[str, Any]  # dotted pw.x keys to set (None: remove) on the recipe's
    relabel_ids: list[Any]  # labels whose theory differs from target_key


def relabel_plan(labels: Iterable[Any]) -> RelabelPlan | None:
    """Which labels to recompute so that the whole set shares the rescues' theory.

    ``labels`` are final attempt results (``theory_key``, ``params_diff``,
    ``structure_id``). The target is the most common theory among labels whose ladder
    changed the theory (their ``params_diff`` has theory settings); every label of another
    theory is to be relabelled with the recipe's settings plus :attr:`RelabelPlan.settings`
    (:func:`with_theory_settings`). None when the set already has one theory or no rescue
    changed it.
    """
    items = list(labels)
    if len({_key_of(x) for x in items}) <= 1:
        return None
    rescued = [x for x in items if theory_settings(_diff_of(x))]
    if not rescued:
        return None
    target, _, _ = dominant_theory(rescued)
    if target is None:
        return None
    example = next(x for x in rescued if _key_of(x) == target)
    others = [_id_of(x, i) for i, x in enumerate(items) if _key_of(x) != target]
    return RelabelPlan(target, theory_settings(_diff_of(example)), others)


def _diff_of(label: Any) -> Mapping[str, Any]:
    if isinstance(label, Mapping):
        return label.get("params_diff") or {}
    return getattr(label, "params_diff", None) or {}


def with_theory_settings(
    oracle_cfg: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """A copy of the recipe's ``oracle`` section with ``settings`` (dotted keys) applied
    to its ``input_data``: the oracle that relabels with the rescue's theory."""
    cfg = copy.deepcopy(dict(oracle_cfg))
    input_data = cfg.setdefault("input_data", {})
    for key, value in settings.items():
        section, name = key.split(".", 1)
        sec = input_data.setdefault(section.lower(), {})
        if value is None:
            sec.pop(name, None)
        else:
            sec[name] = value
    out: dict[str, Any] = cfg
    return out


def final_theory_key(attempts: Iterable[Mapping[str, Any]]) -> str | None:
    """The theory key of a structure's label: that of its last converged attempt.

    ``attempts`` are stored ``AttemptResult.to_dict()`` dicts (``Store.attempts_of``);
    None when there is no converged attempt or it was stored before keys were recorded.
    """
    key = None
    for a in attempts:
        if a.get("failure_class") == "converged":
            key = a.get("theory_key")
    return key


def one_theory(
    atoms_list: Sequence[Any], key_of: Callable[[Any], str | None]
) -> tuple[list[Any], list[Any], str | None]:
    """(kept atoms, left-out structure ids, key): the training set of the dominant theory.

    ``atoms_list`` are labelled Atoms with ``info["structure_id"]`` (``Store.labelled_atoms``);
    ``key_of(structure_id)`` gives each one's theory key (e.g. ``final_theory_key`` of
    ``Store.attempts_of``, or the store's ``labels.theory_key`` column).
    """
    ids = [a.info.get("structure_id", i) for i, a in enumerate(atoms_list)]
    key, kept, left = dominant_theory([{"id": i, "theory_key": key_of(i)} for i in ids])
    keep = set(kept)
    return [a for a, i in zip(atoms_list, ids, strict=True) if i in keep], left, key
