"""``oracle.theory_mismatch: relabel``: one level of theory by labelling the others again.

What it does, exactly:

- **Which theory wins.** The rescues' theory: among the labels whose retry ladder changed
  the level of theory (their ``params_diff`` has a theory setting, e.g. a smearing rescue of
  a fixed-occupation cell), the theory most of them share (:func:`~.theory.relabel_plan`).
  The recipe's own theory could not label those structures; the rescue's can label all.
- **Who is relabelled.** Every labelled structure of another theory: a copy of it is
  labelled with the recipe's settings plus the rescue's theory settings
  (:func:`~.theory.with_theory_settings`) in the run's relabel store ``RUN_DIR/relabel``
  (its own SQLite state machine, attempts and folders, like the held-out store), and the
  trainer fits that label in place of the old one (:func:`relabelled_training_set`).
- **History.** The old label is untouched: it stays the run store's label of the structure
  (``status``, ``export`` and its attempts show it, with its theory key); the relabel
  store holds the new one (``origin: {kind: relabel, structure: <id>}``).
- **From then on** the run's theory *is* the rescue's: the decision is written to
  ``RUN_DIR/theory_relabel.json`` before anything is labelled again, and every later label
  of the run (active-learning iterations, the held-out set) is computed with it. One
  relabel per run: a structure that, relabelled, needs yet another theory (or fails) is
  left out of the fit as with ``exclude`` (and named in the run output).
- **Resume-safe.** The decision file is read first; the relabel store is filled by content
  hash (adding a structure twice keeps one) and labelled by the same runner as every label
  (a kill requeues its in-flight structures); a rerun finds everything labelled and does
  nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from mlip_autopipec.fsutil import atomic_write_json
from mlip_autopipec.oracle.theory import relabel_plan, with_theory_settings

#: The run's relabel decision (``RUN_DIR/theory_relabel.json``).
RELABEL_FILE: Final = "theory_relabel.json"
#: The relabel store (``RUN_DIR/relabel``).
RELABEL_DIR: Final = "relabel"
#: The held-out store of the active-learning loop lives in ``RUN_DIR/heldout``.
_HELDOUT_DIR: Final = "heldout"
_LABELLED: Final = ("labelled", "trained")


def relabel_record(run_dir: Path | str) -> dict[str, Any] | None:
    """The run's relabel decision, or None. The held-out store (``RUN_DIR/heldout``) reads
    its run's record: held-out frames are labelled with the theory the fit uses."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent) if run_dir.name == _HELDOUT_DIR else (run_dir,):
        path = folder / RELABEL_FILE
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    return None


def relabelled_oracle_cfg(oracle_cfg: Mapping[str, Any], run_dir: Path | str) -> dict[str, Any]:
    """The oracle settings every label of this run is computed with: the recipe's (as given,
    e.g. after ``oracle.converge``), plus the recorded relabel theory when there is one."""
    record = relabel_record(run_dir)
    if record is None:
        return dict(oracle_cfg)
    return with_theory_settings(oracle_cfg, record["settings"])


def _final_labels(store: Any) -> list[dict[str, Any]]:
    """id, theory_key and params_diff of the converged attempt behind every current label."""
    out = []
    for sid in store.ids_in_state(*_LABELLED):
        final = next(
            (a for a in reversed(store.attempts_of(sid)) if a.get("failure_class") == "converged"),
            None,
        )
        if final is not None:
            out.append(
                {
                    "id": sid,
                    "theory_key": final.get("theory_key"),
                    "params_diff": final.get("params_diff") or {},
                }
            )
    return out


