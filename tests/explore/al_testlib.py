"""Helpers of the active-learning tests (imported by name: test dirs have no packages)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CI_RECIPE = DATA / "si_al_ci.yaml"
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")


def real_tools_available() -> bool:
    from mlip_autopipec.trainer.fit import resolve_command

    pacemaker = Path(resolve_command("pacemaker")[0]).is_file() or shutil.which("pacemaker")
    return bool(shutil.which("pw.x") and PSEUDO.is_file() and pacemaker)


needs_real_tools = pytest.mark.skipif(
    not real_tools_available(), reason="pw.x, the Si pseudopotential or pacemaker missing"
)
