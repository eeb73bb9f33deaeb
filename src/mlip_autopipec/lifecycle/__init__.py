"""Per-structure lifecycle: the state table, the SQLite store, the resumable runner.

Typical use (what ``pipeline.py`` does)::

    moved = prepare_run_dir(run_dir, recipe, fresh=fresh)   # RecipeChangedError on physics change
    with RunLock(run_dir), Store.open(run_dir) as store:     # RunLockedError if another runner
        store.add_structures([(s.atoms, s.source) for s in build_structures(recipe)])
        with make_executor(recipe.execution, workers, run_dir=run_dir) as executor:
            counts = label_all(store, oracle, run_attempt, executor, run_dir, Progress())
"""

from mlip_autopipec.lifecycle.lock import RunLock
from mlip_autopipec.lifecycle.machine import (
    STATES,
    TRANSITIONS,
    IllegalTransitionError,
    Lifecycle,
)
from mlip_autopipec.lifecycle.progress import Progress
from mlip_autopipec.lifecycle.rundir import compare_recipes, prepare_run_dir
from mlip_autopipec.lifecycle.runner import label_all, structure_workdir
from mlip_autopipec.lifecycle.store import Store, content_hash

__all__ = [
    "STATES",
    "TRANSITIONS",
    "IllegalTransitionError",
    "Lifecycle",
    "Progress",
    "RunLock",
    "Store",
    "compare_recipes",
    "content_hash",
    "label_all",
    "prepare_run_dir",
    "structure_workdir",
]