def relabel_to_one_theory(
    store: Any,
    oracle_cfg: Mapping[str, Any],
    run_dir: Path | str,
    label: Callable[[Any, Path, dict[str, Any]], dict[str, int]],
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Relabel the structures of another theory than the rescues' (see the module text).

    ``oracle_cfg`` is the recipe's oracle section as the label stage uses it (before the
    relabel theory is applied); ``label(store, run_dir, cfg)`` labels every pending
    structure of ``store`` with an oracle of these settings and returns the counts per
    state. Returns the relabel record (plus ``counts`` of the relabel store) or None when
    the run has one theory and no record.
    """
    from mlip_autopipec.lifecycle.store import Store

    run_dir = Path(run_dir)
    if run_dir.name == _HELDOUT_DIR:
        return None  # held-out frames are never fitted: their theory follows the run's
    record = relabel_record(run_dir)
    if record is None:
        labels = _final_labels(store)
        plan = relabel_plan(labels)
        if plan is None:
            return None
        keys = {x["id"]: x["theory_key"] for x in labels}
        record = {
            "target_key": plan.target_key,
            "settings": plan.settings,
            "rescued": sorted(int(x["id"]) for x in labels if x["theory_key"] == plan.target_key),
            "structures": sorted(int(i) for i in plan.relabel_ids),
            "previous_keys": {str(i): keys[i] for i in sorted(plan.relabel_ids)},
        }
        # the decision is on disk before anything is labelled again (resume-safe)
        atomic_write_json(run_dir / RELABEL_FILE, record)
    settings = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in record["settings"].items())
    folder = run_dir / RELABEL_DIR
    with Store.open(folder) as rstore:
        rstore.add_structures(
            (store.atoms_of(sid), f"relabel of {sid}", {"kind": "relabel", "structure": sid})
            for sid in record["structures"]
        )
        todo = rstore.ids_in_state("pending", "running", "scf_retry")
        if todo:
            say(
                f"autopipec: note: {len(record['rescued'])} label(s) needed another level of "
                f"theory ({record['target_key']}); oracle.theory_mismatch is relabel, so "
                f"{len(todo)} structure(s) are labelled again with {settings} in {folder} "
                "(their old labels are kept)"
            )
            label(rstore, folder, with_theory_settings(oracle_cfg, record["settings"]))
        counts = rstore.counts()
    say(
        f"autopipec: one level of theory: {len(record['structures'])} structure(s) relabelled "
        f"with the rescues' theory {record['target_key']} ({settings}): "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    )
    return {**record, "counts": counts}


def relabelled_training_set(atoms_list: list[Any], run_dir: Path | str) -> list[Any]:
    """``atoms_list`` (the run store's labelled Atoms) with the label of every relabelled
    structure replaced by its relabel (same ``structure_id``, the relabel's
    ``theory_key``); unchanged when the run has no relabel store."""
    from mlip_autopipec.lifecycle.store import DB_NAME, Store

    folder = Path(run_dir) / RELABEL_DIR
    if relabel_record(run_dir) is None or not (folder / DB_NAME).is_file():
        return atoms_list
    with Store.open(folder, create=False) as rstore:
        rows = {int(r["id"]): r for r in rstore.structure_rows()}
        by_main: dict[int, Any] = {}
        for atoms in rstore.labelled_atoms():
            origin = rows[int(atoms.info["structure_id"])].get("origin") or {}
            if origin.get("kind") == "relabel":
                atoms.info["source"] = f"relabel of {origin['structure']}"
                atoms.info["structure_id"] = int(origin["structure"])
                by_main[int(origin["structure"])] = atoms
    return [by_main.get(int(a.info["structure_id"]), a) for a in atoms_list]


def unfitted_relabels(run_dir: Path | str) -> list[int]:
    """Ids (relabel store) of relabels no potential was fitted on yet (state ``labelled``)."""
    from mlip_autopipec.lifecycle.store import DB_NAME, Store

    folder = Path(run_dir) / RELABEL_DIR
    if not (folder / DB_NAME).is_file():
        return []
    with Store.open(folder, create=False) as rstore:
        ids: list[int] = rstore.ids_in_state("labelled")
        return ids


def mark_relabels_fitted(run_dir: Path | str, potential_id: int) -> None:
    """Move the relabels to ``trained`` once the run's potential ``potential_id`` used them."""
    from mlip_autopipec.lifecycle.store import Store

    ids = unfitted_relabels(run_dir)
    if ids:
        with Store.open(Path(run_dir) / RELABEL_DIR, create=False) as rstore:
            rstore.bulk_transition(ids, "train", note=f"run potential {potential_id}")
