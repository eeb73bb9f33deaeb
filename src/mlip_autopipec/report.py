"""``autopipec report``: ``RUN_DIR/report/index.html`` and ``RUN_DIR/report/report.json``.

The page is self-contained (every figure embedded as a base64 PNG data URI, no scripts or
styles fetched from anywhere) so it opens offline and can be mailed around; the PNG files
are also written next to it. ``report.json`` holds the same numbers as the page: counts,
metrics, one row per structure, retry-ladder statistics and the parity data.

Everything is read from the store (labels, attempts, quarantine reasons, the potential)
and from pacemaker's prediction tables of the current fit. A run without a potential, or
with quarantined structures, still gets a report: a figure that cannot be drawn is
replaced by a sentence saying why.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from mlip_autopipec.errors import AutopipecError, UsageError
from mlip_autopipec.fsutil import atomic_write
from mlip_autopipec.lifecycle.export import foreign_tables_message
from mlip_autopipec.lifecycle.machine import STATES
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.lifecycle.theories import RunTheories, run_theories
from mlip_autopipec.trainer.fit import POTENTIAL_JSON

REPORT_DIR = "report"
INDEX_HTML = "index.html"
REPORT_JSON = "report.json"

#: Figures in page order: file name -> title.
FIGURES: dict[str, str] = {
    "energy_parity.png": "Energy parity (per atom)",
    "force_parity.png": "Force parity (components)",
    "error_histograms.png": "Error histograms",
    "attempts.png": "pw.x attempts per structure",
    "rescues.png": "Structures rescued by the retry ladder",
    "quarantine.png": "Quarantine reasons",
    "learning_curve.png": "Learning curve (loss per optimizer iteration)",
    "ev_curves.png": "Energy-volume curves: ACE vs DFT",
    "structure_errors.png": "Per-structure energy and force errors",
    "gamma_histogram.png": "Extrapolation grades of the labelled structures",
}
#: Figures of the active-learning section (drawn only for runs with a loop).
AL_FIGURES: dict[str, str] = {
    "al_heldout.png": "Held-out errors vs iteration and vs pw.x calls",
    "al_gamma.png": "Extrapolation grades of the explored frames, per iteration",
    "al_md_traces.png": "MD temperature and energy of every walker",
    "al_selected.png": "Where the selected frames came from",
}
#: Below this many test structures the test errors are a weak estimate.
MIN_TEST_STRUCTURES = 5
#: At most this many structures get extrapolation grades (all test ones first).
MAX_GAMMA_STRUCTURES = 2000
#: Points of the dense ACE curve drawn through each E-V family.
EV_DENSE_POINTS = 25
_STRAIN_SOURCE = re.compile(r"^(?P<family>.+?) strain=(?P<strain>[+-]\d+\.\d+)$")

_SPLITS = ("train", "test")
_COLORS = {"train": "#1f77b4", "test": "#d62728"}
_STATE_COLORS = {
    "pending": "#9e9e9e",
    "running": "#ffb300",
    "scf_retry": "#ff7f0e",
    "labelled": "#1f77b4",
    "failed": "#d62728",
    "trained": "#2ca02c",
}


@dataclass(frozen=True)
class FigureResult:
    """One figure of the report: the PNG written, or the reason it could not be drawn."""

    name: str
    title: str
    png: Path | None
    reason: str | None


# -- small helpers ---------------------------------------------------------------------------
def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _json_clean(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None: strict JSON for any reader (jq, browsers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


def _split_failure(failure: str | None) -> tuple[str | None, str | None]:
    # The store renders quarantine reasons as "class: message"; class names have no colon.
    if not failure:
        return None, None
    cls, _, msg = failure.partition(": ")
    return cls, (msg or None)


def _recipe_name(run_dir: Path) -> str | None:
    path = run_dir / "recipe.json"
    try:
        name = json.loads(path.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


# -- data ------------------------------------------------------------------------------------
def _ladder_stats(
    rows: Sequence[dict[str, Any]], attempts: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Attempts per structure, which ladder step rescued what, quarantine reasons."""
    histogram: Counter[int] = Counter(r["attempts"] for r in rows)
    met: Counter[str] = Counter()
    rescued: list[dict[str, Any]] = []
    by_step: Counter[str] = Counter()
    for r in rows:
        tries = attempts.get(r["id"], [])
        for a in tries:
            if a.get("failure_class") != "converged":
                met[str(a.get("failure_class"))] += 1
        final = tries[-1] if tries else None
        if len(tries) > 1 and final is not None and final.get("failure_class") == "converged":
            step = final.get("step") or {}
            note = str(step.get("note") or "") or "(no note)"
            classes = [str(a.get("failure_class")) for a in tries[:-1]]
            rescued.append(
                {
                    "id": r["id"],
                    "attempts": len(tries),
                    "failure_classes": classes,
                    "step_note": note,
                    "params_diff": final.get("params_diff") or {},
                }
            )
            by_step[note] += 1
    quarantine: Counter[str] = Counter()
    for r in rows:
        if r["state"] == "failed":
            quarantine[r["failure_class"] or "unknown"] += 1
    return {
        "total_attempts": sum(len(t) for t in attempts.values()),
        "attempts_per_structure": {str(k): v for k, v in sorted(histogram.items())},
        "failure_classes_met": dict(sorted(met.items())),
        "rescued": rescued,
        "rescued_by_step": dict(by_step.most_common()),
        "quarantine_by_class": dict(quarantine.most_common()),
    }


