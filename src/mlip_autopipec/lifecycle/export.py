"""Export labelled structures for other tools (``autopipec export``)."""

from __future__ import annotations

import importlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.store import DB_NAME, Store

FORMATS = ("extxyz", "pacemaker", "asedb")
#: ``export --labels``: the labels the fit uses (default) or the run store's own.
LABELS_TRAINING = "training"
LABELS_RECORDED = "recorded"
LABEL_SETS = (LABELS_TRAINING, LABELS_RECORDED)
_DEFAULT_NAMES = {"extxyz": "labels.extxyz", "pacemaker": "labels.pkl.gz", "asedb": "labels.db"}
#: Tables ``ase.db.connect()`` creates in an SQLite file (ase/db/sqlite.py ``init_statements``).
ASE_DB_TABLES = frozenset(
    {"systems", "species", "keys", "text_key_values", "number_key_values", "information"}
)


def foreign_tables(db_path: Path | str) -> list[str]:
    """Tables in the store that ASE's database layer put there (``ase.db.connect`` on it)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    return sorted(names & ASE_DB_TABLES)


def foreign_tables_message(run_dir: Path | str) -> str | None:
    """A warning when ``ase.db.connect()`` was run on ``RUN_DIR/autopipec.sqlite``, else None.

    ASE treats any SQLite file as its own database and silently adds its tables; autopipec
    ignores them (its own tables are untouched), but whatever was written there is not part
    of the run. Store.open and ``status`` show this message.
    """
    path = Path(run_dir) / DB_NAME
    try:
        tables = foreign_tables(path) if path.is_file() else []
    except sqlite3.DatabaseError:
        return None
    if not tables:
        return None
    return (
        f"{path} also holds ASE database tables ({', '.join(tables)}): ase.db.connect() was "
        "run on the run's store. autopipec ignores them; for an ASE database of the labels "
        "use 'autopipec export RUN_DIR --format asedb' (RUN_DIR/export/labels.db)"
    )


def _extras(atoms: Atoms) -> dict[str, Any]:
    """Per-structure keys worth carrying to other tools, when the store provides them."""
    out: dict[str, Any] = {}
    for key in (
        "structure_id",
        "source",
        "theory_key",
        "pruned",
        "in_training_set",
        "relabelled_from_theory_key",
        "relabel_id",
        "relabel_state",
    ):
        value = atoms.info.get(key)
        if value is not None:
            out[key] = value
    return out


def _stored_extras(db_path: Path) -> dict[int, dict[str, Any]]:
    """structure id -> theory_key / theory / magmoms / origin, from the columns the store
    has (schema v2 adds them; a v1 store has none and this returns nothing)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out: dict[int, dict[str, Any]] = {}
    try:
        for table, wanted in (
            ("labels", ("theory_key", "theory", "magmoms")),
            ("structures", ("origin",)),
        ):
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            cols = [c for c in wanted if c in have]
            if not cols:
                continue
            sid = "structure_id" if table == "labels" else "id"
            query = f"SELECT {sid}, {', '.join(cols)} FROM {table}"  # noqa: S608 - fixed names
            for row in conn.execute(query):
                extra = out.setdefault(int(row[0]), {})
                for col, value in zip(cols, row[1:], strict=True):
                    if value is None:
                        continue
                    extra[col] = value if col == "theory_key" else json.loads(value)
    finally:
        conn.close()
    return out


def _attach(atoms: Atoms, extra: dict[str, Any]) -> None:
    for key in ("theory_key", "theory", "origin"):
        if key in extra and key not in atoms.info:
            atoms.info[key] = extra[key]
    magmoms = extra.get("magmoms")
    results = atoms.calc.results if atoms.calc is not None else None
    if results is not None and magmoms is not None and "magmoms" not in results:
        moments = np.asarray(magmoms, dtype=float)
        if moments.shape == (len(atoms),):
            results["magmoms"] = moments
            results["magmom"] = float(moments.sum())


def _write_asedb(out: Path, atoms_list: list[Atoms]) -> None:
    import ase.db

    if out.exists():
        out.unlink()  # a fresh database, not rows appended to an older export
    with ase.db.connect(out, type="db", append=False) as db:
        for atoms in atoms_list:
            data = {
                key: atoms.info[key]
                for key in ("theory", "origin")
                if isinstance(atoms.info.get(key), dict)
            }
            # the SinglePointCalculator carries energy, free_energy, forces, stress and,
            # when the store has them, magmoms; ase.db stores all of them
            db.write(atoms, key_value_pairs=_extras(atoms), data=data)


