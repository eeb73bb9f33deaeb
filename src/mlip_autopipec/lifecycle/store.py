"""The run's store: one SQLite database (WAL mode) at ``RUN_DIR/autopipec.sqlite``.

Tables: ``structures`` (content hash, source, origin, iteration, parent potential, gamma,
atoms as ASE JSON, state, failure reason), ``transitions`` (every move, in order),
``attempts`` (every pw.x attempt as ``AttemptResult.to_dict()`` JSON plus indexed columns),
``labels`` (energy, free energy, forces, stress in ASE units; theory key, theory, magnetic
moments), ``potentials`` (iteration, trainer settings, fit folder) and ``potential_members``
(which structures went into which fit, train or test), ``loop`` (one row per stage run:
iteration, stage, started, finished) and ``meta`` (``schema_version``,
``current_potential``). The schema is versioned: :mod:`mlip_autopipec.lifecycle.migrations`
upgrades an older database in place when it is opened. Paths are relative to the run
directory.

The store is the one record of the current potential (:meth:`Store.current_potential`),
set in the transaction that records the potential and its members; files such as
``trainer/current.json`` are evidence only.

The runner is the only writer. Every state change goes through :meth:`Store.apply_transition`
or :meth:`Store.bulk_transition`, which write the state, the log row and the payload in one
transaction, so a SIGKILL leaves either the whole move or none of it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
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
from mlip_autopipec.lifecycle import migrations
from mlip_autopipec.lifecycle.machine import (
    STATES,
    IllegalTransitionError,
    allowed_sources,
    check_bulk_move,
    destination,
)

DB_NAME = "autopipec.sqlite"
SCHEMA_VERSION = migrations.LATEST

#: Decimals kept when hashing positions/cell (Å) and magnetic moments: below any physical
#: difference, above the noise of a text round trip.
HASH_DECIMALS = 6

#: The version-1 tables. A new database starts as version 1 and goes through every
#: migration, so a fresh run and a migrated one have the same schema by construction.
_SCHEMA_V1 = """
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


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _check_database(path: Path) -> None:
    # The runtime helper's integrity check of an existing run database, when present.
    try:
        rundir = importlib.import_module("mlip_autopipec.lifecycle.rundir")
    except ImportError:  # pragma: no cover - part of the package
        return
    check = getattr(rundir, "check_database", None)
    if check is not None:
        check(path)


