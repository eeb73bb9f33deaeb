"""The run directory keeps the exact recipe it was made with.

``RUN_DIR/recipe.yaml`` is a byte copy of the recipe file, ``RUN_DIR/recipe.json`` the
resolved data (schema defaults filled in). Rerunning with a changed recipe continues when
the change cannot invalidate a label (execution, trainer, structures appended, retry
ladders, timeouts, the command) and stops with :class:`RecipeChangedError` naming the
changed keys when it can (the oracle physics), unless a fresh run directory is asked for.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mlip_autopipec.errors import RecipeChangedError, UsageError
from mlip_autopipec.lifecycle.lock import RunLock
from mlip_autopipec.lifecycle.store import DB_NAME

RECIPE_COPY = "recipe.yaml"
RECIPE_DATA = "recipe.json"

#: Oracle keys that define the physics of a label. Everything else under ``oracle``
#: (command, timeout, retry ladders, min_distance) changes how a label is obtained, not
#: what it is: a ladder step's own changes are recorded with each attempt.
PHYSICS_KEYS = ("engine", "input_data", "pseudopotentials", "kspacing", "kpts", "koffset")


class RecipeLike(Protocol):
    """What :func:`prepare_run_dir` needs from ``mlip_autopipec.recipe.Recipe``."""

    @property
    def path(self) -> Path: ...

    @property
    def data(self) -> dict[str, Any]: ...


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _normalise(value: Any) -> Any:
    # JSON round trip: tuples vs lists, Paths vs strings and 1 vs 1.0 must not count as changes.
    return json.loads(json.dumps(value, default=str))


def compare_recipes(old_data: Mapping[str, Any], new_data: Mapping[str, Any]) -> list[str]:
    """Dotted keys of oracle physics that differ between two resolved recipes, sorted.

    Empty means existing labels stay valid. Compared: ``oracle.engine``,
    ``oracle.input_data.*``, ``oracle.pseudopotentials.*``, ``oracle.kspacing``,
    ``oracle.kpts``, ``oracle.koffset``. Numbers compare by value (``30`` == ``30.0``).
    """
    old_oracle = _normalise(old_data.get("oracle") or {})
    new_oracle = _normalise(new_data.get("oracle") or {})
    changed: list[str] = []
    for key in PHYSICS_KEYS:
        old_flat: dict[str, Any] = {}
        new_flat: dict[str, Any] = {}
        _flatten(old_oracle.get(key), f"oracle.{key}", old_flat)
        _flatten(new_oracle.get(key), f"oracle.{key}", new_flat)
        # An empty dict and a missing key mean the same (no setting).
        for flat in (old_flat, new_flat):
            for k in [k for k, v in flat.items() if v is None or v == {}]:
                del flat[k]
        for k in sorted(set(old_flat) | set(new_flat)):
            if old_flat.get(k) != new_flat.get(k):
                changed.append(k)
    return sorted(changed)


def _move_aside(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    k = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{k}")
        k += 1
    run_dir.rename(target)
    return target


def prepare_run_dir(run_dir: Path, recipe: RecipeLike, *, fresh: bool = False) -> Path | None:
    """Create or reuse ``run_dir`` for ``recipe``; returns where an old run was moved.

    New directory: the recipe copy and its resolved data are written. Existing run with
    the same physics: the copies are updated (the new execution/trainer settings apply).
    Existing run with changed physics: :class:`RecipeChangedError` naming the keys, unless
    ``fresh``, which moves the old directory to ``<run_dir>.old-<time>`` and starts anew.
    Call this before taking the run lock (a fresh start moves the directory).
    """
    run_dir = Path(run_dir)
    moved: Path | None = None
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory")
    if fresh and run_dir.exists() and any(run_dir.iterdir()):
        # A live runner would keep writing into the moved directory: refuse (RunLockedError).
        with RunLock(run_dir):
            pass
        moved = _move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Held while comparing and writing, so that a second runner (refused by the lock anyway)
    # cannot overwrite the recipe record of a live run first.
    with RunLock(run_dir):
        _check_and_record(run_dir, recipe)
    return moved


def _check_and_record(run_dir: Path, recipe: RecipeLike) -> None:
    data_path = run_dir / RECIPE_DATA
    if data_path.is_file():
        try:
            old = json.loads(data_path.read_text())
        except ValueError as exc:
            raise UsageError(f"{data_path}: unreadable recipe record ({exc})") from exc
        changed = compare_recipes(old, recipe.data)
        if changed:
            raise RecipeChangedError(
                f"{recipe.path}: the oracle physics changed since {run_dir} was labelled "
                f"({', '.join(changed)}); its labels would mix two levels of theory. "
                "Restore those settings, or rerun with --fresh to move the old run "
                "aside and start anew."
            )
    elif (run_dir / DB_NAME).is_file():
        raise UsageError(
            f"{run_dir}: has a run database but no {RECIPE_DATA}; cannot check the recipe. "
            "Use --fresh or another --run-dir."
        )
    shutil.copyfile(recipe.path, run_dir / RECIPE_COPY)
    tmp = data_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(recipe.data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(data_path)
