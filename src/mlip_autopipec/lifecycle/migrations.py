"""Store schema versions and the migrations between them.

``meta.schema_version`` says which version a database has. :data:`MIGRATIONS` is the
ordered list of steps ``(version it produces, function)``; :func:`migrate` applies every
step above the stored version in ONE transaction (a kill leaves the old version whole) after
copying the database to ``autopipec.sqlite.v<old>.bak`` beside it.

Version 1 (mlip-autopipec up to 092af6a): structures, transitions, attempts, labels,
potentials, potential_members. Version 2 adds provenance and the loop:

- ``structures.origin`` (JSON: where it came from), ``iteration`` (0 = the recipe's seed),
  ``parent_potential`` (the potential that proposed it), ``gamma`` (its max extrapolation
  grade at selection);
- ``labels.theory_key``, ``theory`` (JSON), ``magmoms`` (JSON);
- ``potentials.iteration``, ``settings`` (JSON: trainer settings, fingerprint, baseline),
  ``fit_dir`` (relative to the run directory);
- ``meta.current_potential``: the one record of the current potential;
- table ``loop``: one row per stage run (iteration, stage, started, finished, status).

Stored paths become relative to the run directory.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlip_autopipec.errors import UsageError

#: The version this code writes.
LATEST = 2

Migration = Callable[[sqlite3.Connection, Path], None]

_BULK_RE = re.compile(r"^bulk\[(\d+)\]")
_FILE_RE = re.compile(r"^file (.+)@(\d+)$")
_PARAM_RE = re.compile(r"\b(strain|rattle|supercell)=(\S+)")


def origin_from_source(source: str, entry: int | None = None) -> dict[str, Any]:
    """The origin record of a recipe structure from its readable source string.

    ``bulk[0] Si diamond strain=+0.010 rattle=2`` -> ``{"kind": "recipe", "generator":
    "bulk", "entry": 0, "strain": 0.01, "rattle": 2, "source": ...}``;
    ``file data/x.traj@3`` -> ``{"kind": "recipe", "generator": "file", "file":
    "data/x.traj", "frame": 3, ...}``. Anything else keeps only the source.
    """
    origin: dict[str, Any] = {"kind": "recipe", "source": source}
    if entry is not None:
        origin["entry"] = entry
    if m := _BULK_RE.match(source):
        origin.update(generator="bulk", entry=int(m.group(1)))
        for key, value in _PARAM_RE.findall(source):
            if key == "strain":
                origin[key] = float(value)
            elif key == "rattle":
                origin[key] = int(value)
            else:
                origin[key] = value
    elif m := _FILE_RE.match(source):
        origin.update(generator="file", file=m.group(1), frame=int(m.group(2)))
    return origin


def relative_to_run(path: str | None, run_dir: Path) -> str | None:
    """``path`` relative to ``run_dir``: directly when it lies inside, else the longest
    tail of it that exists inside ``run_dir`` (the directory was moved); else unchanged."""
    if not path:
        return path
    p = Path(path)
    if not p.is_absolute():
        return path
    root = run_dir.resolve()
    try:
        resolved = p.resolve()
        if resolved.is_relative_to(root):
            return os.path.relpath(resolved, root)
        return _tail(p, root)
    except (OSError, ValueError):
        return path


def _tail(p: Path, root: Path) -> str:
    parts = p.parts[1:]
    for k in range(len(parts)):
        candidate = Path(*parts[k:])
        if (root / candidate).exists():
            return str(candidate)
    return str(p)


_V2_DDL = (
    "ALTER TABLE structures ADD COLUMN origin TEXT",
    "ALTER TABLE structures ADD COLUMN iteration INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE structures ADD COLUMN parent_potential INTEGER REFERENCES potentials(id)",
    "ALTER TABLE structures ADD COLUMN gamma REAL",
    "CREATE INDEX IF NOT EXISTS structures_iteration ON structures(iteration)",
    "ALTER TABLE labels ADD COLUMN theory_key TEXT",
    "ALTER TABLE labels ADD COLUMN theory TEXT",
    "ALTER TABLE labels ADD COLUMN magmoms TEXT",
    "ALTER TABLE potentials ADD COLUMN iteration INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE potentials ADD COLUMN settings TEXT",
    "ALTER TABLE potentials ADD COLUMN fit_dir TEXT",
    """CREATE TABLE IF NOT EXISTS loop (
        id INTEGER PRIMARY KEY,
        iteration INTEGER NOT NULL,
        stage TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        status INTEGER,
        details TEXT
    )""",
)


def _v1_to_v2(conn: sqlite3.Connection, run_dir: Path) -> None:
    # One statement at a time: executescript() would COMMIT the open transaction first.
    for statement in _V2_DDL:
        conn.execute(statement)
    rows = conn.execute("SELECT id, source FROM structures").fetchall()
    conn.executemany(
        "UPDATE structures SET origin = ? WHERE id = ?",
        [(json.dumps(origin_from_source(str(src))), sid) for sid, src in rows],
    )
    for pid, path in conn.execute("SELECT id, path FROM potentials").fetchall():
        rel = relative_to_run(str(path), run_dir) or str(path)
        conn.execute(
            "UPDATE potentials SET path = ?, fit_dir = ? WHERE id = ?",
            (rel, str(Path(rel).parent), pid),
        )
    for aid, adir in conn.execute("SELECT id, attempt_dir FROM attempts").fetchall():
        rel_dir = relative_to_run(adir, run_dir)
        if rel_dir != adir:
            conn.execute("UPDATE attempts SET attempt_dir = ? WHERE id = ?", (rel_dir, aid))
    # v1 had no separate record: the newest potential row was what status showed.
    newest = conn.execute("SELECT MAX(id) FROM potentials").fetchone()[0]
    if newest is not None:
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('current_potential', ?)",
            (str(int(newest)),),
        )


#: Ordered steps: (the version a step produces, the step).
MIGRATIONS: tuple[tuple[int, Migration], ...] = ((2, _v1_to_v2),)


def stored_version(conn: sqlite3.Connection) -> int:
    """``meta.schema_version`` of an open database (raises DatabaseError when absent)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("no schema version recorded")
    return int(row[0])


def backup_path(db_path: Path, version: int) -> Path:
    """Where the copy of a version-``version`` database goes before it is migrated."""
    return db_path.with_name(f"{db_path.name}.v{version}.bak")


def migrate(conn: sqlite3.Connection, db_path: Path, *, backup: bool = True) -> int | None:
    """Bring the database to :data:`LATEST`; returns the version it had (None: nothing
    to do). ``conn`` must be in autocommit mode (``isolation_level=None``).

    With ``backup`` the database is first copied (SQLite's online backup, so a WAL is
    included) to :func:`backup_path`, unless that copy exists already.
    """
    version = stored_version(conn)
    if version > LATEST:
        raise UsageError(
            f"{db_path}: written by a newer mlip-autopipec (store schema {version}, this "
            f"version reads up to {LATEST}); upgrade mlip-autopipec"
        )
    if version == LATEST:
        return None
    if backup:
        target = backup_path(db_path, version)
        if not target.exists():
            dst = sqlite3.connect(target)
            try:
                conn.backup(dst)
            finally:
                dst.close()
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = stored_version(conn)  # another process may have migrated meanwhile
        for target_version, step in MIGRATIONS:
            if target_version > version:
                step(conn, db_path.parent)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(LATEST),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return version
