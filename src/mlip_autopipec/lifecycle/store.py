"""The run's store: one SQLite database (WAL mode) at ``RUN_DIR/autopipec.sqlite``.

Tables: ``structures`` (content hash, source, atoms as ASE JSON, state, failure reason),
``transitions`` (every move, in order), ``attempts`` (every pw.x attempt as
``AttemptResult.to_dict()`` JSON plus indexed columns), ``labels`` (energy, free energy,
forces, stress in ASE units), ``potentials`` and ``potential_members`` (which structures
went into which fit, train or test).

The runner is the only writer. Every state change goes through :meth:`Store.apply_transition`
or :meth:`Store.bulk_transition`, which write the state, the log row and the payload in one
transaction, so a SIGKILL leaves either the whole move or none of it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import jsonio

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.machine import (
    STATES,
    IllegalTransitionError,
    allowed_sources,
    check_bulk_move,
    destination,
)

DB_NAME = "autopipec.sqlite"
SCHEMA_VERSION = 1

#: Decimals kept when hashing positions/cell (Å) and magnetic moments: below any physical
#: difference, above the noise of a text round trip.
HASH_DECIMALS = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS structures (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    formula TEXT NOT NULL,
    natoms INTEGER NOT NULL,
    atoms TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    n_attempts INTEGER NOT NULL DEFAULT 0,
    failure_class TEXT,
    failure_message TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS structures_state ON structures(state);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    structure_id INTEGER NOT NULL REFERENCES structures(id),
    trigger TEXT NOT NULL,
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    time REAL NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS transitions_structure ON transitions(structure_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    structure_id INTEGER NOT NULL REFERENCES structures(id),
    number INTEGER NOT NULL,
    failure_class TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    energy REAL,
    wall_time REAL,
    attempt_dir TEXT,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (structure_id, number)
);
CREATE TABLE IF NOT EXISTS labels (
    structure_id INTEGER PRIMARY KEY REFERENCES structures(id),
    attempt_number INTEGER NOT NULL,
    energy REAL NOT NULL,
    free_energy REAL,
    forces TEXT NOT NULL,
    stress TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS potentials (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    baseline TEXT NOT NULL,
    pacemaker_version TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS potential_members (
    potential_id INTEGER NOT NULL REFERENCES potentials(id),
    structure_id INTEGER NOT NULL REFERENCES structures(id),
    split TEXT NOT NULL CHECK (split IN ('train', 'test')),
    PRIMARY KEY (potential_id, structure_id)
);
"""


