"""Export labelled structures for other tools (``autopipec export``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import ase.io

from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.store import DB_NAME, Store

FORMATS = ("extxyz", "pacemaker")
_DEFAULT_NAMES = {"extxyz": "labels.extxyz", "pacemaker": "labels.pkl.gz"}


def export(run_dir: Path | str, fmt: str, output: Path | str | None = None) -> Path:
    """Write every labelled (and trained) structure of ``run_dir``; returns the file.

    ``extxyz``: ASE's extended XYZ with energy, free_energy, forces, stress and
    ``structure_id`` per frame. ``pacemaker``: the gzipped pandas pickle pacemaker reads,
    built by ``mlip_autopipec.trainer.dataset`` with no baseline and zero reference
    energies (``energy_corrected`` is the DFT energy). Default output:
    ``RUN_DIR/export/labels.<ext>``.
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UsageError(f"export: unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    if not (run_dir / DB_NAME).is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {DB_NAME}); nothing to export")
    out = Path(output) if output is not None else run_dir / "export" / _DEFAULT_NAMES[fmt]
    with Store.open(run_dir, create=False) as store:
        atoms_list = store.labelled_atoms()
    if not atoms_list:
        raise UsageError(f"{run_dir}: no labelled structures to export yet")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "extxyz":
        ase.io.write(out, atoms_list, format="extxyz")
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
