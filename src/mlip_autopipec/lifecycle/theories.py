"""The level of theory of every label of a run, its relabel, and which labels the fit uses.

One read-only view for ``status``, ``export`` and the report (issue 11.3: they show the
theory of every label). Per structure of the run store:

- ``theory_key``: the theory of its own label (``labels.theory_key``; None before labels
  recorded one, or when it has no label).
- ``relabel`` (``oracle.theory_mismatch: relabel``, see :mod:`mlip_autopipec.oracle.relabel`):
  None unless the run's relabel decision (``RUN_DIR/theory_relabel.json``) names the
  structure; else ``{"state", "theory_key", "energy", "id"}`` from the relabel store
  ``RUN_DIR/relabel`` (``state`` is that store's state: ``pending`` until its copy is
  labelled, also when the copy is not in that store yet; ``labelled``/``trained`` once the
  new label exists; ``failed`` when it could not be labelled; ``energy`` in eV, and ``id``
  the relabel store's structure id, None until there).
- ``fit_theory_key``: the theory of the label a fit uses: the relabel's once it is
  labelled (the trainer fits it in place of the old label), else its own.
- ``in_training_set``: whether the next fit uses it, by the trainer's own rule (labelled,
  not pruned, of the dominant theory after relabelling: ``stages.train``); None without a
  label. ``left_out``: why not (``"pruned"`` or ``"theory"``), else None.

Theories get short tags ``T1``, ``T2``... in order of first appearance (structure id,
own labels before relabels). The current potential's theory (``potential_theory_key``)
is the one recorded with the fit (``settings.theory_key``, :func:`stages.record_fit`); for a
potential recorded before fits carried it, that of its members' labels as fitted: a
member's relabel counts once it is ``trained`` (relabels move to ``trained`` right after
the fit that used them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mlip_autopipec.lifecycle.store import DB_NAME, Store

_LABELLED: Final = ("labelled", "trained")
#: Why a labelled structure is not in the training set.
LEFT_OUT_PRUNED: Final = "pruned"
LEFT_OUT_THEORY: Final = "theory"


def fill_unrecorded(keys: Mapping[Any, str | None]) -> dict[Any, str | None]:
    """``keys`` (structure id -> theory key, in training-set order) with the keys of labels
    stored before theory keys were recorded (None; a migrated v1 run) set to the most common
    recorded key: ``prepare_run_dir`` refused any physics change of the recipe since, so
    they share its base theory. Unchanged when nothing or everything is recorded."""
    known = Counter(k for k in keys.values() if k)
    if not known or None not in keys.values():
        return dict(keys)
    base = known.most_common(1)[0][0]
    return {sid: k or base for sid, k in keys.items()}


def relabel_rows(run_dir: Path | str) -> dict[int, dict[str, Any]]:
    """Run-store structure id -> its row in the relabel store (``Store.structure_rows``);
    {} without a relabel store."""
    from mlip_autopipec.oracle.relabel import RELABEL_DIR

    folder = Path(run_dir) / RELABEL_DIR
    if not (folder / DB_NAME).is_file():
        return {}
    out: dict[int, dict[str, Any]] = {}
    with Store.open(folder, create=False) as rstore:
        for row in rstore.structure_rows():
            origin = row.get("origin") or {}
            if origin.get("kind") == "relabel":
                out[int(origin["structure"])] = row
    return out


@dataclass
class RunTheories:
    """What :func:`run_theories` finds (see the module docstring)."""

    structures: dict[int, dict[str, Any]]
    tags: dict[str, str]  # theory key -> "T1", ...
    training_key: str | None  # the theory the next fit uses
    potential_theory_key: str | None
    record: dict[str, Any] | None  # RUN_DIR/theory_relabel.json
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def several(self) -> bool:
        """More than one theory among the labels, or a relabel decision."""
        return len(self.tags) > 1 or self.record is not None

    def tag(self, key: str | None) -> str:
        return "?" if key is None else self.tags.get(key, "?")

    def summary(self) -> list[dict[str, Any]]:
        """Per theory: ``tag``, ``theory_key``, ``labels`` (the run store's own labels of
        it), ``relabels`` (relabel-store labels of it), ``in_training_set`` (labels the next
        fit uses), ``fitted`` (the current potential's theory) and ``training_set`` (the
        next fit's theory)."""
        return [
            {
                "tag": tag,
                "theory_key": key,
                "labels": self.counts.get(key, {}).get("labels", 0),
                "relabels": self.counts.get(key, {}).get("relabels", 0),
                "in_training_set": self.counts.get(key, {}).get("in_training_set", 0),
                "fitted": key == self.potential_theory_key,
                "training_set": key == self.training_key,
            }
            for key, tag in self.tags.items()
        ]

    def relabelled(self) -> list[dict[str, Any]]:
        """Per relabelled structure: ``id``, ``from`` and ``to`` theory keys (``to`` None
        until labelled), ``state`` and ``energy`` of the relabel."""
        return [
            {
                "id": sid,
                "from": s["theory_key"],
                "to": s["relabel"]["theory_key"],
                "state": s["relabel"]["state"],
                "energy": s["relabel"]["energy"],
            }
            for sid, s in sorted(self.structures.items())
            if s["relabel"] is not None
        ]


def _members_theory(members: set[int], structures: Mapping[int, Mapping[str, Any]]) -> str | None:
    """The dominant theory of a potential's members' labels as fitted: a member's relabel
    counts once it is ``trained``."""
    as_fitted: dict[int, str | None] = {}
    for sid in sorted(members):
        if sid not in structures:
            continue
        rel = structures[sid]["relabel"] or {}
        trained = rel.get("state") == "trained" and rel.get("theory_key")
        as_fitted[sid] = rel["theory_key"] if trained else structures[sid]["theory_key"]
    fitted = Counter(k for k in fill_unrecorded(as_fitted).values() if k)
    return fitted.most_common(1)[0][0] if fitted else None


def run_theories(run_dir: Path | str, store: Store | None = None) -> RunTheories:
    """The theory view of ``run_dir`` (its run store, relabel store and relabel decision).
    ``store``: the run store when the caller has it open (else it is opened read-only)."""
    from mlip_autopipec.oracle.relabel import relabel_record

    run_dir = Path(run_dir)
    if store is None:
        with Store.open(run_dir, create=False) as opened:
            return run_theories(run_dir, opened)
    rows = store.structure_rows()
    pruned = store.pruned_ids()
    current = store.current_potential()
    members = set(store.potential_members(int(current["id"]))) if current else set()
    record = relabel_record(run_dir)
    relabels = relabel_rows(run_dir) if record is not None else {}
    named = {int(i) for i in (record or {}).get("structures") or ()}
    structures: dict[int, dict[str, Any]] = {}
    order: list[str] = []
    for row in rows:
        sid = int(row["id"])
        labelled = row["state"] in _LABELLED
        own = row["theory_key"] if labelled else None
        relabel = None
        if sid in named or sid in relabels:
            r = relabels.get(sid) or {"state": "pending", "id": None}
            done = r["state"] in _LABELLED
            relabel = {
                "state": r["state"],
                "theory_key": r["theory_key"] if done else None,
                "energy": r["energy_ev"] if done else None,
                "id": None if r["id"] is None else int(r["id"]),
            }
        fit_key = own
        if labelled and relabel is not None and relabel["theory_key"] is not None:
            fit_key = relabel["theory_key"]
        structures[sid] = {
            "id": sid,
            "state": row["state"],
            "labelled": labelled,
            "theory_key": own,
            "relabel": relabel,
            "fit_theory_key": fit_key,
            "in_training_set": None,
            "left_out": None,
        }
        order += [str(k) for k in (own, (relabel or {}).get("theory_key")) if k]
    tags = {key: f"T{i + 1}" for i, key in enumerate(dict.fromkeys(order))}

    # the trainer's rule (stages.train): relabelled labels, minus pruned, one theory
    from mlip_autopipec.oracle.theory import dominant_theory

    candidates = [s for s in structures.values() if s["labelled"] and s["id"] not in pruned]
    keys = fill_unrecorded({s["id"]: s["fit_theory_key"] for s in candidates})
    training_key, kept, _ = dominant_theory([{"id": i, "theory_key": k} for i, k in keys.items()])
    kept_set = set(kept)
    for s in structures.values():
        if not s["labelled"]:
            continue
        s["in_training_set"] = s["id"] in kept_set
        if s["id"] in pruned:
            s["left_out"] = LEFT_OUT_PRUNED
        elif s["id"] not in kept_set:
            s["left_out"] = LEFT_OUT_THEORY

    # the current potential: the theory recorded with its fit, else (a potential recorded
    # before fits carried it) its members' labels as fitted
    recorded = ((current or {}).get("settings") or {}).get("theory_key")
    potential_key = str(recorded) if recorded else _members_theory(members, structures)

    counts: dict[str, dict[str, int]] = {}
    for s in structures.values():
        if s["theory_key"]:
            counts.setdefault(s["theory_key"], Counter())["labels"] += 1
        rel = s["relabel"]
        if rel is not None and rel["theory_key"]:
            counts.setdefault(rel["theory_key"], Counter())["relabels"] += 1
        if s["in_training_set"] and s["fit_theory_key"]:
            counts.setdefault(s["fit_theory_key"], Counter())["in_training_set"] += 1
    return RunTheories(
        structures=structures,
        tags=tags,
        training_key=training_key,
        potential_theory_key=potential_key,
        record=record,
        counts={k: dict(v) for k, v in counts.items()},
    )
