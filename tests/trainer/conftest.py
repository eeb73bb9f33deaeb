"""Fixtures of the trainer tests: a pw.x-labelled Si dataset and one real small fit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from si_data import labelled_si_dataset, pwx_available  # noqa: E402
from trainer_testlib import SMALL_FIT, pacemaker_available  # noqa: E402


@pytest.fixture(scope="session")
def si_dataset(tmp_path_factory: pytest.TempPathFactory):
    """A dozen strained + rattled 2/4/8-atom Si cells labelled with the real pw.x."""
    if not pwx_available():
        pytest.skip("pw.x or Si pseudopotential missing")
    return labelled_si_dataset(12, tmp_path_factory.mktemp("si-pwx"))


@pytest.fixture(scope="session")
def fitted_run(si_dataset, tmp_path_factory: pytest.TempPathFactory):
    """A run directory with one real pacemaker fit (no baseline) of ``si_dataset``."""
    if not pacemaker_available():
        pytest.skip("pacemaker not installed")
    from mlip_autopipec.trainer import fit_potential, next_fit_dir

    run_dir = tmp_path_factory.mktemp("run")
    result = fit_potential(si_dataset, dict(SMALL_FIT), next_fit_dir(run_dir))
    return run_dir, result
