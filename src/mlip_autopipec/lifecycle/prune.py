"""Structures in the store that the recipe no longer lists, and ``run --prune``.

A structure stays in the store when its entry leaves the recipe (or the entry changes so
that it builds other structures): its label cost pw.x time. Without ``--prune`` it is still
labelled and trained on, and every run says so. ``run --prune`` marks such structures
*pruned* in the transitions log (:meth:`~mlip_autopipec.lifecycle.store.Store.mark_pruned`):
they are left out of labelling and of every later fit, their state, attempts and label stay
(nothing is deleted). The decision sticks: a later run without ``--prune`` keeps them out.
A pruned structure the recipe builds again (same content hash) is restored and its label
reused, without pw.x.

Only the recipe's own structures can leave it: structures the active-learning loop added
(rows of ``al_candidates``, or an origin other than ``recipe``, or iteration > 0) never
count as removed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: How many ids a message lists before "...".
SHOWN_IDS = 20


@dataclass(frozen=True)
class RecipeSync:
    """How the store's recipe structures compare with the recipe of this run.

    ``not_in_recipe``: recipe structures the recipe no longer builds and that are not
    pruned (still labelled and trained on); ``pruned``: every pruned structure after this
    run's decisions; ``pruned_now`` / ``restored``: marked / unmarked by this run.
    """

    not_in_recipe: tuple[int, ...] = ()
    pruned: tuple[int, ...] = ()
    pruned_now: tuple[int, ...] = ()
    restored: tuple[int, ...] = ()

    def details(self) -> dict[str, list[int]]:
        """JSON-able form (stored with the build stage's row of the loop table)."""
        return {
            "not_in_recipe": list(self.not_in_recipe),
            "pruned": list(self.pruned),
            "pruned_now": list(self.pruned_now),
            "restored": list(self.restored),
        }


def show_ids(ids: Iterable[int]) -> str:
    """``3, 5, 8`` (at most :data:`SHOWN_IDS`, then `` ...``)."""
    ids = list(ids)
    text = ", ".join(map(str, ids[:SHOWN_IDS]))
    return text + (" ..." if len(ids) > SHOWN_IDS else "")


def loop_structure_ids(store: Any) -> set[int]:
    """Ids of structures the active-learning loop added (its ``al_candidates`` rows)."""
    conn: sqlite3.Connection = store._conn  # the loop's tables share the store's database
    try:
        rows = conn.execute(
            "SELECT structure_id FROM al_candidates WHERE structure_id IS NOT NULL"
        ).fetchall()
    except sqlite3.OperationalError:  # no loop table: a one-shot run
        return set()
    return {int(r[0]) for r in rows}


def recipe_structure_ids(store: Any) -> set[int]:
    """Ids of the stored structures that came from a recipe (any version of it)."""
    from_loop = loop_structure_ids(store)
    out = set()
    for row in store.structure_rows():
        origin = row.get("origin") or {}
        if (
            origin.get("kind", "recipe") == "recipe"
            and int(row.get("iteration") or 0) == 0
            and row["id"] not in from_loop
        ):
            out.add(int(row["id"]))
    return out


def sync_with_recipe(store: Any, in_recipe: Iterable[int], *, prune: bool) -> RecipeSync:
    """Compare the store with the structures the recipe builds now (``in_recipe``: their
    ids); with ``prune`` mark the recipe structures it no longer builds pruned. Pruned
    structures the recipe builds again are restored either way."""
    wanted = {int(i) for i in in_recipe}
    pruned = store.pruned_ids()
    restored = sorted(pruned & wanted)
    if restored:
        store.mark_pruned(restored, restore=True, note="in the recipe again")
        pruned -= set(restored)
    gone = sorted(recipe_structure_ids(store) - wanted - pruned)
    pruned_now: list[int] = []
    if prune and gone:
        store.mark_pruned(gone, note="not in the recipe (run --prune)")
        pruned_now, gone = gone, []
        pruned |= set(pruned_now)
    return RecipeSync(tuple(gone), tuple(sorted(pruned)), tuple(pruned_now), tuple(restored))


def messages(sync: RecipeSync) -> list[str]:
    """What a run says about ``sync`` (nothing when the store matches the recipe)."""
    out = []
    if sync.restored:
        out.append(
            f"{len(sync.restored)} pruned structure(s) are in the recipe again and are used "
            f"again (labels kept): {show_ids(sync.restored)}"
        )
    if sync.pruned_now:
        out.append(
            f"--prune: {len(sync.pruned_now)} structure(s) no longer in the recipe are left out "
            f"of labelling and training from now on (kept in the store with their labels): "
            f"{show_ids(sync.pruned_now)}"
        )
    earlier = len(sync.pruned) - len(sync.pruned_now)
    if earlier > 0:
        out.append(
            f"{earlier} structure(s) pruned earlier stay out of training (put them back in "
            "the recipe to use them again)"
        )
    if sync.not_in_recipe:
        out.append(
            f"note: {len(sync.not_in_recipe)} structure(s) in the store are no longer in the "
            f"recipe and are still labelled and trained on: {show_ids(sync.not_in_recipe)}; "
            "'autopipec run --prune' leaves them out (nothing is deleted)"
        )
    return out
