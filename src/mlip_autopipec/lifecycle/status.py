"""``autopipec status``: the state of every structure and of the potential.

:func:`status_json` returns exactly the documented shape (scripts rely on it)::

    {"counts": {state: n},
     "structures": [{"id", "state", "attempts", "failure", "energy_ev"}],
     "potential": null | {"path", "rmse_energy_mev_per_atom", "rmse_forces_mev_per_ang",
                          "n_train", "n_test"},
     "loop": {"iteration", "stage", "finished", "status"},   # only once iteration > 0
     "not_in_recipe": {"used": [id], "pruned": [id]}}        # only when there are any

The potential is the store's current potential (the one ``load_calculator`` loads); its
``path`` is absolute (the store keeps it relative to the run directory). Its RMSE values
are the TEST-set figures (structures held out of the fit). ``loop`` is the last stage run
of an active-learning loop (absent for a one-shot run). ``not_in_recipe``: structures of
the store the recipe no longer builds (as of the last build stage), still labelled and
trained on (``used``) or left out by ``run --prune`` (``pruned``; labels kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.machine import STATES
from mlip_autopipec.lifecycle.store import DB_NAME, Store


def _test_value(metric: Any) -> float | None:
    if isinstance(metric, dict):
        metric = metric.get("test")
    return None if metric is None else float(metric)


def status_json(run_dir: Path | str) -> dict[str, Any]:
    """The status of ``run_dir`` as plain JSON-able data (see the module docstring).

    Raises :class:`UsageError` when ``run_dir`` is missing or not a run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    if not (run_dir / DB_NAME).is_file():
        raise UsageError(
            f"{run_dir}: not a run directory (no {DB_NAME}); start one with 'autopipec run RECIPE'"
        )
    with Store.open(run_dir, create=False) as store:
        counts = store.counts()
        structures = [
            {
                "id": row["id"],
                "state": row["state"],
                "attempts": row["attempts"],
                "failure": row["failure"],
                "energy_ev": row["energy_ev"],
            }
            for row in store.structure_rows()
        ]
        current = store.current_potential()
        loop = store.loop_state()
        from mlip_autopipec.explore.loop import loop_summary

        active_learning = loop_summary(store)
        not_in_recipe = recipe_drift(store)
    potential = None
    if current is not None:
        metrics = current["metrics"]
        potential = {
            "path": str(run_dir / current["path"]),
            "rmse_energy_mev_per_atom": _test_value(metrics.get("rmse_energy_mev_per_atom")),
            "rmse_forces_mev_per_ang": _test_value(metrics.get("rmse_forces_mev_per_ang")),
            "n_train": current["n_train"],
            "n_test": current["n_test"],
        }
    data: dict[str, Any] = {"counts": counts, "structures": structures, "potential": potential}
    if active_learning is not None:
        data["active_learning"] = active_learning
    if loop is not None and loop["iteration"] > 0:
        data["loop"] = {k: loop[k] for k in ("iteration", "stage", "finished", "status")}
    if not_in_recipe is not None:
        data["not_in_recipe"] = not_in_recipe
    return data


def recipe_drift(store: Store) -> dict[str, list[int]] | None:
    """``{"used": [...], "pruned": [...]}``: the store's structures the recipe no longer
    builds (as its last build stage found), still trained on or pruned; None when none."""
    pruned = sorted(store.pruned_ids())
    used: list[int] = []
    for row in reversed(store.loop_rows()):
        if row["stage"] == "build" and row["details"] is not None:
            used = [int(i) for i in row["details"].get("not_in_recipe") or [] if i not in pruned]
            break
    if not (used or pruned):
        return None
    return {"used": used, "pruned": pruned}


def fit_verdict(run_dir: Path | str) -> dict[str, Any] | None:
    """Whether the current potential's optimizer converged (its ``potential.json``, written
    by fits that record it; None for older fits or none at all). Shown by the status table
    and the report; ``status --json`` keeps its documented keys."""
    import json

    run_dir = Path(run_dir)
    with Store.open(run_dir, create=False) as store:
        current = store.current_potential()
    if current is None or not current.get("fit_dir"):
        return None
    try:
        record = json.loads((run_dir / str(current["fit_dir"]) / "potential.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "converged" not in record:
        return None
    return {
        "converged": bool(record["converged"]),
        "iterations": record.get("iterations"),
        "message": record.get("status_message"),
        "notes": list(record.get("notes") or []),
    }


def render_table(data: dict[str, Any], fit: dict[str, Any] | None = None) -> str:
    """A table for people from :func:`status_json` data (and :func:`fit_verdict`)."""
    lines = ["  ".join(f"{s}: {data['counts'].get(s, 0)}" for s in STATES)]
    rows = [("id", "state", "attempts", "energy (eV)", "failure")]
    pruned = set((data.get("not_in_recipe") or {}).get("pruned") or ())
    for s in data["structures"]:
        energy = "" if s["energy_ev"] is None else f"{s['energy_ev']:.6f}"
        state = f"{s['state']} (pruned)" if s["id"] in pruned else s["state"]
        rows.append((str(s["id"]), state, str(s["attempts"]), energy, s["failure"] or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines.append("")
    for r in rows:
        cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2])]
        cells.append(r[3].rjust(widths[3]))
        lines.append("  ".join([*cells, r[4]]).rstrip())
    lines.append("")
    pot = data["potential"]
    if pot is None:
        lines.append("potential: none fitted yet")
    else:
        e = pot["rmse_energy_mev_per_atom"]
        f = pot["rmse_forces_mev_per_ang"]
        e_txt = "n/a" if e is None else f"{e:.2f} meV/atom"
        f_txt = "n/a" if f is None else f"{f:.1f} meV/Å"
        lines.append(f"potential: {pot['path']}")
        lines.append(
            f"  test-set RMSE: energy {e_txt}, forces {f_txt} "
            f"({pot['n_train']} train / {pot['n_test']} test structures)"
        )
    if fit is not None:
        verdict = "converged" if fit["converged"] else "NOT converged"
        lines.append(
            f"  optimizer: {verdict} after {fit['iterations']} iterations ({fit['message']})"
        )
    drift = data.get("not_in_recipe")
    if drift is not None:
        from mlip_autopipec.lifecycle.prune import show_ids

        if drift["used"]:
            lines.append(
                f"not in the recipe: {len(drift['used'])} structure(s) still labelled and "
                f"trained on ({show_ids(drift['used'])}); 'autopipec run --prune' leaves them out"
            )
        if drift["pruned"]:
            lines.append(
                f"pruned: {len(drift['pruned'])} structure(s) not in the recipe, left out of "
                f"training, labels kept ({show_ids(drift['pruned'])})"
            )
    al = data.get("active_learning")
    if al is not None:
        state = al["outcome"] or f"running (stage {al['stage']})"
        lines.append(f"active learning: iteration {al['iteration']}: {state}")
    return "\n".join(lines)
