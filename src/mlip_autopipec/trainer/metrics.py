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


# Optimiser progress. pacemaker logs one line per iteration ("Iteration   #3    (307 evals):
# Loss: 5.3361e-01 | ..."), a stats table every display_step ("Iteration:  #10  Loss:    Total:
# 1.1888e-01 (100%)"), the initial state ("Initial state:#0 (1 evals): Loss: ..."), and after
# each fit cycle scipy's verdict: "Optimization result(success=False, status=1,
# message=Maximum number of iterations has been exceeded., nfev=2091, njev=41)".
# Its own early stop (fit.min_relative_train_loss_per_iter) logs "EARLY STOPPING: ...".
_ITER_LINE = re.compile(
    r"(?:Iteration\s+#(?P<n1>\d+)\s+\(\d+ evals\)|Initial state:\s*#(?P<n0>\d+)\s+\(\d+ evals\))"
    r":\s+Loss:\s*(?P<loss>[-+\d.eE]+)"
)
_ITER_TABLE = re.compile(r"^Iteration:\s+#(?P<n>\d+)\s+Loss:\s+Total:\s+(?P<loss>[-+\d.eE]+)")
_OPT_RESULT = re.compile(
    r"Optimization result\(success=(?P<success>\w+), status=(?P<status>-?\d+), "
    r"message=(?P<message>.*?), nfev=(?P<nfev>\d+)"
)
_EARLY_STOP = re.compile(r"EARLY STOPPING: (?P<message>.*)$")

#: scipy's BFGS status codes that mean the optimiser stopped on its own criterion: 0 (gradient
#: norm below gtol) and 2 (no further decrease possible within machine precision: the loss
#: cannot be lowered along the search direction). 1 is the iteration limit.
CONVERGED_STATUS = (0, 2)
MAXITER_STATUS = 1


@dataclass(frozen=True)
class FitProgress:
    """What pacemaker's log says about the optimisation of the last fit cycle."""

    iterations: int
    loss_history: tuple[float, ...]
    status: int | None  # scipy's status code; None: no verdict in the log
    message: str
    early_stopped: bool

    @property
    def converged(self) -> bool:
        """The optimiser stopped on its own criterion, not on the iteration limit."""
        return self.early_stopped or self.status in CONVERGED_STATUS


def fit_progress(log_text: str) -> FitProgress:
    """Iterations, train loss per iteration and the optimiser's verdict from a pacemaker log.

    TEST lines are skipped (the loss history is the train loss, ladder steps one after
    another); a repeated iteration number (a stats table after the one-line form, or the
    final "Cycle last iteration" table) is counted once. The verdict is the last one logged.
    """
    losses: list[float] = []
    last_iter = -1
    iterations = 0
    status: int | None = None
    message = "no optimiser result in the log"
    early = False
    for line in log_text.splitlines():
        if m := _OPT_RESULT.search(line):
            status = int(m["status"])
            if not early:  # after an early stop scipy only says "`callback` raised ..."
                message = m["message"].strip().rstrip(".") + "."
            continue
        if m := _EARLY_STOP.search(line):
            early, message = True, "early stop: " + m["message"].strip()
            continue
        if "TEST" in line.split("Loss")[0].upper():
            continue
        m_line = _ITER_LINE.search(line)
        m_table = None if m_line else _ITER_TABLE.match(line)
        m_any = m_line or m_table
        if m_any is None:
            continue
        n = int(m_line["n1"] or m_line["n0"]) if m_line else int(m_any["n"])
        if n == last_iter:
            continue
        try:
            value = float(m_any["loss"])
        except ValueError:
            continue
        last_iter = n
        losses.append(value)
        iterations += n > 0  # a ladder step or fit cycle starts again from #0
    return FitProgress(
        iterations=iterations,
        loss_history=tuple(losses),
        status=status,
        message=message,
        early_stopped=early,
    )
