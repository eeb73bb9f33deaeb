"""The run directory keeps the exact recipe it was made with.

``RUN_DIR/recipe.yaml`` is a byte copy of the recipe file, ``RUN_DIR/recipe.json`` the
resolved data (schema defaults filled in). Rerunning with a changed recipe continues when
the change cannot invalidate a label (execution, trainer, structures appended, retry
ladders, timeouts, the command) and stops with :class:`RecipeChangedError` naming the
changed keys when it can (the oracle physics), unless a fresh run directory is asked for.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mlip_autopipec.errors import RecipeChangedError, RunEnvironmentError, UsageError
from mlip_autopipec.fsutil import atomic_write, atomic_write_json, read_regular_file
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


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"

_UNUSABLE = "not a usable run database"
_RESTORE = (
    "nothing was changed; restore it from a backup, or use --fresh (moves this run "
    "directory aside, keeping it) or another --run-dir"
)


def check_database(path: Path, *, integrity: bool = True) -> None:
    """Raise :class:`RunEnvironmentError` unless ``path`` is absent or a sound SQLite file.

    An empty file (a truncated or replaced database) is refused, never silently started
    anew over existing work; so are a symbolic link, a non-SQLite file and, with
    ``integrity``, a database whose pages fail ``PRAGMA quick_check``. For
    :meth:`Store.open <mlip_autopipec.lifecycle.store.Store.open>` and the run's start.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunEnvironmentError(f"{path}: {_UNUSABLE}: cannot read it ({exc.strerror})") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise RunEnvironmentError(f"{path}: {_UNUSABLE}: not a regular file (a link?); {_RESTORE}")
    if st.st_size == 0:
        raise RunEnvironmentError(
            f"{path}: {_UNUSABLE}: it is empty (0 bytes: truncated or "
            f"replaced), so its labels are not in it; {_RESTORE}"
        )
    try:
        header = read_regular_file(path, limit=len(SQLITE_HEADER))
    except OSError as exc:
        raise RunEnvironmentError(f"{path}: {_UNUSABLE}: cannot read it ({exc.strerror})") from exc
    if header != SQLITE_HEADER:
        raise RunEnvironmentError(f"{path}: {_UNUSABLE}: not SQLite (damaged?); {_RESTORE}")
    if not integrity:
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise RunEnvironmentError(
            f"{path}: {_UNUSABLE}: damaged ({'; '.join(problems)[:200]}); {_RESTORE}"
        )


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
    try:
        recipe_bytes = read_regular_file(recipe.path)
    except OSError as exc:
        raise UsageError(
            f"{recipe.path}: {exc.strerror}; a run copies its recipe into the run directory, "
            "so give a recipe file (not a pipe or <(...))"
        ) from exc
    if run_dir.is_dir() and not os.access(run_dir, os.W_OK):
        raise RunEnvironmentError(
            f"{run_dir}: the run directory is not writable (read-only file system or "
            "permissions); a run records every move there. 'autopipec status' still reads it"
        )
    if not fresh:
        check_database(run_dir / DB_NAME)
    if fresh and run_dir.exists() and any(run_dir.iterdir()):
        # A live runner would keep writing into the moved directory: refuse (RunLockedError).
        with RunLock(run_dir):
            pass
        moved = _move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Held while comparing and writing, so that a second runner (refused by the lock anyway)
    # cannot overwrite the recipe record of a live run first.
    with RunLock(run_dir):
        _check_and_record(run_dir, recipe, recipe_bytes)
    return moved


def _check_and_record(run_dir: Path, recipe: RecipeLike, recipe_bytes: bytes) -> None:
    data_path = run_dir / RECIPE_DATA
    if data_path.is_symlink():
        raise UsageError(f"{data_path}: is a symbolic link, not the run's recipe record")
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
    if not (run_dir / DB_NAME).exists() and _has_attempts(run_dir):
        raise RunEnvironmentError(
            f"{run_dir / DB_NAME}: the run database is missing but {run_dir / 'structures'} "
            f"holds attempts; {_RESTORE}"
        )
    # replaces a planted link at these names instead of writing through it
    atomic_write(run_dir / RECIPE_COPY, recipe_bytes)
    atomic_write_json(data_path, recipe.data, default=str)


def _has_attempts(run_dir: Path) -> bool:
    structures = run_dir / "structures"
    return structures.is_dir() and any(structures.glob("*/attempt-*"))
