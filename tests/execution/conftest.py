"""Fixtures for the execution tests: skip cleanly without pw.x or a reachable Slurm."""

from __future__ import annotations

import pytest
from execution_helpers import pwx_missing_reason, slurm_missing_reason


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip unless a Slurm controller with a usable node is reachable."""
    reason = slurm_missing_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pwx() -> None:
    """Skip unless pw.x and the Si pseudopotential are installed."""
    reason = pwx_missing_reason()
    if reason is not None:
        pytest.skip(reason)