def _training_labels(run_dir: Path, store: Store, atoms_list: list[Atoms]) -> list[Atoms]:
    """``export --labels training``: ``atoms_list`` (the run store's labelled Atoms, with
    their stored extras) as the fit sees them. A relabelled structure's frame is its relabel
    (``RUN_DIR/relabel``: energy, free energy, forces, stress, magmoms, theory and origin of
    the new label) with the run store's ``structure_id``, ``source`` ``relabel of <id>``,
    ``relabel_id`` (its id in the relabel store) and ``relabelled_from_theory_key`` (the old
    label's theory); a structure whose relabel is not labelled keeps its old label and says
    ``relabel_state`` (``pending``, ``failed``...). Every frame carries ``in_training_set``
    (the trainer's rule: not pruned, of the fitted theory after relabelling)."""
    from mlip_autopipec.lifecycle.theories import run_theories
    from mlip_autopipec.oracle.relabel import RELABEL_DIR

    view = run_theories(run_dir, store)
    new: dict[int, Atoms] = {}
    folder = run_dir / RELABEL_DIR
    if view.record is not None and (folder / DB_NAME).is_file():
        with Store.open(folder, create=False) as rstore:
            relabelled = {int(a.info["structure_id"]): a for a in rstore.labelled_atoms()}
        extras = _stored_extras(folder / DB_NAME)
        for rid, atoms in relabelled.items():
            _attach(atoms, extras.get(rid, {}))
            origin = atoms.info.get("origin") or {}
            if origin.get("kind") == "relabel":
                new[int(origin["structure"])] = atoms
    out = []
    for atoms in atoms_list:
        sid = int(atoms.info["structure_id"])
        s = view.structures[sid]
        rel = s["relabel"]
        if rel is not None and rel["theory_key"] is not None and sid in new:
            frame = new[sid]
            frame.info["relabel_id"] = int(frame.info["structure_id"])
            frame.info["structure_id"] = sid
            frame.info["source"] = f"relabel of {sid}"
            if s["theory_key"] is not None:
                frame.info["relabelled_from_theory_key"] = s["theory_key"]
            if atoms.info.get("pruned"):
                frame.info["pruned"] = True
        else:
            frame = atoms
            if rel is not None:
                frame.info["relabel_state"] = rel["state"]
        frame.info["in_training_set"] = bool(s["in_training_set"])
        out.append(frame)
    return out


def export(
    run_dir: Path | str,
    fmt: str,
    output: Path | str | None = None,
    labels: str = LABELS_TRAINING,
) -> Path:
    """Write every labelled (and trained) structure of ``run_dir``; returns the file.

    ``labels`` (``autopipec export --labels``): ``training`` (default) writes the labels
    the fit uses: for a structure relabelled by ``oracle.theory_mismatch: relabel`` the
    relabel store's label (with ``relabelled_from_theory_key``, see
    :func:`_training_labels`), and ``in_training_set`` on every frame: False for a label
    the fit leaves out (another theory under ``exclude``, a relabel that failed or is
    pending, or pruned), which is still written, marked, rather than mixed in silently;
    ``--format pacemaker`` (a training set) holds only the frames with
    ``in_training_set``. ``recorded`` writes the run store's own labels as they were
    computed (a relabelled structure's old label), without those keys, as before relabels
    existed; ``pacemaker`` then leaves out only the pruned structures.

    ``extxyz``: ASE's extended XYZ with energy, free_energy, forces, stress (and magmoms when
    labelled) and ``structure_id``, ``source``, ``theory_key`` (when recorded) per frame.
    ``asedb``: an ASE database (``ase.db``, SQLite) with the same per row: the calculator
    results, ``structure_id``/``source``/``theory_key`` as key-value pairs and the theory
    and origin records in ``row.data``. ``pacemaker``: the gzipped pandas pickle pacemaker reads,
    built by ``mlip_autopipec.trainer.dataset`` with no baseline and zero reference
    energies (``energy_corrected`` is the DFT energy). Default output:
    ``RUN_DIR/export/labels.<ext>``.

    Structures ``run --prune`` left out of training carry ``pruned=True`` (extxyz info, ase.db
    key-value pair); the ``pacemaker`` training set leaves them out, as the trainer does.
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UsageError(f"export: unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    if labels not in LABEL_SETS:
        raise UsageError(f"export: unknown --labels {labels!r} (use {' or '.join(LABEL_SETS)})")
    if not (run_dir / DB_NAME).is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {DB_NAME}); nothing to export")
    out = Path(output) if output is not None else run_dir / "export" / _DEFAULT_NAMES[fmt]
    if out.resolve() == (run_dir / DB_NAME).resolve():
        raise UsageError(f"export: {out} is the run's store; choose another output file")
    with Store.open(run_dir, create=False) as store:
        atoms_list = store.labelled_atoms()
        pruned = store.pruned_ids()
        for atoms in atoms_list:
            if int(atoms.info["structure_id"]) in pruned:
                atoms.info["pruned"] = True  # run --prune: not in the recipe, not trained on
        extras = _stored_extras(run_dir / DB_NAME)
        for atoms in atoms_list:
            _attach(atoms, extras.get(int(atoms.info["structure_id"]), {}))
        if labels == LABELS_TRAINING:
            atoms_list = _training_labels(run_dir, store, atoms_list)
    if fmt == "pacemaker":  # a training set: what the trainer would fit on
        # --labels training: in_training_set (False when pruned); recorded: not pruned
        atoms_list = [
            a for a in atoms_list if a.info.get("in_training_set", not a.info.get("pruned"))
        ]
    if not atoms_list:
        raise UsageError(f"{run_dir}: no labelled structures to export yet")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "extxyz":
        for atoms in atoms_list:
            for key in ("theory", "origin"):  # nested records do not fit an extxyz comment
                atoms.info.pop(key, None)
        ase.io.write(out, atoms_list, format="extxyz")
        return out
    if fmt == "asedb":
        _write_asedb(out, atoms_list)
        return out
    try:
        dataset = importlib.import_module("mlip_autopipec.trainer.dataset")
        build_dataframe = dataset.build_dataframe
        write_dataframe = dataset.write_dataframe
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            "export --format pacemaker: the trainer's dataset writer "
            f"(mlip_autopipec.trainer.dataset) is not available: {exc}"
        ) from exc
    ids = [str(a.info["structure_id"]) for a in atoms_list]
    elements = sorted({s for a in atoms_list for s in a.get_chemical_symbols()})
    df = build_dataframe(atoms_list, ids, dict.fromkeys(elements, 0.0), None)
    write_dataframe(df, out)
    return out
