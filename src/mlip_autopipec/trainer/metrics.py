"""Train/test errors of a pacemaker fit.

The pyace backend never fills ``test_metrics.txt``, so errors are computed from pacemaker's
prediction tables ``train_pred.pckl.gzip`` / ``test_pred.pckl.gzip`` (columns
``energy_pred``, ``energy_corrected``, ``NUMBER_OF_ATOMS``, ``forces_pred``, ``forces``).
When a table is missing the last ``RMSE`` lines of pacemaker's log are the fallback.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Errors:
    """RMSE of one set: energy per atom (meV/atom), force components (meV/Å), and its size."""

    energy_mev_per_atom: float
    forces_mev_per_ang: float
    n_structures: int
    source: str  # "predictions" or "log"


def errors_from_predictions(df: pd.DataFrame) -> Errors:
    """RMSEs from a pacemaker prediction table."""
    n_atoms = df["NUMBER_OF_ATOMS"].to_numpy(dtype=float)
    de = df["energy_pred"].to_numpy(dtype=float) - df["energy_corrected"].to_numpy(dtype=float)
    de_per_atom = de / n_atoms
    df_ = np.vstack([np.asarray(f, dtype=float) for f in df["forces_pred"]]) - np.vstack(
        [np.asarray(f, dtype=float) for f in df["forces"]]
    )
    return Errors(
        energy_mev_per_atom=1e3 * float(np.sqrt(np.mean(de_per_atom**2))),
        forces_mev_per_ang=1e3 * float(np.sqrt(np.mean(df_**2))),
        n_structures=len(df),
        source="predictions",
    )


def read_predictions(path: Path) -> pd.DataFrame:
    """Load a ``*_pred.pckl.gzip`` table."""
    return pd.read_pickle(path, compression="gzip")


# pacemaker's per-iteration line: "... | RMSE Energy(low): 89.88 (89.88) meV/at | Forces(low):
# 105.13 (105.13) meV/A | ..."; test lines carry "TEST" in the title before "RMSE".
_DETAILED = re.compile(
    r"RMSE Energy\(low\):\s*(?P<e>[-+\d.eE]+).*?meV/at\s*\|\s*Forces\(low\):\s*(?P<f>[-+\d.eE]+)"
)
# Extended tables: a dashed title line ("----Cycle last iteration:----", "----TEST STATS----"),
# then a row "RMSE:  E  E_low  F  F_low".
_TITLE = re.compile(r"^-{5,}(?P<title>[^-].*?)-{5,}\s*$")
_TABLE_ROW = re.compile(r"^\s*RMSE:\s+(?P<e>[-+\d.eE]+)\s+[-+\d.eE]+\s+(?P<f>[-+\d.eE]+)")


def errors_from_log(log_text: str, test: bool) -> Errors | None:
    """The last RMSE reported for the train (``test=False``) or test set in a pacemaker log."""
    found: tuple[str, str] | None = None
    table_is_test: bool | None = None
    for line in log_text.splitlines():
        if m := _DETAILED.search(line):
            if ("TEST" in line.split("RMSE")[0].upper()) == test:
                found = (m["e"], m["f"])
            continue
        if m := _TITLE.match(line):
            table_is_test = "TEST" in m["title"].upper()
            continue
        if (m := _TABLE_ROW.match(line)) and table_is_test is not None:
            if table_is_test == test:
                found = (m["e"], m["f"])
            table_is_test = None
    if found is None:
        return None
    return Errors(float(found[0]), float(found[1]), 0, "log")


def fit_errors(workdir: Path, log_path: Path, test: bool) -> Errors | None:
    """Errors of the train or test set of the fit in ``workdir``; None if there is no set."""
    pred = workdir / ("test_pred.pckl.gzip" if test else "train_pred.pckl.gzip")
    if pred.is_file():
        errors = errors_from_predictions(read_predictions(pred))
        if all(math.isfinite(v) for v in (errors.energy_mev_per_atom, errors.forces_mev_per_ang)):
            return errors
    if log_path.is_file():
        return errors_from_log(log_path.read_text(errors="replace"), test)
    return None
