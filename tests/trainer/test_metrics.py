"""Metrics from pacemaker's prediction tables, and from its log as a fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlip_autopipec.trainer.metrics import (
    errors_from_log,
    errors_from_predictions,
    fit_errors,
    fit_progress,
)

DATA = Path(__file__).parents[1] / "data" / "trainer"
LOG = DATA / "pacemaker_pyace_0.4.0rc1.log"  # a real pyace-backend log (lines cut at 400 chars)


def _pred_table():
    # Two structures: 2 atoms off by +0.02 eV in total, 4 atoms off by -0.08 eV in total.
    forces = [np.zeros((2, 3)), np.zeros((4, 3))]
    forces_pred = [np.full((2, 3), 0.01), np.full((4, 3), -0.04)]
    return pd.DataFrame(
        {
            "NUMBER_OF_ATOMS": [2, 4],
            "energy_corrected": [1.0, -2.0],
            "energy_pred": [1.02, -2.08],
            "forces": forces,
            "forces_pred": forces_pred,
        }
    )


def test_rmse_from_prediction_table():
    err = errors_from_predictions(_pred_table())
    # per-atom errors 10 and 20 meV/atom -> sqrt((100 + 400) / 2)
    assert err.energy_mev_per_atom == pytest.approx(np.sqrt(250.0))
    # 6 components off by 10 meV/Å, 12 components off by 40 meV/Å
    assert err.forces_mev_per_ang == pytest.approx(np.sqrt((6 * 100 + 12 * 1600) / 18))
    assert (err.n_structures, err.source) == (2, "predictions")


def test_train_errors_from_real_log():
    err = errors_from_log(LOG.read_text(), test=False)
    assert err is not None
    # the final "Cycle last iteration" table of that run
    assert (err.energy_mev_per_atom, err.forces_mev_per_ang) == (89.88, 105.13)
    assert err.source == "log"
    # the pyace backend never reports test errors in its log
    assert errors_from_log(LOG.read_text(), test=True) is None


def test_test_lines_are_told_apart():
    text = (
        "2026 I - Iteration   #3    (9 evals):      Loss: 1e-1 | RMSE Energy(low): 5.00 (5.00) "
        "meV/at | Forces(low): 50.00 (50.00) meV/A | Time/eval: 1 mcs/at\n"
        "2026 I - TEST Iteration #3 (9 evals):      Loss: 1e-1 | RMSE Energy(low): 7.50 (7.50) "
        "meV/at | Forces(low): 70.00 (70.00) meV/A | Time/eval: 1 mcs/at\n"
    )
    train, test = errors_from_log(text, test=False), errors_from_log(text, test=True)
    assert train is not None and test is not None
    assert (train.energy_mev_per_atom, test.energy_mev_per_atom) == (5.0, 7.5)
    assert (train.forces_mev_per_ang, test.forces_mev_per_ang) == (50.0, 70.0)


def test_fit_errors_prefers_predictions_then_log(tmp_path: Path):
    _pred_table().to_pickle(tmp_path / "train_pred.pckl.gzip", compression="gzip")
    log = tmp_path / "pacemaker.log"
    log.write_text(LOG.read_text())
    from_pred = fit_errors(tmp_path, log, test=False)
    assert from_pred is not None and from_pred.source == "predictions"
    (tmp_path / "train_pred.pckl.gzip").unlink()
    from_log = fit_errors(tmp_path, log, test=False)
    assert from_log is not None and from_log.energy_mev_per_atom == 89.88
    assert fit_errors(tmp_path, log, test=True) is None


def test_fit_progress_of_a_real_log_that_hit_the_iteration_limit():
    progress = fit_progress(LOG.read_text())
    assert progress.iterations == 30  # maxiter 30 in that run
    assert len(progress.loss_history) == 31  # initial state + one loss per iteration
    assert progress.loss_history[0] == pytest.approx(2.9773)
    assert progress.loss_history[-1] == pytest.approx(1.5603e-02)
    assert progress.status == 1 and not progress.converged
    assert progress.message == "Maximum number of iterations has been exceeded."


@pytest.mark.parametrize(
    ("verdict", "converged"),
    [
        ("success=True, status=0, message=Optimization terminated successfully., nfev=9", True),
        (
            "success=False, status=2, message=Desired error not necessarily achieved due to "
            "precision loss., nfev=9",
            True,
        ),
        (
            "success=False, status=1, message=Maximum number of iterations has been "
            "exceeded., nfev=9",
            False,
        ),
        ("success=False, status=3, message=NaN result encountered., nfev=9", False),
    ],
)
def test_optimiser_verdicts(verdict, converged):
    text = (
        "2026 I - Iteration   #1    (5 evals):      Loss: 2e-1 | RMSE Energy(low): 1 (1) meV/at\n"
        "2026 I - TEST Iteration #1 (5 evals):      Loss: 9e-1 | RMSE Energy(low): 1 (1) meV/at\n"
        "Iteration:  #2  Loss:    Total:  1.0e-01 (100%) \n"
        f"2026 I - Optimization result({verdict}, njev=3)\n"
    )
    progress = fit_progress(text)
    assert progress.converged is converged
    assert progress.loss_history == (0.2, 0.1)  # the TEST loss is not the train history
    assert progress.iterations == 2


def test_early_stopping_counts_as_converged_and_no_verdict_does_not():
    # as pacemaker 0.4.0rc1 logs it (fit.min_relative_train_loss_per_iter)
    stop = (
        "2026 I - EARLY STOPPING: Too small or even positive TRAIN loss change (best=-3.05e-02"
        "  / iter, last=-2.30e-02/iter, threshold = -5.00e-02/iter) within last 3 iterations."
        " Stopping\n2026 I - Optimization result(success=False, status=99, message=`callback`"
        " raised `StopIteration`., nfev=72, njev=9)\n"
    )
    progress = fit_progress(stop)
    assert progress.converged and progress.status == 99
    assert progress.message.startswith("early stop: Too small")
    assert not fit_progress("").converged
