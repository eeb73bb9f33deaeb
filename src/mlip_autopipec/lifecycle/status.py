"""``autopipec status``: the state of every structure and of the potential.

:func:`status_json` returns exactly the documented shape (scripts rely on it)::

    {"counts": {state: n},
     "structures": [{"id", "state", "attempts", "failure", "energy_ev", "theory_key",
                     "in_training_set"}],                    # + "relabel" when relabelled
     "potential": null | {"path", "rmse_energy_mev_per_atom", "rmse_forces_mev_per_ang",
                          "n_train", "n_test"},              # + "theory_key" once known
     "theories": [{"tag", "theory_key", "labels", ...}],
     "loop": {"iteration", "stage", "finished", "status"},   # only once iteration > 0
     "not_in_recipe": {"used": [id], "pruned": [id]}}        # only when there are any

The potential is the store's current potential (the one ``load_calculator`` loads); its
``path`` is absolute (the store keeps it relative to the run directory). Its RMSE values
are the TEST-set figures (structures held out of the fit). ``loop`` is the last stage run
of an active-learning loop (absent for a one-shot run). ``not_in_recipe``: structures of
the store the recipe no longer builds (as of the last build stage), still labelled and
trained on (``used``) or left out by ``run --prune`` (``pruned``; labels kept).

The level of theory of every label (issue 11.3; :mod:`mlip_autopipec.lifecycle.theories`):
the potential gains ``theory_key`` (the theory it was fitted on) once that is known. Every
structure has ``theory_key`` (its own label's; null without a label) and ``in_training_set``
(whether the next fit uses it; null without a label) and, for a relabelled structure
(``oracle.theory_mismatch: relabel``), ``relabel: {"state", "theory_key", "energy", "id"}``
(the relabel store's label). The top-level ``theories`` list has ``{"tag", "theory_key",
"labels", "relabels", "in_training_set", "fitted", "training_set"}`` per theory (one entry
for a run of one theory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.machine import STATES
from mlip_autopipec.lifecycle.store import DB_NAME, Store
from mlip_autopipec.lifecycle.theories import LEFT_OUT_THEORY, RunTheories, run_theories


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
        theories = run_theories(run_dir, store)
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
        if theories.potential_theory_key is not None:
            potential["theory_key"] = theories.potential_theory_key
    for s in structures:
        view = theories.structures[int(s["id"])]
        s["theory_key"] = view["theory_key"]
        s["in_training_set"] = view["in_training_set"]
        if view["relabel"] is not None:
            s["relabel"] = dict(view["relabel"])
    data: dict[str, Any] = {
        "counts": counts,
        "structures": structures,
        "potential": potential,
        "theories": theories.summary(),
    }
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


def theory_cell(theories: RunTheories, structure_id: int) -> str:
    """The status table's theory of one structure: its label's tag (``T1``), and for a
    relabelled one ``T1->T2 relabelled -213.123456 eV`` (the new label's theory and
    energy), ``T1 relabel pending`` or ``T1 relabel failed``; ``(left out)`` when the
    fit leaves its label out for its theory. Empty without a label."""
    s = theories.structures.get(int(structure_id))
    if s is None or not s["labelled"]:
        return ""
    text = theories.tag(s["theory_key"])
    rel = s["relabel"]
    if rel is not None:
        if rel["theory_key"] is not None:
            energy = "" if rel["energy"] is None else f" {rel['energy']:.6f} eV"
            text = f"{text}->{theories.tag(rel['theory_key'])} relabelled{energy}"
        else:
            text = f"{text} relabel {rel['state']}"
    if s["left_out"] == LEFT_OUT_THEORY:
        text += " (left out)"
    return text


def theory_legend(theories: RunTheories) -> list[str]:
    """``theories: T1 = <key> (N labels, M relabels, fitted)`` lines below the status table:
    ``fitted`` is the current potential's theory, ``to be fitted`` the next fit's (after a
    relabel, before the refit), ``not fitted`` any other."""
    lines = []
    for i, t in enumerate(theories.summary()):
        counts = [f"{t['labels']} label{'s' if t['labels'] != 1 else ''}"]
        if t["relabels"]:
            counts.append(f"{t['relabels']} relabel{'s' if t['relabels'] != 1 else ''}")
        if t["fitted"]:
            use = "fitted"
        elif t["training_set"]:
            use = "to be fitted"
        else:
            use = "not fitted"
        head = "theories: " if i == 0 else " " * len("theories: ")
        lines.append(f"{head}{t['tag']} = {t['theory_key']} ({', '.join(counts)}, {use})")
    return lines


def render_table(
    data: dict[str, Any], fit: dict[str, Any] | None = None, theories: RunTheories | None = None
) -> str:
    """A table for people from :func:`status_json` data (and :func:`fit_verdict`); with
    ``theories`` (:func:`~mlip_autopipec.lifecycle.theories.run_theories`) and any theory
    recorded, a ``theory`` column (:func:`theory_cell`) and a legend of the theories."""
    lines = ["  ".join(f"{s}: {data['counts'].get(s, 0)}" for s in STATES)]
    show = theories is not None and bool(theories.tags)
    header = ["id", "state", "attempts", "energy (eV)"] + (["theory"] if show else [])
    rows = [(*header, "failure")]
    pruned = set((data.get("not_in_recipe") or {}).get("pruned") or ())
    for s in data["structures"]:
        energy = "" if s["energy_ev"] is None else f"{s['energy_ev']:.6f}"
        state = f"{s['state']} (pruned)" if s["id"] in pruned else s["state"]
        extra = [theory_cell(theories, s["id"])] if show and theories is not None else []
        rows.append((str(s["id"]), state, str(s["attempts"]), energy, *extra, s["failure"] or ""))
    n = len(header)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines.append("")
    for r in rows:
        cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2])]
        cells.append(r[3].rjust(widths[3]))
        cells += [r[i].ljust(widths[i]) for i in range(4, n)]
        lines.append("  ".join([*cells, r[n]]).rstrip())
    lines.append("")
    if show and theories is not None:
        lines += [*theory_legend(theories), ""]
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
        if show and theories is not None and theories.potential_theory_key is not None:
            lines.append(f"  fitted on theory {theories.tag(theories.potential_theory_key)}")
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
        final = al.get("final")
        if final:
            lines.append("  " + final_fit_line(final))
    return "\n".join(lines)


def final_fit_line(final: dict[str, Any]) -> str:
    """One line on the fit after the loop (``loop_summary``'s ``final``), for status and the
    report: which potential, and both potentials' errors on the run's held-out frames."""
    text = (
        f"final fit (trainer.max_epochs, after the loop's capped fits): potential "
        f"{final['potential']}, the loop's last was {final['loop_potential']}"
    )
    n = final.get("heldout_frames")
    if not n:
        return text
    return (
        f"{text}; RMSE on the run's {n} held-out frames: final "
        f"{final['final_heldout_rmse_energy_mev_per_atom']:.2f} meV/atom, "
        f"{final['final_heldout_rmse_forces_mev_per_ang']:.1f} meV/Å; loop's last "
        f"{final['loop_heldout_rmse_energy_mev_per_atom']:.2f} meV/atom, "
        f"{final['loop_heldout_rmse_forces_mev_per_ang']:.1f} meV/Å"
    )
