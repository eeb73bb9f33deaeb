"""Shared helpers of the trainer tests (a module of its own: a test importing ``conftest``
gets whichever conftest was imported last)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from si_data import pwx_available  # noqa: E402

from mlip_autopipec.trainer.fit import resolve_command  # noqa: E402

#: Small enough for CI (~15 s per fit on a shared 2-core machine), big enough to learn.
SMALL_FIT = {
    "max_basis_size": 8,
    "max_epochs": 25,
    "cutoff": 5.0,
    "timeout": 600,
    # energies first: with few iterations a force-heavy loss leaves energies unlearnt
    "kappa": 0.1,
}


def pacemaker_available() -> bool:
    return Path(resolve_command("pacemaker")[0]).is_file() or shutil.which("pacemaker") is not None


needs_pacemaker = pytest.mark.skipif(not pacemaker_available(), reason="pacemaker not installed")
needs_pwx = pytest.mark.skipif(not pwx_available(), reason="pw.x or Si pseudopotential missing")