def _parity(fit: Any) -> tuple[dict[str, Any], str | None]:
    """Per-split DFT and ACE energies (eV/atom) and force components (eV/Å).

    pacemaker fits ``energy_corrected`` (DFT minus baseline minus reference energies) and
    ``forces`` (DFT minus baseline); adding the same corrections back to its predictions
    gives totals comparable with pw.x's, and the residuals are exactly what it fitted.
    """
    from mlip_autopipec.trainer.metrics import read_predictions

    out: dict[str, Any] = {}
    missing = []
    for split in _SPLITS:
        path = Path(fit.workdir) / f"{split}_pred.pckl.gzip"
        if not path.is_file():
            missing.append(path.name)
            continue
        try:
            df = read_predictions(path)
            natoms = df["NUMBER_OF_ATOMS"].to_numpy(dtype=float)
            e_dft = df["energy_dft"].to_numpy(dtype=float)
            shift = e_dft - df["energy_corrected"].to_numpy(dtype=float)
            e_ace = df["energy_pred"].to_numpy(dtype=float) + shift
            f_dft_rows = [np.asarray(f, dtype=float).reshape(-1, 3) for f in df["forces_dft"]]
            f_fit_rows = [np.asarray(f, dtype=float).reshape(-1, 3) for f in df["forces"]]
            f_pred_rows = [np.asarray(f, dtype=float).reshape(-1, 3) for f in df["forces_pred"]]
        except (OSError, KeyError, ValueError, TypeError, EOFError) as exc:
            return {}, f"pacemaker's prediction table {path} could not be read ({exc})."
        f_dft = np.concatenate(f_dft_rows).ravel() if f_dft_rows else np.zeros(0)
        f_ace = (
            np.concatenate(
                [p + (d - c) for p, d, c in zip(f_pred_rows, f_dft_rows, f_fit_rows, strict=True)]
            ).ravel()
            if f_dft_rows
            else np.zeros(0)
        )
        de = (e_ace - e_dft) / natoms
        dfc = f_ace - f_dft
        bounds = np.cumsum([0, *(3 * natoms.astype(int))])
        per_structure = [
            1e3 * float(np.sqrt(np.mean(dfc[a:b] ** 2))) if b > a else None
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        out[split] = {
            "ids": [str(n) for n in df["name"]],
            "natoms": [int(n) for n in natoms],
            "energy_dft_ev_per_atom": (e_dft / natoms).tolist(),
            "energy_ace_ev_per_atom": (e_ace / natoms).tolist(),
            "forces_dft_ev_per_ang": f_dft.tolist(),
            "forces_ace_ev_per_ang": f_ace.tolist(),
            "rmse_energy_mev_per_atom": 1e3 * float(np.sqrt(np.mean(de**2))) if len(de) else None,
            "rmse_forces_mev_per_ang": 1e3 * float(np.sqrt(np.mean(dfc**2))) if len(dfc) else None,
            "force_rmse_mev_per_ang_per_structure": per_structure,
        }
    if not out:
        return {}, (
            f"the fit folder {fit.workdir} has no pacemaker prediction tables "
            f"({', '.join(missing)})."
        )
    return out, None


def _recipe_data(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "recipe.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _final_attempt(tries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    return tries[-1] if tries else None


def _dft_settings(
    run_dir: Path, rows: Sequence[dict[str, Any]], attempts: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The level of theory and where the labels came from, as far as the run recorded it.

    From ``recipe.json`` (cutoffs, smearing, spin, k-points, pseudopotentials) and from the
    attempts (pw.x versions, theory keys and records when the oracle stores them, the k-grid
    of every labelled structure). Old runs simply have fewer fields.
    """
    oracle = _recipe_data(run_dir).get("oracle") or {}
    system = ((oracle.get("input_data") or {}).get("system")) or {}
    electrons = ((oracle.get("input_data") or {}).get("electrons")) or {}
    settings: dict[str, Any] = {
        "pseudopotentials": oracle.get("pseudopotentials") or {},
        "kspacing": oracle.get("kspacing"),
        "kpts": oracle.get("kpts"),
        "koffset": oracle.get("koffset"),
    }
    for key in ("input_dft", "ecutwfc", "ecutrho", "occupations", "smearing", "degauss", "nspin"):
        if key in system:
            settings[key] = system[key]
    if "conv_thr" in electrons:
        settings["conv_thr"] = electrons["conv_thr"]
    versions: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    theories: dict[str, Any] = {}
    kgrids: Counter[str] = Counter()
    for r in rows:
        final = _final_attempt(attempts.get(r["id"], []))
        if final is None or final.get("failure_class") != "converged":
            continue
        if final.get("pw_version"):
            versions[str(final["pw_version"])] += 1
        if final.get("theory_key"):
            keys[str(final["theory_key"])] += 1
            if isinstance(final.get("theory"), dict):
                theories.setdefault(str(final["theory_key"]), final["theory"])
        if final.get("kgrid"):
            kgrids[f"{r['formula']} {'x'.join(str(k) for k in final['kgrid'])}"] += 1
    settings["pw_versions"] = dict(versions.most_common())
    settings["theory_keys"] = dict(keys.most_common())
    settings["theories"] = theories
    settings["kgrids"] = dict(kgrids.most_common())
    from mlip_autopipec.oracle.relabel import relabel_record

    settings["relabel"] = relabel_record(run_dir)  # oracle.theory_mismatch: relabel
    return settings


def _theories(view: RunTheories) -> dict[str, Any]:
    """The report's theory section (issue 11.3; ``lifecycle/theories.py``): per theory its
    tag, key, the run store's labels and the relabel store's labels of it, how many labels
    the next fit uses, and whether the current potential was fitted on it; every relabelled
    structure with its old and new theory, the relabel's state and energy."""
    target = (view.record or {}).get("target_key")  # a pending relabel's theory-to-be
    return {
        "theories": view.summary(),
        "relabelled": [
            {**r, "from_tag": view.tag(r["from"]), "to_tag": view.tag(r["to"] or target)}
            for r in view.relabelled()
        ],
        "potential_theory_key": view.potential_theory_key,
        "training_theory_key": view.training_key,
    }


def _structure_theory(view: RunTheories, structure_id: int) -> dict[str, Any]:
    """Per structure of ``report.json``: its theory's tag, whether the next fit uses its
    label, and its relabel (``{"state", "theory_key", "energy", "id"}`` or None)."""
    s = view.structures.get(int(structure_id))
    if s is None:
        return {"theory_tag": None, "in_training_set": None, "relabel": None}
    return {
        "theory_tag": view.tag(s["theory_key"]) if s["theory_key"] else None,
        "in_training_set": s["in_training_set"],
        "relabel": s["relabel"],
    }


def _timings(
    attempts: dict[int, list[dict[str, Any]]], fit: Any | None
) -> dict[str, float | int | None]:
    walls = [
        float(w)
        for tries in attempts.values()
        for a in tries
        if (w := _finite(a.get("wall_time"))) is not None
    ]
    return {
        "pwx_attempts": len(walls),
        "pwx_total_s": float(sum(walls)) if walls else None,
        "pwx_mean_s": float(np.mean(walls)) if walls else None,
        "pwx_max_s": float(max(walls)) if walls else None,
        "fit_s": _finite(getattr(fit, "wall_time", None)) if fit is not None else None,
    }


def _learning_curve(fit: Any) -> dict[str, Any]:
    """Loss per iteration: ``loss_history`` of the fit record when it has one, else the
    iteration lines of the fit folder's pacemaker log; plus the optimizer's verdict."""
    from mlip_autopipec.lifecycle.progress import parse_fit_log

    history = getattr(fit, "loss_history", None)
    if history is None:
        try:
            record = json.loads((Path(fit.workdir) / POTENTIAL_JSON).read_text())
            history = record.get("loss_history") if isinstance(record, dict) else None
        except (OSError, ValueError):
            history = None
    log_path = Path(getattr(fit, "log", "") or Path(fit.workdir) / "log.txt")
    try:
        log = parse_fit_log(log_path.read_text(errors="replace"))
    except OSError:
        log = None
    out: dict[str, Any] = {
        "iterations": [],
        "loss": [],
        "rmse_energy_mev_per_atom": [],
        "rmse_forces_mev_per_ang": [],
        "source": None,
        "converged": None if log is None else log.converged,
        "optimizer_message": None if log is None else log.message,
    }
    if isinstance(history, list) and history:
        for k, item in enumerate(history):
            if isinstance(item, dict):
                loss = _finite(item.get("loss"))
                it = item.get("iteration", k)
            else:
                loss, it = _finite(item), k
            if loss is not None:
                out["iterations"].append(int(it))
                out["loss"].append(loss)
        out["source"] = POTENTIAL_JSON
    elif log is not None and log.steps:
        for step in log.steps:
            out["iterations"].append(step.iteration)
            out["loss"].append(step.loss)
            out["rmse_energy_mev_per_atom"].append(_finite(step.rmse_energy_mev_per_atom))
            out["rmse_forces_mev_per_ang"].append(_finite(step.rmse_forces_mev_per_ang))
        out["source"] = log_path.name
    return out


def _ev_families(labelled: Sequence[Any]) -> dict[str, list[tuple[float, Any]]]:
    """Isotropically strained, unrattled cells of one source: family -> [(strain, atoms)]."""
    families: dict[str, list[tuple[float, Any]]] = {}
    for atoms in labelled:
        m = _STRAIN_SOURCE.match(str(atoms.info.get("source", "")))
        if m is not None:
            families.setdefault(m["family"], []).append((float(m["strain"]), atoms))
    return {
        name: sorted(members, key=lambda x: x[0])
        for name, members in families.items()
        if len({e for e, _ in members}) >= 3
    }


def _ev_curves(fit: Any, labelled: Sequence[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """DFT points and the ACE curve (at those cells and on a dense strain grid) per family."""
    families = _ev_families(labelled)
    if not families:
        return [], (
            "no family of at least three isotropically strained cells of one source "
            "(a bulk entry with strain: {min, max, count})."
        )
    try:
        from mlip_autopipec.trainer.calculator import load_calculator

        calc = load_calculator(fit.workdir)
    except Exception as exc:  # noqa: BLE001 - pyace/ASE raise anything; the page says why
        return [], f"the potential could not be loaded to evaluate ACE ({exc})."
    out = []
    for name, members in families.items():
        n = len(members[0][1])
        vols, dft, ace = [], [], []
        for _, atoms in members:
            copy = atoms.copy()
            copy.calc = calc
            vols.append(atoms.get_volume() / n)
            dft.append(atoms.get_potential_energy() / n)
            ace.append(float(copy.get_potential_energy()) / n)
        strains = [e for e, _ in members]
        unstrained = min(members, key=lambda x: abs(x[0]))
        base = unstrained[1].copy()
        base.set_cell(base.cell / (1.0 + unstrained[0]), scale_atoms=True)
        dense_v, dense_e = [], []
        for e in np.linspace(min(strains), max(strains), EV_DENSE_POINTS):
            cell = base.copy()
            cell.set_cell(base.cell * (1.0 + e), scale_atoms=True)
            cell.calc = calc
            dense_v.append(cell.get_volume() / n)
            dense_e.append(float(cell.get_potential_energy()) / n)
        out.append(
            {
                "family": name,
                "strains": strains,
                "volume_per_atom": vols,
                "dft_ev_per_atom": dft,
                "ace_ev_per_atom": ace,
                "dense_volume_per_atom": dense_v,
                "dense_ace_ev_per_atom": dense_e,
            }
        )
    return out, None


def _gammas(
    fit: Any, labelled: Sequence[Any], split_of: dict[str, str]
) -> tuple[dict[str, Any], str | None]:
    """Max extrapolation grade per labelled structure of the fit, by split."""
    asi = getattr(fit, "asi", None)
    if asi is None or not Path(asi).is_file():
        return {}, "the fit has no active set (.asi), so there are no extrapolation grades."
    chosen = [a for a in labelled if split_of.get(str(a.info["structure_id"])) == "test"]
    chosen += [a for a in labelled if split_of.get(str(a.info["structure_id"])) == "train"]
    chosen = chosen[:MAX_GAMMA_STRUCTURES]
    if not chosen:
        return {}, "none of the labelled structures is in the fit's train or test set."
    try:
        from mlip_autopipec.trainer.calculator import load_calculator

        calc = load_calculator(fit.workdir, extrapolation=True)
        out: dict[str, Any] = {"ids": [], "split": [], "max_gamma": []}
        for atoms in chosen:
            copy = atoms.copy()
            copy.calc = calc
            copy.get_potential_energy()
            out["ids"].append(int(atoms.info["structure_id"]))
            out["split"].append(split_of[str(atoms.info["structure_id"])])
            out["max_gamma"].append(float(np.max(calc.results["gamma"])))
    except Exception as exc:  # noqa: BLE001 - pyace raises anything; the page says why
        return {}, f"the extrapolation grades could not be computed ({exc})."
    return out, None


def _condition_label(condition: dict[str, Any]) -> str:
    """``nvt 1000 K`` / ``npt 600 K 0 GPa``."""
    text = f"{condition.get('ensemble', '?')} {float(condition.get('temperature_K', 0)):g} K"
    if condition.get("ensemble") == "npt":
        text += f" {float(condition.get('pressure_GPa', 0.0)):g} GPa"
    return text


def _al_detail(store: Any, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Per-iteration detail of the loop's tables for the figures: every walker's MD trace
    (time, temperature, total energy per atom), every explored frame's γ and state, and
    the selected frames with their walker, condition, MD time and structure id."""
    import sqlite3

    from ase.io import jsonio

    cfg = recipe.get("active_learning") or {}
    dt = float(cfg.get("timestep_fs") or 1.0)
    every = int(cfg.get("sample_every") or 1)
    conn: sqlite3.Connection = store._conn  # the loop's tables share the store's database
    try:
        walker_rows = conn.execute(
            "SELECT iteration, key, condition, stop_reason, survival_fs, max_gamma,"
            " temperatures, energies FROM al_walkers ORDER BY iteration, key"
        ).fetchall()
        frame_rows = conn.execute(
            "SELECT iteration, walker, condition, frame, gamma, state, structure_id"
            " FROM al_candidates ORDER BY iteration, walker, frame"
        ).fetchall()
    except sqlite3.OperationalError:  # no loop tables (yet)
        return None
    walkers = []
    for it, key, cond, reason, survival, gmax, temps, energies in walker_rows:
        first = conn.execute(
            "SELECT atoms FROM al_candidates WHERE iteration = ? AND walker = ? LIMIT 1",
            (it, key),
        ).fetchone()
        natoms = len(jsonio.decode(first[0])) if first is not None else None
        t = json.loads(temps)
        e = json.loads(energies)
        walkers.append(
            {
                "iteration": int(it),
                "walker": key,
                "condition": _condition_label(json.loads(cond)),
                "stop_reason": reason,
                "survival_fs": float(survival),
                "max_gamma": float(gmax),
                "natoms": natoms,
                "time_fs": [k * every * dt for k in range(len(t))],
                "temperature_K": [float(x) for x in t],
                "energy_ev_per_atom": [float(x) / natoms for x in e] if natoms else [],
            }
        )
    frames: dict[str, dict[str, list[Any]]] = {}
    selected = []
    for it, walker, cond, frame, gamma, state, sid in frame_rows:
        per = frames.setdefault(str(it), {"gamma": [], "state": [], "time_fs": []})
        per["gamma"].append(float(gamma))
        per["state"].append(state)
        per["time_fs"].append(int(frame) * dt)
        if state == "selected":
            selected.append(
                {
                    "iteration": int(it),
                    "walker": walker,
                    "condition": _condition_label(json.loads(cond)),
                    "frame": int(frame),
                    "time_fs": int(frame) * dt,
                    "gamma": float(gamma),
                    "structure_id": None if sid is None else int(sid),
                }
            )
    targets = cfg.get("targets") or {}
    return {
        "walkers": walkers,
        "frames": frames,
        "selected": selected,
        "gamma_select": cfg.get("gamma_select"),
        "gamma_halt": cfg.get("gamma_halt"),
        "targets": {k: targets.get(k) for k in ("energy_mev_per_atom", "forces_mev_per_ang")},
    }


def collect(run_dir: Path | str) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data (what ``report.json`` holds).

    Raises :class:`UsageError` when ``run_dir`` is missing or not a run directory.
    """
    run_dir = Path(run_dir)
    status = status_json(run_dir)  # raises UsageError with a clear message
    with Store.open(run_dir, create=False) as store:
        rows = store.structure_rows()
        attempts = {r["id"]: store.attempts_of(r["id"]) for r in rows}
        latest = store.latest_potential()
        labelled = store.labelled_atoms() if latest is not None else []
        magmoms = store.label_magmoms()
        has_loop = bool(status.get("active_learning"))
        al_detail = _al_detail(store, _recipe_data(run_dir)) if has_loop else None
        symbols = {sid: store.atoms_of(sid).get_chemical_symbols() for sid in magmoms}
        theories = run_theories(run_dir, store)
    potential: dict[str, Any] | None = None
    parity: dict[str, Any] = {}
    parity_reason: str | None = None
    split_of: dict[str, str] = {}
    fit: Any = None
    no_fit = (
        "no potential has been fitted yet (labels only); run "
        "'autopipec run RECIPE --stage train' to fit one."
    )
    if latest is None:
        parity_reason = no_fit
    else:
        from mlip_autopipec.trainer.calculator import load_fit

        potential = {
            "id": latest["id"],
            "path": latest["path"],
            "metrics": latest["metrics"],
            "baseline": latest["baseline"],
            "pacemaker_version": latest["pacemaker_version"],
            "n_train": latest["n_train"],
            "n_test": latest["n_test"],
            "fit_dir": None,
        }
        # The fit folder of the potential the store (and so `status`) reports, found by name
        # under the run directory so that a moved run still works; else the current fit.
        named = run_dir / "trainer" / Path(str(latest["path"])).parent.name
        try:
            fit = load_fit(named if (named / POTENTIAL_JSON).is_file() else run_dir)
        except AutopipecError as exc:
            parity_reason = f"the fit folder could not be read: {exc}"
        else:
            potential["fit_dir"] = str(fit.workdir)
            split_of = {str(i): "train" for i in fit.train_ids}
            split_of.update({str(i): "test" for i in fit.test_ids})
            parity, parity_reason = _parity(fit)
    ace_per_atom: dict[str, float] = {}
    force_rmse: dict[str, float | None] = {}
    for data in parity.values():
        ace_per_atom.update(zip(data["ids"], data["energy_ace_ev_per_atom"], strict=True))
        force_rmse.update(
            zip(data["ids"], data["force_rmse_mev_per_ang_per_structure"], strict=True)
        )
    if fit is not None:
        learning = _learning_curve(fit)
        ev, ev_reason = _ev_curves(fit, labelled)
        gamma, gamma_reason = _gammas(fit, labelled, split_of)
    else:
        why = parity_reason or no_fit
        learning, (ev, ev_reason), (gamma, gamma_reason) = {}, ([], why), ({}, why)
    max_gamma = dict(zip(map(str, gamma.get("ids", [])), gamma.get("max_gamma", []), strict=True))
    drift = status.get("not_in_recipe") or {}
    pruned = set(drift.get("pruned") or ())
    not_in_recipe = set(drift.get("used") or ())
    structures = []
    for r in rows:
        fclass, fmsg = _split_failure(r["failure"])
        energy = _finite(r["energy_ev"])
        per_atom = energy / r["natoms"] if energy is not None and r["natoms"] else None
        ace = ace_per_atom.get(str(r["id"]))
        tries = attempts.get(r["id"], [])
        final = _final_attempt(tries)
        ok = final is not None and final.get("failure_class") == "converged"
        walls = [w for a in tries if (w := _finite(a.get("wall_time"))) is not None]
        structures.append(
            {
                "id": r["id"],
                "source": r["source"],
                "formula": r["formula"],
                "natoms": r["natoms"],
                "state": r["state"],
                "attempts": r["attempts"],
                "failure_class": fclass,
                "failure_message": fmsg,
                "energy_ev": energy,
                "energy_ev_per_atom": per_atom,
                "split": split_of.get(str(r["id"])),
                "ace_error_mev_per_atom": (
                    1e3 * (ace - per_atom) if ace is not None and per_atom is not None else None
                ),
                "ace_force_rmse_mev_per_ang": force_rmse.get(str(r["id"])),
                "kgrid": list(final["kgrid"]) if ok and final and final.get("kgrid") else None,
                "pwx_seconds": float(sum(walls)) if walls else None,
                "total_magmom": _finite(final.get("total_magmom")) if ok and final else None,
                "magmoms": magmoms.get(r["id"])
                or (list(final["magmoms"]) if ok and final and final.get("magmoms") else None),
                "symbols": symbols.get(r["id"]),
                "not_in_recipe": r["id"] in not_in_recipe,
                "pruned": r["id"] in pruned,
                "theory_key": final.get("theory_key") if ok and final else None,
                **_structure_theory(theories, r["id"]),
                "max_gamma": max_gamma.get(str(r["id"])),
            }
        )
    caveats = []
    if potential is not None and potential["n_test"] < MIN_TEST_STRUCTURES:
        caveats.append(
            f"The test set has only {potential['n_test']} structure"
            f"{'s' if potential['n_test'] != 1 else ''}: its errors are a rough estimate. "
            f"Label more structures (or raise trainer.test_fraction) for at least "
            f"{MIN_TEST_STRUCTURES}."
        )
    if not_in_recipe:
        caveats.append(
            f"{len(not_in_recipe)} structure(s) in the store are no longer in the recipe and "
            "are still labelled and trained on (marked 'not in recipe' below); "
            "'autopipec run --prune' leaves them out of training, keeping their labels."
        )
    if pruned:
        caveats.append(
            f"{len(pruned)} structure(s) were pruned (not in the recipe; left out of training, "
            "labels kept; marked 'pruned' below)."
        )
    if learning.get("converged") is False:
        caveats.append(
            "The optimizer stopped before converging "
            f"({learning.get('optimizer_message') or 'no reason given'}): more "
            "trainer.max_epochs may lower the errors."
        )
    return {
        "run_dir": str(run_dir.resolve()),
        "recipe": _recipe_name(run_dir),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "counts": status["counts"],
        "status_potential": status["potential"],
        "potential": potential,
        "structures": structures,
        "ladder": _ladder_stats(structures, attempts),
        "parity": parity,
        "parity_unavailable": parity_reason,
        "dft": {**_dft_settings(run_dir, rows, attempts), "label_theories": _theories(theories)},
        "timings": _timings(attempts, fit),
        "learning_curve": learning,
        "learning_curve_unavailable": (
            None
            if learning.get("loss")
            else (parity_reason or no_fit)
            if fit is None
            else "the fit record has no loss history and its log no iteration lines."
        ),
        "ev_curves": ev,
        "ev_unavailable": ev_reason,
        "gamma": gamma,
        "gamma_unavailable": gamma_reason,
        "caveats": caveats,
        "store_warning": foreign_tables_message(run_dir),
        "active_learning": status.get("active_learning"),
        "active_learning_detail": al_detail,
        "not_in_recipe": {"used": sorted(not_in_recipe), "pruned": sorted(pruned)},
    }


# -- figures ---------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly, never pyplot: no global backend state, never a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _parity_axes(ax: Any, parity: dict[str, Any], x_key: str, y_key: str, unit: str) -> None:
    lo, hi = math.inf, -math.inf
    for split in _SPLITS:
        if split not in parity:
            continue
        x = np.asarray(parity[split][x_key], dtype=float)
        y = np.asarray(parity[split][y_key], dtype=float)
        if x.size == 0:
            continue
        lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        rmse = np.sqrt(np.mean((y - x) ** 2))
        scale = 1e3
        ax.scatter(
            x,
            y,
            s=18 if split == "test" else 12,
            marker="s" if split == "test" else "o",
            color=_COLORS[split],
            alpha=0.75,
            label=f"{split} (n={x.size}, RMSE {scale * rmse:.2f} m{unit})",
        )
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=1, ls="--")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    # Below the axes: inside, it would hide the points that matter most (far off the line).
    ax.figure.legend(loc="outside lower center", fontsize=9)
    ax.grid(alpha=0.3)


def _fig_energy_parity(data: dict[str, Any]) -> bytes:
    fig = _new_figure(5.5, 6.2)
    ax = fig.add_subplot()
    _parity_axes(ax, data["parity"], "energy_dft_ev_per_atom", "energy_ace_ev_per_atom", "eV/atom")
    ax.set_xlabel("DFT energy (eV/atom)")
    ax.set_ylabel("ACE energy (eV/atom)")
    ax.ticklabel_format(useOffset=False)
    # Absolute energies (-138.7...) are long labels: fewer, slanted ticks stay readable.
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(axis="x", labelrotation=30)
    return _png_bytes(fig)


def _fig_force_parity(data: dict[str, Any]) -> bytes:
    fig = _new_figure(5.5, 6.2)
    ax = fig.add_subplot()
    _parity_axes(ax, data["parity"], "forces_dft_ev_per_ang", "forces_ace_ev_per_ang", "eV/Å")
    ax.set_xlabel("DFT force component (eV/Å)")
    ax.set_ylabel("ACE force component (eV/Å)")
    return _png_bytes(fig)


def _fig_error_histograms(data: dict[str, Any]) -> bytes:
    fig = _new_figure(10, 4)
    ax_e, ax_f = fig.subplots(1, 2)
    errors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in _SPLITS:
        p = data["parity"].get(split)
        if p is not None:
            errors[split] = (
                1e3 * (np.asarray(p["energy_ace_ev_per_atom"]) - p["energy_dft_ev_per_atom"]),
                1e3 * (np.asarray(p["forces_ace_ev_per_ang"]) - p["forces_dft_ev_per_ang"]),
            )
    for ax, k, max_bins in ((ax_e, 0, 40), (ax_f, 1, 60)):
        every = np.concatenate([e[k] for e in errors.values()])
        # One set of bin edges for train and test, so the two histograms are comparable.
        n_bins = max(5, min(max_bins, every.size // 2))
        lo, hi = float(every.min()), float(every.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, n_bins + 1)
        for split, e in errors.items():
            ax.hist(
                e[k], bins=edges, alpha=0.6, color=_COLORS[split], label=f"{split} (n={e[k].size})"
            )
    ax_e.set_xlabel("ACE − DFT energy (meV/atom)")
    ax_f.set_xlabel("ACE − DFT force component (meV/Å)")
    for ax in (ax_e, ax_f):
        ax.set_ylabel("count")
        ax.axvline(0.0, color="0.4", lw=1, ls="--")
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


def _fig_attempts(data: dict[str, Any]) -> bytes:
    rows = data["structures"]
    xs = np.arange(min(r["attempts"] for r in rows), max(r["attempts"] for r in rows) + 1)
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    bottom = np.zeros(xs.size)
    for state in STATES:
        counts = np.array(
            [sum(1 for r in rows if r["state"] == state and r["attempts"] == x) for x in xs],
            dtype=float,
        )
        if counts.sum() == 0:
            continue
        ax.bar(xs, counts, bottom=bottom, label=state, width=0.7, color=_STATE_COLORS.get(state))
        bottom += counts
    ax.set_xticks(xs)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("pw.x attempts")
    ax.set_ylabel("structures")
    ax.legend(title="state", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _png_bytes(fig)


def _barh(ax: Any, counts: dict[str, int], color: str) -> None:
    labels = [textwrap.fill(k, 45) for k in counts]
    ys = np.arange(len(labels))
    ax.barh(ys, list(counts.values()), color=color)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("structures")
    ax.grid(alpha=0.3, axis="x")


def _fig_rescues(data: dict[str, Any]) -> bytes:
    ladder = data["ladder"]
    met: Counter[str] = Counter()
    for r in ladder["rescued"]:
        met.update(set(r["failure_classes"]))
    height = 1.5 + 0.45 * max(len(ladder["rescued_by_step"]), len(met))
    fig = _new_figure(11, height)
    ax_c, ax_s = fig.subplots(1, 2, width_ratios=[1, 2])
    _barh(ax_c, dict(met.most_common()), "#ff7f0e")
    ax_c.set_title("failure classes met before the rescue", fontsize=10)
    _barh(ax_s, ladder["rescued_by_step"], "#2ca02c")
    ax_s.set_title("ladder step of the successful attempt", fontsize=10)
    return _png_bytes(fig)


def _fig_quarantine(data: dict[str, Any]) -> bytes:
    counts = data["ladder"]["quarantine_by_class"]
    fig = _new_figure(7, 1.5 + 0.45 * len(counts))
    ax = fig.add_subplot()
    _barh(ax, counts, "#d62728")
    ax.set_title("quarantined structures by failure class", fontsize=10)
    return _png_bytes(fig)


def _fig_learning_curve(data: dict[str, Any]) -> bytes:
    curve = data["learning_curve"]
    its = np.asarray(curve["iterations"], dtype=float)
    errors_e = [np.nan if v is None else v for v in curve.get("rmse_energy_mev_per_atom", [])]
    errors_f = [np.nan if v is None else v for v in curve.get("rmse_forces_mev_per_ang", [])]
    has_rmse = bool(errors_e) and np.isfinite(errors_e).any()
    fig = _new_figure(10 if has_rmse else 6, 4)
    axes = fig.subplots(1, 2) if has_rmse else [fig.add_subplot()]
    ax = axes[0]
    ax.plot(its, curve["loss"], marker="o", ms=3, color="#1f77b4")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer iteration")
    ax.set_ylabel("train loss")
    verdict = {True: "converged", False: "not converged", None: "no optimizer verdict"}
    ax.set_title(f"loss ({verdict[curve.get('converged')]})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if has_rmse:
        ax_r = axes[1]
        ax_r.plot(its, errors_e, marker="o", ms=3, label="energy (meV/atom)", color="#2ca02c")
        ax_r.plot(its, errors_f, marker="s", ms=3, label="forces (meV/Å)", color="#ff7f0e")
        ax_r.set_yscale("log")
        ax_r.set_xlabel("optimizer iteration")
        ax_r.set_ylabel("train RMSE")
        ax_r.legend(fontsize=9)
        ax_r.grid(alpha=0.3, which="both")
    return _png_bytes(fig)


def _fig_ev(data: dict[str, Any]) -> bytes:
    curves = data["ev_curves"]
    cols = min(3, len(curves))
    nrows = math.ceil(len(curves) / cols)
    fig = _new_figure(4.5 * cols, 3.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, c in zip(axes, curves, strict=False):
        ax.plot(
            c["dense_volume_per_atom"], c["dense_ace_ev_per_atom"], color="#1f77b4", label="ACE"
        )
        ax.scatter(
            c["volume_per_atom"], c["dft_ev_per_atom"], color="#d62728", zorder=3, label="DFT"
        )
        ax.scatter(
            c["volume_per_atom"], c["ace_ev_per_atom"], color="#1f77b4", marker="x", zorder=3
        )
        ax.set_title(textwrap.fill(c["family"], 40), fontsize=9)
        ax.set_xlabel("volume (Å³/atom)")
        ax.set_ylabel("energy (eV/atom)")
        ax.ticklabel_format(useOffset=False)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    return _png_bytes(fig)


def _fig_structure_errors(data: dict[str, Any]) -> bytes:
    fig = _new_figure(10, 4)
    ax_e, ax_f = fig.subplots(1, 2)
    for split in _SPLITS:
        rows = [s for s in data["structures"] if s["split"] == split]
        ids = [s["id"] for s in rows]
        de = [np.nan if s["ace_error_mev_per_atom"] is None else s["ace_error_mev_per_atom"]
              for s in rows]  # fmt: skip
        df = [np.nan if s["ace_force_rmse_mev_per_ang"] is None
              else s["ace_force_rmse_mev_per_ang"] for s in rows]  # fmt: skip
        marker = "s" if split == "test" else "o"
        ax_e.scatter(ids, de, color=_COLORS[split], marker=marker, label=split, s=16)
        ax_f.scatter(ids, df, color=_COLORS[split], marker=marker, label=split, s=16)
    ax_e.axhline(0.0, color="0.4", lw=1, ls="--")
    ax_e.set_ylabel("ACE − DFT energy (meV/atom)")
    ax_f.set_ylabel("force RMSE (meV/Å)")
    for ax in (ax_e, ax_f):
        ax.set_xlabel("structure id")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


def _fig_gamma(data: dict[str, Any]) -> bytes:
    gamma = data["gamma"]
    values = np.asarray(gamma["max_gamma"], dtype=float)
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    hi = max(float(values.max()), 1.5)
    edges = np.linspace(0.0, hi * 1.05, max(6, min(40, values.size // 2)) + 1)
    for split in _SPLITS:
        v = values[[s == split for s in gamma["split"]]]
        if v.size:
            ax.hist(v, bins=edges, alpha=0.6, color=_COLORS[split], label=f"{split} (n={v.size})")
    ax.axvline(1.0, color="0.3", lw=1, ls="--", label="γ = 1 (edge of the training data)")
    ax.set_xlabel("max extrapolation grade γ per structure")
    ax.set_ylabel("structures")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    return _png_bytes(fig)


def _iteration_colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.85 * k / max(n - 1, 1)) for k in range(n)]


def _fig_al_heldout(data: dict[str, Any]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in data["active_learning"]["iterations"] if r.get("pwx_calls_total")]
    targets = (data.get("active_learning_detail") or {}).get("targets") or {}
    fig = _new_figure(10, 7)
    axes = fig.subplots(2, 2)
    series = (
        ("energy_mev_per_atom", "energy RMSE (meV/atom)"),
        ("forces_mev_per_ang", "force RMSE (meV/Å)"),
    )
    its = [int(r["iteration"]) for r in rows]
    calls = [int(r["pwx_calls_total"]) for r in rows]
    for row_axes, (key, label) in zip(axes, series, strict=True):
        now = [_finite(r.get(f"heldout_rmse_{key}")) for r in rows]
        refit = [_finite(r.get(f"refit_heldout_rmse_{key}")) for r in rows]
        vals = [np.nan if v is None else v for v in now]
        ax = row_axes[0]
        ax.plot(its, vals, marker="o", color="#1f77b4", label="exploring potential")
        if any(v is not None for v in refit):
            ax.plot(its, [np.nan if v is None else v for v in refit], marker="s",
                    ls="--", color="#ff7f0e", label="after the refit")  # fmt: skip
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax = row_axes[1]
        ax.plot(calls, vals, marker="o", color="#1f77b4", label="exploring potential")
        ax.set_xlabel("pw.x calls so far (labels + held-out)")
        for ax in row_axes:
            if targets.get(key) is not None:
                ax.axhline(float(targets[key]), color="#2ca02c", ls=":", label="target")
            ax.set_ylabel(f"held-out {label}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return _png_bytes(fig)


def _fig_al_gamma(data: dict[str, Any]) -> bytes:
    detail = data["active_learning_detail"]
    frames = detail["frames"]
    fig = _new_figure(8, 4.5)
    ax = fig.add_subplot()
    every = np.concatenate([np.asarray(v["gamma"], dtype=float) for v in frames.values()])
    lo = max(float(np.nanmin(every)), 1e-3)
    hi = max(float(np.nanmax(every)), lo * 10)
    edges = np.geomspace(lo * 0.9, hi * 1.1, 41)
    for color, (it, v) in zip(_iteration_colors(len(frames)), frames.items(), strict=True):
        g = np.asarray(v["gamma"], dtype=float)
        ax.hist(g, bins=edges, histtype="step", lw=1.8, color=color,
                label=f"iteration {it} ({g.size} frames, median {np.median(g):.3g})")  # fmt: skip
    for key, ls, name in (("gamma_select", "--", "select"), ("gamma_halt", ":", "halt")):
        if detail.get(key) is not None:
            ax.axvline(float(detail[key]), color="#d62728", ls=ls,
                       label=f"γ {name} = {float(detail[key]):g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("max extrapolation grade γ of a frame")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png_bytes(fig)


def _fig_al_md_traces(data: dict[str, Any]) -> bytes:
    walkers = data["active_learning_detail"]["walkers"]
    its = sorted({w["iteration"] for w in walkers})
    colors = dict(zip(its, _iteration_colors(len(its)), strict=True))
    styles = ["-", "--", ":", "-."]
    conditions = sorted({w["condition"] for w in walkers})
    fig = _new_figure(11, 4.5)
    ax_t, ax_e = fig.subplots(1, 2)
    for w in walkers:
        ls = styles[conditions.index(w["condition"]) % len(styles)]
        label = f"it {w['iteration']} {w['walker']} {w['condition']} ({w['stop_reason']})"
        ax_t.plot(w["time_fs"], w["temperature_K"], ls=ls, color=colors[w["iteration"]],
                  label=label)  # fmt: skip
        if w["energy_ev_per_atom"]:
            ax_e.plot(w["time_fs"], w["energy_ev_per_atom"], ls=ls,
                      color=colors[w["iteration"]])  # fmt: skip
    ax_t.set_xlabel("MD time (fs)")
    ax_t.set_ylabel("temperature (K)")
    ax_t.legend(fontsize=7)
    ax_e.set_xlabel("MD time (fs)")
    ax_e.set_ylabel("total energy (eV/atom, ACE)")
    for ax in (ax_t, ax_e):
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


_FRAME_STYLE = {
    "explored": ("#bdbdbd", "o", 10),
    "candidate": ("#9e9e9e", "^", 14),
    "rejected": ("#ff7f0e", "x", 18),
    "heldout": ("#2ca02c", "D", 18),
    "selected": ("#d62728", "*", 90),
}


def _fig_al_selected(data: dict[str, Any]) -> bytes:
    detail = data["active_learning_detail"]
    frames = detail["frames"]
    fig = _new_figure(5 * min(len(frames), 3), 4.5)
    axes = np.atleast_1d(fig.subplots(1, min(len(frames), 3), squeeze=False)[0])
    shown = list(frames.items())[-len(axes) :]
    for ax, (it, v) in zip(axes, shown, strict=True):
        states = np.asarray(v["state"])
        t = np.asarray(v["time_fs"], dtype=float)
        g = np.asarray(v["gamma"], dtype=float)
        for state, (color, marker, size) in _FRAME_STYLE.items():
            mask = states == state
            if mask.any():
                ax.scatter(t[mask], g[mask], c=color, marker=marker, s=size,
                           label=f"{state} ({int(mask.sum())})")  # fmt: skip
        if detail.get("gamma_select") is not None:
            ax.axhline(float(detail["gamma_select"]), color="#d62728", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("MD time of the frame (fs)")
        ax.set_ylabel("max γ of the frame")
        ax.set_title(f"iteration {it}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return _png_bytes(fig)


def _al_plan(data: dict[str, Any]) -> dict[str, tuple[Callable[[], bytes] | None, str]]:
    al = data.get("active_learning")
    detail = data.get("active_learning_detail") or {}
    plan: dict[str, tuple[Callable[[], bytes] | None, str]] = {}
    measured = [r for r in (al or {}).get("iterations") or [] if r.get("pwx_calls_total")]
    if any(r.get("heldout_rmse_energy_mev_per_atom") is not None for r in measured):
        plan["al_heldout.png"] = (lambda: _fig_al_heldout(data), "")
    else:
        plan["al_heldout.png"] = (None, "Not drawn: no iteration has held-out errors yet.")
    if any(v["gamma"] for v in (detail.get("frames") or {}).values()):
        plan["al_gamma.png"] = (lambda: _fig_al_gamma(data), "")
        plan["al_selected.png"] = (lambda: _fig_al_selected(data), "")
    else:
        for name in ("al_gamma.png", "al_selected.png"):
            plan[name] = (None, "Not drawn: no explored frames recorded yet.")
    if any(w["temperature_K"] for w in detail.get("walkers") or []):
        plan["al_md_traces.png"] = (lambda: _fig_al_md_traces(data), "")
    else:
        plan["al_md_traces.png"] = (None, "Not drawn: no MD walker recorded a trace yet.")
    return plan


def _figure_plan(data: dict[str, Any]) -> dict[str, tuple[Callable[[], bytes] | None, str]]:
    """For each figure: the function drawing it, or None and the sentence saying why not."""
    ladder = data["ladder"]
    parity_why = data["parity_unavailable"] or ""
    plan: dict[str, tuple[Callable[[], bytes] | None, str]] = {}
    for name, fn in (
        ("energy_parity.png", _fig_energy_parity),
        ("force_parity.png", _fig_force_parity),
        ("error_histograms.png", _fig_error_histograms),
    ):
        if data["parity"]:
            plan[name] = (functools.partial(fn, data), "")
        else:
            plan[name] = (None, f"Not drawn: {parity_why}")
    if not data["structures"]:
        plan["attempts.png"] = (None, "Not drawn: the run has no structures yet.")
    else:
        plan["attempts.png"] = (lambda: _fig_attempts(data), "")
    if ladder["rescued"]:
        plan["rescues.png"] = (lambda: _fig_rescues(data), "")
    else:
        plan["rescues.png"] = (
            None,
            "Not drawn: no structure needed more than one pw.x attempt to be labelled.",
        )
    if ladder["quarantine_by_class"]:
        plan["quarantine.png"] = (lambda: _fig_quarantine(data), "")
    else:
        plan["quarantine.png"] = (None, "Not drawn: no structure was quarantined.")
    if data.get("learning_curve", {}).get("loss"):
        plan["learning_curve.png"] = (lambda: _fig_learning_curve(data), "")
    else:
        why = data.get("learning_curve_unavailable") or "no loss history."
        plan["learning_curve.png"] = (None, f"Not drawn: {why}")
    if data.get("ev_curves"):
        plan["ev_curves.png"] = (lambda: _fig_ev(data), "")
    else:
        plan["ev_curves.png"] = (None, f"Not drawn: {data.get('ev_unavailable')}")
    if data["parity"]:
        plan["structure_errors.png"] = (lambda: _fig_structure_errors(data), "")
    else:
        plan["structure_errors.png"] = (None, f"Not drawn: {parity_why}")
    if data.get("gamma", {}).get("max_gamma"):
        plan["gamma_histogram.png"] = (lambda: _fig_gamma(data), "")
    else:
        plan["gamma_histogram.png"] = (None, f"Not drawn: {data.get('gamma_unavailable')}")
    if data.get("active_learning"):
        plan.update(_al_plan(data))
    return plan


def _draw_figures(data: dict[str, Any], out: Path) -> list[FigureResult]:
    results = []
    titles = {**FIGURES, **AL_FIGURES}
    for name, (draw, reason) in _figure_plan(data).items():
        path = out / name
        if draw is None:
            # A stale PNG from an earlier report would contradict this one.
            path.unlink(missing_ok=True)
            results.append(FigureResult(name, titles[name], None, reason))
            continue
        atomic_write(path, draw())
        results.append(FigureResult(name, titles[name], path, None))
    return results


# -- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1150px;color:#222;line-height:1.4;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fdecea}
.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:.9em;color:#444}
figure img{max-width:100%;border:1px solid #eee}
p.missing{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
"""

#: Marks <body> with how many images decoded, so a headless browser can check the page.
_SCRIPT = """
function autopipecCheckImages(){var ok=0,imgs=document.images;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}
document.body.setAttribute('data-images-total',String(imgs.length));
document.body.setAttribute('data-images-loaded',String(ok));}
window.addEventListener('load',autopipecCheckImages);
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str) -> str:
    v = _finite(value)
    return "" if v is None else format(v, fmt)


def _figure_html(fig: FigureResult) -> str:
    if fig.png is None:
        return (
            f"<figure><figcaption><b>{_e(fig.title)}</b></figcaption>"
            f'<p class="missing">{_e(fig.reason)}</p></figure>'
        )
    encoded = base64.b64encode(fig.png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(fig.title)}">'
        f'<figcaption><b>{_e(fig.title)}</b> (<a href="{_e(fig.name)}">{_e(fig.name)}</a>)'
        "</figcaption></figure>"
    )


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[tuple[str, str]]],
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are (already escaped html, css class)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        tr_class = _e(row_classes[i]) if row_classes else ""
        cells = "".join(f'<td class="{c}">{h}</td>' if c else f"<td>{h}</td>" for h, c in row)
        body.append(f'<tr class="{tr_class}">{cells}</tr>' if tr_class else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_html(data: dict[str, Any]) -> str:
    pot = data["potential"]
    if pot is None:
        return "<p>No potential has been fitted yet: this run holds labels only.</p>"
    metrics = pot["metrics"]
    rows = []
    for key, label, unit in (
        ("rmse_energy_mev_per_atom", "energy RMSE", "meV/atom"),
        ("rmse_forces_mev_per_ang", "force component RMSE", "meV/Å"),
    ):
        values = metrics.get(key) or {}
        rows.append(
            [
                (_e(f"{label} ({unit})"), ""),
                (_num(values.get("train"), ".3f"), "num"),
                (_num(values.get("test"), ".3f") or "no test set", "num"),
            ]
        )
    rows.append(
        [
            (_e("structures"), ""),
            (_e(pot["n_train"]), "num"),
            (_e(pot["n_test"]), "num"),
        ]
    )
    baseline = pot["baseline"] or {}
    extra = (
        f"<p>Potential: <code>{_e(pot['path'])}</code> (pacemaker {_e(pot['pacemaker_version'])},"
        f" physics baseline <code>{_e(baseline.get('type', 'none'))}</code>).</p>"
    )
    return extra + _table(["", "train", "test"], rows)


def _structures_html(data: dict[str, Any]) -> str:
    headers = [
        "id", "source", "formula", "state", "attempts", "failure class", "message",
        "energy (eV)", "energy (eV/atom)", "split", "ACE − DFT (meV/atom)",
        "ACE force RMSE (meV/Å)", "max γ", "k-grid", "pw.x time (s)", "theory",
    ]  # fmt: skip
    rows = []
    for s in data["structures"]:
        cells = [
            (_e(s["id"]), "num"),
            (_e(s["source"]), ""),
            (_e(s["formula"]), ""),
            (_e(_state_text(s)), ""),
            (_e(s["attempts"]), "num"),
            (_e(s["failure_class"]), ""),
            (_e(s["failure_message"]), ""),
            (_num(s["energy_ev"], ".6f"), "num"),
            (_num(s["energy_ev_per_atom"], ".6f"), "num"),
            (_e(s["split"]), ""),
            (_num(s["ace_error_mev_per_atom"], ".2f"), "num"),
            (_num(s.get("ace_force_rmse_mev_per_ang"), ".1f"), "num"),
            (_num(s.get("max_gamma"), ".2f"), "num"),
            (_e("x".join(map(str, s["kgrid"])) if s.get("kgrid") else ""), ""),
            (_num(s.get("pwx_seconds"), ".1f"), "num"),
            (_e(_theory_text(s)), ""),
        ]
        rows.append(cells)
    return _table(headers, rows, [s["state"] for s in data["structures"]])


def _theory_text(s: dict[str, Any]) -> str:
    """The structures table's theory cell: the label's tag, its relabel, left out."""
    text = str(s.get("theory_tag") or "")
    rel = s.get("relabel")
    if rel is not None:
        text += " relabelled" if rel.get("theory_key") else f" relabel {rel.get('state')}"
    if s.get("in_training_set") is False and not s.get("pruned"):
        text += " (left out of the fit)"
    return text.strip()


def _state_text(s: dict[str, Any]) -> str:
    if s.get("pruned"):
        return f"{s['state']} (pruned)"
    if s.get("not_in_recipe"):
        return f"{s['state']} (not in recipe)"
    return str(s["state"])


def _ladder_html(data: dict[str, Any]) -> str:
    ladder = data["ladder"]
    hist = ", ".join(
        f"{n} structure{'s' if n != 1 else ''} with {k} attempt{'s' if k != '1' else ''}"
        for k, n in ladder["attempts_per_structure"].items()
    )
    parts = [f"<p>{_e(ladder['total_attempts'])} pw.x attempts in all: {_e(hist or 'none')}.</p>"]
    if ladder["rescued"]:
        rows = [
            [
                (_e(r["id"]), "num"),
                (_e(r["attempts"]), "num"),
                (_e(" → ".join(r["failure_classes"])), ""),
                (_e(r["step_note"]), ""),
                (_e(json.dumps(r["params_diff"], sort_keys=True)), ""),
            ]
            for r in ladder["rescued"]
        ]
        parts.append(
            "<p>Structures labelled after more than one attempt:</p>"
            + _table(
                ["id", "attempts", "failure classes met", "step that succeeded", "changes"],
                rows,
            )
        )
    if ladder["quarantine_by_class"]:
        rows = [[(_e(k), ""), (_e(v), "num")] for k, v in ladder["quarantine_by_class"].items()]
        parts.append("<p>Quarantined structures:</p>" + _table(["failure class", "n"], rows))
    return "".join(parts)


def _kv_table(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = [[(_e(k), ""), (_e(v), "")] for k, v in pairs if v not in (None, "", {}, [])]
    return _table(["setting", "value"], rows) if rows else "<p>Not recorded by this run.</p>"


def _dft_html(data: dict[str, Any]) -> str:
    dft = data.get("dft") or {}
    kpoints = (
        f"fixed grid {dft['kpts']}"
        if dft.get("kpts")
        else f"kspacing {dft['kspacing']} 1/Å (ASE convention, no 2π)"
        if dft.get("kspacing") is not None
        else None
    )
    pseudos = ", ".join(f"{k}: {v}" for k, v in sorted((dft.get("pseudopotentials") or {}).items()))
    versions = ", ".join(f"{v} ({n} labels)" for v, n in dft.get("pw_versions", {}).items())
    pairs = [
        ("pw.x version", versions),
        ("functional (input_dft)", dft.get("input_dft") or "from the pseudopotentials"),
        ("ecutwfc (Ry)", dft.get("ecutwfc")),
        ("ecutrho (Ry)", dft.get("ecutrho")),
        ("occupations", dft.get("occupations") or "fixed (pw.x default)"),
        ("smearing", dft.get("smearing")),
        ("degauss (Ry)", dft.get("degauss")),
        ("nspin", dft.get("nspin") or 1),
        ("conv_thr (Ry)", dft.get("conv_thr")),
        ("k-points", kpoints),
        ("k-point offsets", dft.get("koffset")),
        ("pseudopotentials", pseudos),
        ("theory key", ", ".join(f"{k} ({n} labels)" for k, n in dft.get("theory_keys", {}).items())
         or "not recorded by this run"),
    ]  # fmt: skip
    parts = [_kv_table(pairs)]
    if len(dft.get("theory_keys") or {}) > 1:
        parts.append(
            '<p class="missing">The labels come from more than one level of theory: energies '
            "of different theory keys are not comparable and should not share a fit; the "
            "fit uses one (the table of the levels of theory below says which).</p>"
        )
    if dft.get("relabel"):
        rel = dft["relabel"]
        parts.append(
            f"<p>One level of theory by relabelling (oracle.theory_mismatch: relabel): "
            f"{len(rel['rescued'])} structure(s) needed {_e(rel['target_key'])}; "
            f"{len(rel['structures'])} labelled with another theory were labelled again with "
            f"it in RUN_DIR/relabel (structures {_e(', '.join(map(str, rel['structures'])))}),"
            " and the fit uses those labels; the table above counts the run's original labels,"
            " which are kept.</p>"
        )
    parts.append(_label_theories_html(dft.get("label_theories") or {}))
    if dft.get("kgrids"):
        rows = [[(_e(k), ""), (_e(n), "num")] for k, n in dft["kgrids"].items()]
        parts.append("<p>k-point grids of the labelled cells:</p>")
        parts.append(_table(["formula and grid", "labels"], rows))
    return "".join(parts)


def _label_theories_html(section: dict[str, Any]) -> str:
    """Per theory the labels, which were fitted, and the relabelled structures."""
    theories = section.get("theories") or []
    if not theories:
        return ""

    def use(t: dict[str, Any]) -> str:
        if t["fitted"]:
            return "fitted (the current potential)"
        return "to be fitted (the next fit)" if t["training_set"] else "not fitted"

    rows = [
        [
            (_e(t["tag"]), ""),
            (_e(t["theory_key"]), ""),
            (_e(t["labels"]), "num"),
            (_e(t["relabels"]), "num"),
            (_e(t["in_training_set"]), "num"),
            (_e(use(t)), ""),
        ]
        for t in theories
    ]
    parts = [
        "<p>Levels of theory of the labels (the run store's own labels, and the relabels "
        "of <code>oracle.theory_mismatch: relabel</code>):</p>",
        _table(["tag", "theory key", "labels", "relabels", "in the training set", "fit"], rows),
    ]
    relabelled = section.get("relabelled") or []
    if relabelled:
        rows = [
            [
                (_e(r["id"]), "num"),
                (_e(f"{r['from_tag']} → {r['to_tag']}"), ""),
                (_e(r["state"]), ""),
                (_num(r["energy"], ".6f"), "num"),
            ]
            for r in relabelled
        ]
        parts.append("<p>Relabelled structures (old theory → new theory):</p>")
        parts.append(_table(["id", "theory", "relabel", "new energy (eV)"], rows))
    return "".join(parts)


def _fit_html(data: dict[str, Any]) -> str:
    curve = data.get("learning_curve") or {}
    parts = []
    verdict = curve.get("converged")
    if verdict is not None:
        text = "converged" if verdict else "did not converge"
        msg = curve.get("optimizer_message")
        parts.append(
            f"<p>The optimizer {_e(text)}{f' ({_e(msg)})' if msg else ''} after "
            f"{_e(curve['iterations'][-1] if curve.get('iterations') else '?')} iterations "
            f"(loss from <code>{_e(curve.get('source'))}</code>).</p>"
        )
    for caveat in data.get("caveats") or []:
        parts.append(f'<p class="missing">{_e(caveat)}</p>')
    return "".join(parts)


def _timings_html(data: dict[str, Any]) -> str:
    t = data.get("timings") or {}

    def sec(value: Any) -> str | None:
        v = _finite(value)
        return None if v is None else f"{v:.1f} s"

    return _kv_table(
        [
            ("pw.x attempts", t.get("pwx_attempts")),
            ("pw.x wall time, all attempts", sec(t.get("pwx_total_s"))),
            (
                "pw.x wall time per attempt (mean / max)",
                f"{sec(t.get('pwx_mean_s'))} / {sec(t.get('pwx_max_s'))}"
                if t.get("pwx_mean_s") is not None
                else None,
            ),
            ("fit wall time", sec(t.get("fit_s"))),
        ]  # fmt: skip
    )


def _site_moments(s: dict[str, Any]) -> str:
    """``Fe1 +2.31, Fe2 -2.30`` (per-site moments with their element and index)."""
    moments = s.get("magmoms") or []
    symbols = s.get("symbols") or []
    if len(symbols) != len(moments):
        symbols = [""] * len(moments)
    pairs = zip(symbols, moments, strict=True)
    return ", ".join(f"{el}{i} {m:+.2f}" for i, (el, m) in enumerate(pairs, 1))


def _magnetism_html(data: dict[str, Any]) -> str:
    magnetic = [
        s
        for s in data["structures"]
        if s.get("total_magmom") is not None or s.get("magmoms") is not None
    ]
    if not magnetic:
        return "<p>No magnetic moments recorded (a spin-unpolarised run, or an older one).</p>"
    rows = [
        [
            (_e(s["id"]), "num"),
            (_e(s["formula"]), ""),
            (_num(s.get("total_magmom"), ".3f"), "num"),
            (_num(sum(map(abs, s["magmoms"])) if s.get("magmoms") else None, ".2f"), "num"),
            (_e(_site_moments(s)), "sites"),
        ]
        for s in magnetic
    ]
    headers = [
        "id", "formula", "total magnetisation (μB/cell)", "Σ|m| (μB)", "per-site moments (μB)",
    ]  # fmt: skip
    return _table(headers, rows)


#: (column of ``al_iterations``, heading, format) shown per loop iteration
_AL_COLUMNS = (
    ("iteration", "iteration", ".0f"),
    ("candidates", "candidates", ".0f"),
    ("selected", "selected", ".0f"),
    ("labelled", "labelled", ".0f"),
    ("heldout_rmse_energy_mev_per_atom", "held-out E (meV/atom)", ".1f"),
    ("heldout_rmse_forces_mev_per_ang", "held-out F (meV/Å)", ".0f"),
    ("gamma_max", "max γ", ".3g"),
    ("walkers_halted", "walkers halted", ".0f"),
    ("survival_fs_mean", "mean MD survival (fs)", ".0f"),
    ("pwx_calls_total", "pw.x calls so far", ".0f"),
)


def _active_learning_html(data: dict[str, Any]) -> str:
    al = data.get("active_learning")
    if not al:
        return "<p>No active-learning loop in this run.</p>"
    outcome = al.get("outcome") or f"running (iteration {al['iteration']}, stage {al['stage']})"
    rows = []
    for it in al.get("iterations") or []:
        row = []
        for key, _, fmt in _AL_COLUMNS:
            value = it.get(key)
            row.append((_e("") if value is None else _num(value, fmt), "num"))
        rows.append(row)
    table = _table([h for _, h, _ in _AL_COLUMNS], rows) if rows else ""
    final = ""
    if al.get("final"):
        from mlip_autopipec.lifecycle.status import final_fit_line

        final = f"<p>{_e(final_fit_line(al['final']))}.</p>"
    return f"<p><b>Outcome:</b> {_e(outcome)}.</p>{table}{final}"


def _selected_frames_html(data: dict[str, Any]) -> str:
    selected = (data.get("active_learning_detail") or {}).get("selected") or []
    chosen = ""
    if selected:
        chosen = "<p>Selected frames (labelled with pw.x and added to the training set):</p>"
        chosen += _table(
            ["iteration", "walker", "condition", "MD frame", "MD time (fs)", "max γ", "structure"],
            [
                [
                    (_e(f["iteration"]), "num"),
                    (_e(f["walker"]), ""),
                    (_e(f["condition"]), ""),
                    (_e(f["frame"]), "num"),
                    (_num(f["time_fs"], ".0f"), "num"),
                    (_num(f["gamma"], ".3g"), "num"),
                    (_e(f["structure_id"]), "num"),
                ]
                for f in selected
            ],
        )
    else:
        chosen = "<p>No frame has been selected yet.</p>"
    return chosen


def render_html(data: dict[str, Any], figures: Sequence[FigureResult]) -> str:
    """The self-contained page for :func:`collect` data and the drawn figures."""
    by_name = {f.name: f for f in figures}

    def figs(*names: str) -> str:
        shown = [by_name[n] for n in names if n in by_name]
        return '<div class="figs">' + "".join(_figure_html(f) for f in shown) + "</div>"

    counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n) or "no structures"
    title = f"mlip-autopipec report: {data['recipe'] or Path(data['run_dir']).name}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<p class="meta">Run directory <code>{_e(data["run_dir"])}</code>; '
            f"written {_e(data['generated'])}.</p>",
            f"<p><b>Structures:</b> {_e(counts)}.</p>",
            f'<p class="missing">{_e(data["store_warning"])}</p>'
            if data.get("store_warning")
            else "",
            "<h2>DFT settings and provenance</h2>",
            _dft_html(data),
            "<h2>Potential</h2>",
            _metrics_html(data),
            _fit_html(data),
            figs("energy_parity.png", "force_parity.png"),
            figs("learning_curve.png"),
            "<h2>Errors</h2>",
            figs("error_histograms.png", "structure_errors.png"),
            "<h2>Active learning</h2>",
            _active_learning_html(data),
            *(
                [
                    "<h2>Active learning per iteration</h2>",
                    figs(*AL_FIGURES),
                    _selected_frames_html(data),
                ]
                if data.get("active_learning")
                else []
            ),
            "<h2>Energy-volume curves</h2>",
            figs("ev_curves.png"),
            "<h2>Extrapolation</h2>",
            figs("gamma_histogram.png"),
            "<h2>Magnetic moments</h2>",
            _magnetism_html(data),
            "<h2>Timings</h2>",
            _timings_html(data),
            "<h2>Retry ladder</h2>",
            _ladder_html(data),
            figs("attempts.png", "rescues.png", "quarantine.png"),
            "<h2>Structures</h2>",
            _structures_html(data),
            f"<script>{_SCRIPT}</script>",
            "</body></html>",
        ]
    )


def write_report(run_dir: Path | str) -> Path:
    """Write ``RUN_DIR/report/index.html``, its PNG figures and ``report.json``.

    Returns the path of ``index.html``. Raises :class:`UsageError` when ``run_dir`` is
    missing or not a run directory.
    """
    run_dir = Path(run_dir)
    data = collect(run_dir)
    out = run_dir / REPORT_DIR
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the report folder: {exc}") from exc
    figures = _draw_figures(data, out)
    data["figures"] = {
        f.name: {"title": f.title, "file": f.name if f.png else None, "reason": f.reason}
        for f in figures
    }
    text = json.dumps(_json_clean(data), indent=1, allow_nan=False)
    atomic_write(out / REPORT_JSON, (text + "\n").encode())
    index = out / INDEX_HTML
    atomic_write(index, render_html(data, figures).encode("utf-8"))
    return index