def content_hash(atoms: Atoms) -> str:
    """A stable hash of what defines a DFT calculation's geometry.

    Atomic numbers, positions, cell, pbc and initial magnetic moments, rounded to
    :data:`HASH_DECIMALS` (``+ 0.0`` folds ``-0.0`` into ``0.0``).
    """
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for arr in (atoms.positions, atoms.cell.array, atoms.get_initial_magnetic_moments()):
        rounded = np.round(np.asarray(arr, dtype=np.float64), HASH_DECIMALS) + 0.0
        h.update(rounded.tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return h.hexdigest()


def _encode_atoms(atoms: Atoms) -> str:
    # copy() drops the calculator: the store keeps inputs; labels live in their own table.
    return str(jsonio.encode(atoms.copy()))


def _decode_atoms(text: str) -> Atoms:
    atoms = jsonio.decode(text)
    if not isinstance(atoms, Atoms):  # pragma: no cover - only if the DB was edited by hand
        raise TypeError("stored structure is not an ASE Atoms object")
    return atoms


def _json_array(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(np.asarray(value, dtype=float).tolist())


class Store:
    """The SQLite store of one run directory (use :meth:`open`)."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection):
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME
        self._conn = conn

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: Path | str, *, create: bool = True) -> Store:
        """Open (and with ``create`` make) the store of ``run_dir``.

        With ``create=False`` a directory without a store raises :class:`UsageError`.
        """
        run_dir = Path(run_dir)
        path = run_dir / DB_NAME
        if not create and not path.is_file():
            raise UsageError(
                f"{run_dir}: not a run directory (no {DB_NAME}); "
                "start one with 'autopipec run RECIPE'"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            if create:
                # WAL is persistent in the file: readers (status) need not set it again.
                conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (the OS keeps the pages); only a
            # power cut can lose the last commits, never corrupt the database.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            if create:
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                if row.fetchone() is None:
                    raise sqlite3.DatabaseError("no schema version recorded")
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise UsageError(
                f"{path}: not a usable run database ({exc}); "
                "was it written by autopipec? Use another --run-dir or --fresh"
            ) from exc
        return cls(run_dir, conn)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back if the body raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- structures ---------------------------------------------------------------------
    def add_structure(self, atoms: Atoms, source: str) -> int:
        """Add one structure (idempotent by :func:`content_hash`); returns its id."""
        return self.add_structures([(atoms, source)])[0]

    def add_structures(self, items: Iterable[tuple[Atoms, str]]) -> list[int]:
        """Add many structures in one transaction; returns their ids in order.

        A structure already in the store (same content hash) keeps its id, state and
        labels, so rerunning a recipe with structures appended only adds the new ones.
        """
        items = list(items)
        hashes = [content_hash(a) for a, _ in items]
        now = time.time()
        with self.transaction() as conn:
            known = dict(conn.execute("SELECT hash, id FROM structures").fetchall())
            ids: list[int] = []
            for (atoms, source), digest in zip(items, hashes, strict=True):
                if digest not in known:
                    cur = conn.execute(
                        "INSERT INTO structures(hash, source, formula, natoms, atoms, state,"
                        " created, updated) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                        (
                            digest,
                            source,
                            atoms.get_chemical_formula(),
                            len(atoms),
                            _encode_atoms(atoms),
                            now,
                            now,
                        ),
                    )
                    assert cur.lastrowid is not None
                    known[digest] = cur.lastrowid
                ids.append(int(known[digest]))
        return ids

    def atoms_of(self, structure_id: int) -> Atoms:
        """The stored input structure (no calculator)."""
        row = self._conn.execute(
            "SELECT atoms FROM structures WHERE id = ?", (structure_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no structure {structure_id}")
        return _decode_atoms(row[0])

    def state_of(self, structure_id: int) -> str:
        """Current state of one structure."""
        row = self._conn.execute(
            "SELECT state FROM structures WHERE id = ?", (structure_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no structure {structure_id}")
        return str(row[0])

    def ids_in_state(self, *states: str) -> list[int]:
        """Ids of structures in any of ``states``, ascending."""
        marks = ",".join("?" * len(states))
        rows = self._conn.execute(
            f"SELECT id FROM structures WHERE state IN ({marks}) ORDER BY id", states
        ).fetchall()
        return [int(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of structures per state (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._conn.execute("SELECT state, COUNT(*) FROM structures GROUP BY state"):
            counts[str(state)] = int(n)
        return counts

    def total_attempts(self) -> int:
        """pw.x attempts recorded over the whole run (all resumes)."""
        return int(self._conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def structure_rows(self) -> list[dict[str, Any]]:
        """One dict per structure: id, source, formula, natoms, state, attempts, failure
        (``"class: message"`` or None) and energy_ev (None unless labelled)."""
        rows = self._conn.execute(
            "SELECT s.id, s.source, s.formula, s.natoms, s.state, s.n_attempts,"
            " s.failure_class, s.failure_message, l.energy"
            " FROM structures s LEFT JOIN labels l ON l.structure_id = s.id ORDER BY s.id"
        ).fetchall()
        out = []
        for sid, source, formula, natoms, state, n_att, fclass, fmsg, energy in rows:
            failure = None
            if fclass:
                failure = f"{fclass}: {fmsg}" if fmsg else str(fclass)
            out.append(
                {
                    "id": int(sid),
                    "source": source,
                    "formula": formula,
                    "natoms": int(natoms),
                    "state": state,
                    "attempts": int(n_att),
                    "failure": failure,
                    "energy_ev": None if energy is None else float(energy),
                }
            )
        return out

    # -- attempts -----------------------------------------------------------------------
    def attempts_of(self, structure_id: int) -> list[dict[str, Any]]:
        """Recorded attempts of a structure as ``AttemptResult.to_dict()`` dicts, in order."""
        rows = self._conn.execute(
            "SELECT result FROM attempts WHERE structure_id = ? ORDER BY number",
            (structure_id,),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def attempt_numbers(self, structure_id: int) -> set[int]:
        """Numbers of the recorded attempts of a structure."""
        rows = self._conn.execute(
            "SELECT number FROM attempts WHERE structure_id = ?", (structure_id,)
        ).fetchall()
        return {int(r[0]) for r in rows}

    # -- transitions --------------------------------------------------------------------
    def apply_transition(
        self,
        structure_id: int,
        trigger: str,
        source: str,
        dest: str,
        *,
        attempt: Any = None,
        label: Any = None,
        failure: tuple[str, str] | None = None,
        note: str = "",
    ) -> None:
        """Write one move and its payload in one transaction.

        ``attempt`` is an AttemptResult (stored via ``to_dict()``), ``label`` the converged
        result whose energy/forces/stress become the label, ``failure`` the quarantine
        reason. The stored state must equal ``source`` (the in-memory model and the
        database never disagree silently).
        """
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE structures SET state = ?, updated = ? WHERE id = ? AND state = ?",
                (dest, now, structure_id, source),
            )
            if cur.rowcount != 1:
                raise IllegalTransitionError(
                    f"structure {structure_id}: stored state is not {source!r} "
                    f"(cannot {trigger} to {dest!r})"
                )
            conn.execute(
                "INSERT INTO transitions(structure_id, trigger, source, dest, time, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (structure_id, trigger, source, dest, now, note),
            )
            if attempt is not None:
                self._insert_attempt(conn, structure_id, attempt, now)
            if label is not None:
                conn.execute(
                    "INSERT INTO labels(structure_id, attempt_number, energy, free_energy,"
                    " forces, stress, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        structure_id,
                        int(label.number),
                        float(label.energy),
                        None if label.free_energy is None else float(label.free_energy),
                        _json_array(label.forces),
                        _json_array(label.stress),
                        now,
                    ),
                )
            if failure is not None:
                conn.execute(
                    "UPDATE structures SET failure_class = ?, failure_message = ? WHERE id = ?",
                    (failure[0], failure[1], structure_id),
                )

    @staticmethod
    def _insert_attempt(
        conn: sqlite3.Connection, structure_id: int, result: Any, now: float
    ) -> None:
        data = result.to_dict()
        energy = getattr(result, "energy", None)
        conn.execute(
            "INSERT INTO attempts(structure_id, number, failure_class, message, energy,"
            " wall_time, attempt_dir, result, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                structure_id,
                int(result.number),
                str(result.failure_class),
                str(result.message or ""),
                None if energy is None else float(energy),
                getattr(result, "wall_time", None),
                str(getattr(result, "attempt_dir", "") or ""),
                json.dumps(data),
                now,
            ),
        )
        conn.execute(
            "UPDATE structures SET n_attempts = n_attempts + 1 WHERE id = ?", (structure_id,)
        )

    def bulk_transition(self, ids: Sequence[int], trigger: str, note: str = "") -> int:
        """Apply ``trigger`` to many structures in one transaction (checked against the
        lifecycle table); returns how many moved. All or nothing."""
        if not ids:
            return 0
        sources = allowed_sources(trigger)
        dest = destination(trigger)
        now = time.time()
        with self.transaction() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _ids (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM _ids")
            conn.executemany("INSERT OR IGNORE INTO _ids(id) VALUES (?)", ((i,) for i in ids))
            rows = conn.execute(
                "SELECT s.id, s.state FROM structures s JOIN _ids USING (id)"
            ).fetchall()
            if len(rows) != len(set(ids)):
                missing = sorted(set(ids) - {int(r[0]) for r in rows})
                raise IllegalTransitionError(f"no such structure(s): {missing[:10]}")
            check_bulk_move(trigger, (str(r[1]) for r in rows))
            conn.executemany(
                "INSERT INTO transitions(structure_id, trigger, source, dest, time, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                ((int(sid), trigger, state, dest, now, note) for sid, state in rows),
            )
            marks = ",".join("?" * len(sources))
            conn.execute(
                f"UPDATE structures SET state = ?, updated = ? WHERE id IN (SELECT id FROM _ids)"
                f" AND state IN ({marks})",
                (dest, now, *sorted(sources)),
            )
            conn.execute("DELETE FROM _ids")
        return len(rows)

    # -- labels -------------------------------------------------------------------------
    def labelled_atoms(self, state: Sequence[str] = ("labelled", "trained")) -> list[Atoms]:
        """Labelled structures as ASE Atoms with a SinglePointCalculator (energy,
        free_energy, forces, stress; eV, eV/Å, eV/Å^3) and ``info["structure_id"]``."""
        marks = ",".join("?" * len(state))
        rows = self._conn.execute(
            "SELECT s.id, s.source, s.atoms, l.energy, l.free_energy, l.forces, l.stress"
            " FROM structures s JOIN labels l ON l.structure_id = s.id"
            f" WHERE s.state IN ({marks}) ORDER BY s.id",
            tuple(state),
        ).fetchall()
        out = []
        for sid, source, atoms_text, energy, free_energy, forces, stress in rows:
            atoms = _decode_atoms(atoms_text)
            results: dict[str, Any] = {
                "energy": float(energy),
                "forces": np.array(json.loads(forces), dtype=float),
            }
            if free_energy is not None:
                results["free_energy"] = float(free_energy)
            if stress is not None:
                results["stress"] = np.array(json.loads(stress), dtype=float)
            atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info["structure_id"] = int(sid)
            atoms.info["source"] = source
            out.append(atoms)
        return out

    def label_energies(self) -> dict[int, float]:
        """structure id -> labelled total energy (eV)."""
        return {
            int(sid): float(e)
            for sid, e in self._conn.execute("SELECT structure_id, energy FROM labels")
        }

    # -- potentials ---------------------------------------------------------------------
    def record_potential(
        self,
        *,
        path: Path | str,
        metrics: dict[str, Any],
        baseline: dict[str, Any],
        pacemaker_version: str,
        train_ids: Sequence[int],
        test_ids: Sequence[int],
    ) -> int:
        """Record a fitted potential and which structures went into it; returns its id.

        ``metrics`` should hold ``rmse_energy_mev_per_atom`` and ``rmse_forces_mev_per_ang``
        as ``{"train": x, "test": y}`` (what ``status`` shows).
        """
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO potentials(path, metrics, baseline, pacemaker_version, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    str(path),
                    json.dumps(metrics, default=float),
                    json.dumps(baseline, default=str),
                    pacemaker_version,
                    time.time(),
                ),
            )
            pid = cur.lastrowid
            assert pid is not None
            conn.executemany(
                "INSERT INTO potential_members(potential_id, structure_id, split) VALUES (?, ?, ?)",
                [(pid, int(i), "train") for i in train_ids]
                + [(pid, int(i), "test") for i in test_ids],
            )
        return int(pid)

    def mark_trained(self, ids: Sequence[int], potential_id: int) -> int:
        """Move labelled structures that went into ``potential_id`` to ``trained``."""
        return self.bulk_transition(ids, "train", note=f"potential {potential_id}")

    def latest_potential(self) -> dict[str, Any] | None:
        """The newest potential: id, path, metrics, baseline, pacemaker_version, created,
        n_train, n_test; None when nothing was fitted yet."""
        row = self._conn.execute(
            "SELECT id, path, metrics, baseline, pacemaker_version, created"
            " FROM potentials ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        pid, path, metrics, baseline, version, created = row
        split_counts = dict(
            self._conn.execute(
                "SELECT split, COUNT(*) FROM potential_members WHERE potential_id = ?"
                " GROUP BY split",
                (pid,),
            ).fetchall()
        )
        return {
            "id": int(pid),
            "path": path,
            "metrics": json.loads(metrics),
            "baseline": json.loads(baseline),
            "pacemaker_version": version,
            "created": float(created),
            "n_train": int(split_counts.get("train", 0)),
            "n_test": int(split_counts.get("test", 0)),
        }

    def transitions_of(self, structure_id: int) -> list[tuple[str, str, str]]:
        """The logged moves of a structure as (trigger, source, dest), oldest first."""
        rows = self._conn.execute(
            "SELECT trigger, source, dest FROM transitions WHERE structure_id = ? ORDER BY id",
            (structure_id,),
        ).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]