def _initialise(conn: sqlite3.Connection) -> None:
    """WAL mode and the version-1 schema (both idempotent; WAL is persistent in the file,
    so readers such as ``status`` need not set it again)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA_V1)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_database(path: Path) -> None:
    """Make the store at ``path`` whole or not at all.

    A plain ``sqlite3.connect`` leaves an empty file until the schema commits; a run
    killed in that moment (seen: SIGKILL of the group right after the start) left a
    0-byte database that every rerun refuses as truncated. The schema is written to a
    private file in the same directory and hard-linked into place (no overwrite: a
    store another process made first wins), so the path holds nothing or a full store.
    Leftovers of a creation killed earlier are removed.
    """
    for stale in path.parent.glob(f".{path.name}.*.new*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None, timeout=30.0)
        try:
            _initialise(conn)
            migrations.migrate(conn, tmp, backup=False)
        finally:
            conn.close()  # checkpoints the WAL into the file
        # on disk before it has the name, and the name on disk: a power cut then leaves no
        # store or a whole one, as synchronous=NORMAL promises for the commits before it
        _fsync(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        _fsync(path.parent)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


#: One structure to add: (atoms, source) or (atoms, source, origin) or
#: (atoms, source, origin, gamma); origin None means "built from the source".
StructureItem = tuple[Any, ...]


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
        existed = path.is_file()
        if existed:
            _check_database(path)
        conn: sqlite3.Connection | None = None
        try:
            if create and not existed:
                _create_database(path)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            if create:
                _initialise(conn)
            # NORMAL in WAL mode survives a killed process (the OS keeps the pages); only a
            # power cut can lose the last commits, never corrupt the database.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrations.migrate(conn, path, backup=existed)
        except UsageError:
            if conn is not None:
                conn.close()
            raise
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
    def add_structure(
        self,
        atoms: Atoms,
        source: str,
        origin: dict[str, Any] | None = None,
        iteration: int = 0,
        parent_potential: int | None = None,
        gamma: float | None = None,
        *,
        state: str = "pending",
    ) -> int:
        """Add one structure (idempotent by :func:`content_hash`); returns its id.

        ``origin`` says where it came from (JSON-able; default: built from ``source`` by
        :func:`~mlip_autopipec.lifecycle.migrations.origin_from_source`), ``iteration``
        the loop iteration that made it (0 = the recipe's seed), ``parent_potential`` the
        potential that proposed it, ``gamma`` its max extrapolation grade at selection.
        """
        return self.add_structures(
            [(atoms, source, origin, gamma)],
            iteration=iteration,
            parent_potential=parent_potential,
            state=state,
        )[0]

    def add_structures(
        self,
        items: Iterable[StructureItem],
        *,
        iteration: int = 0,
        parent_potential: int | None = None,
        state: str = "pending",
    ) -> list[int]:
        """Add many structures in one transaction; returns their ids in order.

        ``items`` are ``(atoms, source)``, ``(atoms, source, origin)`` or ``(atoms,
        source, origin, gamma)`` (see :meth:`add_structure`); new structures start in
        ``state``. A structure already in the store (same content hash) keeps its id,
        state, provenance and labels, so rerunning a recipe with structures appended only
        adds the new ones.
        """
        if state not in STATES:
            raise IllegalTransitionError(f"unknown state {state!r}")
        rows = [(*item, None, None)[:4] for item in items]
        hashes = [content_hash(r[0]) for r in rows]
        now = time.time()
        with self.transaction() as conn:
            known = dict(conn.execute("SELECT hash, id FROM structures").fetchall())
            ids: list[int] = []
            for (atoms, source, origin, gamma), digest in zip(rows, hashes, strict=True):
                if digest not in known:
                    if origin is None:
                        origin = migrations.origin_from_source(str(source))
                    cur = conn.execute(
                        "INSERT INTO structures(hash, source, origin, iteration,"
                        " parent_potential, gamma, formula, natoms, atoms, state,"
                        " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            digest,
                            str(source),
                            _json_or_none(origin),
                            int(iteration),
                            None if parent_potential is None else int(parent_potential),
                            None if gamma is None else float(gamma),
                            atoms.get_chemical_formula(),
                            len(atoms),
                            _encode_atoms(atoms),
                            state,
                            now,
                            now,
                        ),
                    )
                    assert cur.lastrowid is not None
                    known[digest] = cur.lastrowid
                ids.append(int(known[digest]))
        return ids

    def _structure_column(self, structure_id: int, column: str) -> Any:
        # column is one of our own names, never user input
        row = self._conn.execute(
            f"SELECT {column} FROM structures WHERE id = ?", (structure_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no structure {structure_id}")
        return row[0]

    def atoms_of(self, structure_id: int) -> Atoms:
        """The stored input structure (no calculator)."""
        return _decode_atoms(self._structure_column(structure_id, "atoms"))

    def state_of(self, structure_id: int) -> str:
        """Current state of one structure."""
        return str(self._structure_column(structure_id, "state"))

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
        (``"class: message"`` or None), energy_ev (None unless labelled), origin,
        iteration, parent_potential, gamma and theory_key (of the label)."""
        rows = self._conn.execute(
            "SELECT s.id, s.source, s.formula, s.natoms, s.state, s.n_attempts,"
            " s.failure_class, s.failure_message, l.energy, s.origin, s.iteration,"
            " s.parent_potential, s.gamma, l.theory_key"
            " FROM structures s LEFT JOIN labels l ON l.structure_id = s.id ORDER BY s.id"
        ).fetchall()
        out = []
        for row in rows:
            sid, source, formula, natoms, state, n_att, fclass, fmsg, energy = row[:9]
            origin, iteration, parent, gamma, theory_key = row[9:]
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
                    "origin": _loads(origin),
                    "iteration": int(iteration),
                    "parent_potential": None if parent is None else int(parent),
                    "gamma": None if gamma is None else float(gamma),
                    "theory_key": theory_key,
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
                # getattr: results from before the theory/magmoms fields still store
                conn.execute(
                    "INSERT INTO labels(structure_id, attempt_number, energy, free_energy,"
                    " forces, stress, theory_key, theory, magmoms, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        structure_id,
                        int(label.number),
                        float(label.energy),
                        None if label.free_energy is None else float(label.free_energy),
                        _json_array(label.forces),
                        _json_array(label.stress),
                        getattr(label, "theory_key", None),
                        _json_or_none(getattr(label, "theory", None)),
                        _json_or_none(getattr(label, "magmoms", None)),
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

    # -- pruning: structures no longer in the recipe -----------------------------------
    def pruned_ids(self) -> set[int]:
        """Structures ``run --prune`` left out of labelling and training: a ``prune`` row in
        the transitions log not followed by a ``restore``. Pruning marks, never deletes:
        state, attempts and label stay as they are."""
        return {sid for sid, trigger in self._last_marks().items() if trigger == "prune"}

    def restored_ids(self) -> set[int]:
        """Structures pruned once and restored since (back in the recipe)."""
        return {sid for sid, trigger in self._last_marks().items() if trigger == "restore"}

    def _last_marks(self) -> dict[int, str]:
        last: dict[int, str] = {}
        for sid, trigger in self._conn.execute(
            "SELECT structure_id, trigger FROM transitions"
            " WHERE trigger IN ('prune', 'restore') ORDER BY id"
        ):
            last[int(sid)] = str(trigger)
        return last

    def mark_pruned(self, ids: Iterable[int], *, restore: bool = False, note: str = "") -> int:
        """Log a ``prune`` (or with ``restore`` a ``restore``) mark for each of ``ids`` in one
        transaction; returns how many were marked. A mark is a transitions-log row whose
        source and destination are the structure's state: the state does not change."""
        ids = sorted({int(i) for i in ids})
        if not ids:
            return 0
        trigger = "restore" if restore else "prune"
        now = time.time()
        with self.transaction() as conn:
            for sid in ids:
                conn.execute(
                    "INSERT INTO transitions(structure_id, trigger, source, dest, time, note)"
                    " SELECT id, ?, state, state, ?, ? FROM structures WHERE id = ?",
                    (trigger, now, note, sid),
                )
        return len(ids)

    # -- labels -------------------------------------------------------------------------
    def labelled_atoms(self, state: Sequence[str] = ("labelled", "trained")) -> list[Atoms]:
        """Labelled structures as ASE Atoms with a SinglePointCalculator (energy,
        free_energy, forces, stress; eV, eV/Å, eV/Å^3), ``info["structure_id"]``,
        ``info["source"]`` and, when the label recorded one, ``info["theory_key"]``."""
        marks = ",".join("?" * len(state))
        rows = self._conn.execute(
            "SELECT s.id, s.source, s.atoms, l.energy, l.free_energy, l.forces, l.stress,"
            " l.theory_key FROM structures s JOIN labels l ON l.structure_id = s.id"
            f" WHERE s.state IN ({marks}) ORDER BY s.id",
            tuple(state),
        ).fetchall()
        out = []
        for sid, source, atoms_text, energy, free_energy, forces, stress, key in rows:
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
            if key is not None:
                atoms.info["theory_key"] = key
            out.append(atoms)
        return out

    def label_energies(self) -> dict[int, float]:
        """structure id -> labelled total energy (eV)."""
        return {
            int(sid): float(e)
            for sid, e in self._conn.execute("SELECT structure_id, energy FROM labels")
        }

    def label_magmoms(self) -> dict[int, list[float]]:
        """structure id -> final per-site magnetic moments (μB) of its label, for labels
        that recorded them (spin-polarised pw.x runs)."""
        out: dict[int, list[float]] = {}
        for sid, text in self._conn.execute(
            "SELECT structure_id, magmoms FROM labels WHERE magmoms IS NOT NULL"
        ):
            value = json.loads(text)
            if isinstance(value, list) and value:
                out[int(sid)] = [float(m) for m in value]
        return out

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
        iteration: int = 0,
        settings: dict[str, Any] | None = None,
        fit_dir: Path | str | None = None,
    ) -> int:
        """Record a fitted potential, which structures went into it, and make it the
        current potential, all in one transaction; returns its id.

        ``metrics`` should hold ``rmse_energy_mev_per_atom`` and ``rmse_forces_mev_per_ang``
        as ``{"train": x, "test": y}`` (what ``status`` shows). ``path`` (the ``.yace``)
        and ``fit_dir`` are relative to the run directory (absolute paths inside it are
        made relative); ``fit_dir`` defaults to the folder of ``path``. ``settings``: the
        trainer settings, their fingerprint and the baseline the fit used.
        """
        rel_path = migrations.relative_to_run(str(path), self.run_dir) or str(path)
        rel_fit = migrations.relative_to_run(
            str(fit_dir) if fit_dir is not None else str(Path(rel_path).parent), self.run_dir
        )
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO potentials(path, metrics, baseline, pacemaker_version, created,"
                " iteration, settings, fit_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rel_path,
                    json.dumps(metrics, default=float),
                    json.dumps(baseline, default=str),
                    pacemaker_version,
                    time.time(),
                    int(iteration),
                    _json_or_none(settings),
                    rel_fit,
                ),
            )
            pid = cur.lastrowid
            assert pid is not None
            conn.executemany(
                "INSERT INTO potential_members(potential_id, structure_id, split) VALUES (?, ?, ?)",
                [(pid, int(i), "train") for i in train_ids]
                + [(pid, int(i), "test") for i in test_ids],
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('current_potential', ?)",
                (str(int(pid)),),
            )
        return int(pid)

    def mark_trained(self, ids: Sequence[int], potential_id: int) -> int:
        """Move labelled structures that went into ``potential_id`` to ``trained``."""
        return self.bulk_transition(ids, "train", note=f"potential {potential_id}")

    def current_potential(self) -> dict[str, Any] | None:
        """THE current potential of the run (what ``status``, the report and
        ``load_calculator`` use): id, path and fit_dir (relative to the run directory),
        metrics, baseline, pacemaker_version, created, iteration, settings (None when
        fitted before schema v2), n_train, n_test; None when nothing was fitted yet."""
        row = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'current_potential'"
        ).fetchone()
        return None if row is None else self.potential(int(row[0]))

    def latest_potential(self) -> dict[str, Any] | None:
        """The current potential (:meth:`current_potential`; the name of schema v1)."""
        return self.current_potential()

    def potential(self, potential_id: int) -> dict[str, Any] | None:
        """One recorded potential (see :meth:`current_potential`), None if unknown."""
        row = self._conn.execute(
            "SELECT id, path, metrics, baseline, pacemaker_version, created, iteration,"
            " settings, fit_dir FROM potentials WHERE id = ?",
            (potential_id,),
        ).fetchone()
        if row is None:
            return None
        pid, path, metrics, baseline, version, created, iteration, settings, fit_dir = row
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
            "fit_dir": fit_dir if fit_dir is not None else str(Path(path).parent),
            "metrics": json.loads(metrics),
            "baseline": json.loads(baseline),
            "pacemaker_version": version,
            "created": float(created),
            "iteration": int(iteration),
            "settings": _loads(settings),
            "n_train": int(split_counts.get("train", 0)),
            "n_test": int(split_counts.get("test", 0)),
        }

    def potential_members(self, potential_id: int) -> list[int]:
        """Ids of the structures that went into ``potential_id`` (train and test)."""
        rows = self._conn.execute(
            "SELECT structure_id FROM potential_members WHERE potential_id = ?"
            " ORDER BY structure_id",
            (int(potential_id),),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def potential_ids(self) -> list[int]:
        """Ids of every recorded potential, oldest first."""
        return [int(r[0]) for r in self._conn.execute("SELECT id FROM potentials ORDER BY id")]

    # -- the loop -------------------------------------------------------------------------
    def begin_stage(self, iteration: int, stage: str) -> int:
        """Record that ``stage`` of ``iteration`` started; returns the row id."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO loop(iteration, stage, started) VALUES (?, ?, ?)",
                (int(iteration), stage, time.time()),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def finish_stage(self, row_id: int, status: int, details: dict[str, Any]) -> None:
        """Record that the stage of row ``row_id`` finished with ``status``."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE loop SET finished = ?, status = ?, details = ? WHERE id = ?",
                (time.time(), int(status), _json_or_none(details), int(row_id)),
            )

    def loop_rows(self) -> list[dict[str, Any]]:
        """Every stage run, oldest first: id, iteration, stage, started, finished (None
        while running or killed), status, details."""
        rows = self._conn.execute(
            "SELECT id, iteration, stage, started, finished, status, details FROM loop ORDER BY id"
        ).fetchall()
        return [
            {
                "id": int(rid),
                "iteration": int(it),
                "stage": stage,
                "started": float(started),
                "finished": None if finished is None else float(finished),
                "status": None if status is None else int(status),
                "details": _loads(details),
            }
            for rid, it, stage, started, finished, status, details in rows
        ]

    def loop_state(self) -> dict[str, Any] | None:
        """The last stage run (see :meth:`loop_rows`), None before the first."""
        rows = self._conn.execute("SELECT MAX(id) FROM loop").fetchone()
        if rows[0] is None:
            return None
        return next(r for r in self.loop_rows() if r["id"] == int(rows[0]))

    def transitions_of(self, structure_id: int) -> list[tuple[str, str, str]]:
        """The logged moves of a structure as (trigger, source, dest), oldest first."""
        rows = self._conn.execute(
            "SELECT trigger, source, dest FROM transitions WHERE structure_id = ? ORDER BY id",
            (structure_id,),
        ).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]
