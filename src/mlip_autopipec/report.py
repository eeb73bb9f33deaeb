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
import os
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from mlip_autopipec.errors import AutopipecError, UsageError
from mlip_autopipec.lifecycle.machine import STATES
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store
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
}

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
def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename, so a
    reader (or a kill) never sees half a file."""
    # Not mkstemp: its 0600 mode would make a shared report unreadable to colleagues.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        out[split] = {
            "ids": [str(n) for n in df["name"]],
            "natoms": [int(n) for n in natoms],
            "energy_dft_ev_per_atom": (e_dft / natoms).tolist(),
            "energy_ace_ev_per_atom": (e_ace / natoms).tolist(),
            "forces_dft_ev_per_ang": f_dft.tolist(),
            "forces_ace_ev_per_ang": f_ace.tolist(),
            "rmse_energy_mev_per_atom": 1e3 * float(np.sqrt(np.mean(de**2))) if len(de) else None,
            "rmse_forces_mev_per_ang": 1e3 * float(np.sqrt(np.mean(dfc**2))) if len(dfc) else None,
        }
    if not out:
        return {}, (
            f"the fit folder {fit.workdir} has no pacemaker prediction tables "
            f"({', '.join(missing)})."
        )
    return out, None


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
    potential: dict[str, Any] | None = None
    parity: dict[str, Any] = {}
    parity_reason: str | None = None
    split_of: dict[str, str] = {}
    if latest is None:
        parity_reason = (
            "no potential has been fitted yet (labels only); run "
            "'autopipec run RECIPE --stage train' to fit one."
        )
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
    for data in parity.values():
        ace_per_atom.update(zip(data["ids"], data["energy_ace_ev_per_atom"], strict=True))
    structures = []
    for r in rows:
        fclass, fmsg = _split_failure(r["failure"])
        energy = _finite(r["energy_ev"])
        per_atom = energy / r["natoms"] if energy is not None and r["natoms"] else None
        ace = ace_per_atom.get(str(r["id"]))
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
            }
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
    return plan


def _draw_figures(data: dict[str, Any], out: Path) -> list[FigureResult]:
    results = []
    for name, (draw, reason) in _figure_plan(data).items():
        path = out / name
        if draw is None:
            # A stale PNG from an earlier report would contradict this one.
            path.unlink(missing_ok=True)
            results.append(FigureResult(name, FIGURES[name], None, reason))
            continue
        _write_atomic(path, draw())
        results.append(FigureResult(name, FIGURES[name], path, None))
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
    ]  # fmt: skip
    rows = []
    for s in data["structures"]:
        cells = [
            (_e(s["id"]), "num"),
            (_e(s["source"]), ""),
            (_e(s["formula"]), ""),
            (_e(s["state"]), ""),
            (_e(s["attempts"]), "num"),
            (_e(s["failure_class"]), ""),
            (_e(s["failure_message"]), ""),
            (_num(s["energy_ev"], ".6f"), "num"),
            (_num(s["energy_ev_per_atom"], ".6f"), "num"),
            (_e(s["split"]), ""),
            (_num(s["ace_error_mev_per_atom"], ".2f"), "num"),
        ]
        rows.append(cells)
    return _table(headers, rows, [s["state"] for s in data["structures"]])


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


def render_html(data: dict[str, Any], figures: Sequence[FigureResult]) -> str:
    """The self-contained page for :func:`collect` data and the drawn figures."""
    by_name = {f.name: f for f in figures}

    def figs(*names: str) -> str:
        return '<div class="figs">' + "".join(_figure_html(by_name[n]) for n in names) + "</div>"

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
            "<h2>Potential</h2>",
            _metrics_html(data),
            figs("energy_parity.png", "force_parity.png"),
            "<h2>Errors</h2>",
            figs("error_histograms.png"),
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
    _write_atomic(out / REPORT_JSON, (text + "\n").encode())
    index = out / INDEX_HTML
    _write_atomic(index, render_html(data, figures).encode("utf-8"))
    return index
