"""Shared helpers for the oracle tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

PSEUDO = Path("/usr/share/espresso/pseudo")
FAKES = Path(__file__).resolve().parents[1] / "fakes"

needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_dir(),
    reason="needs pw.x and /usr/share/espresso/pseudo (Debian quantum-espresso)",
)


def oracle_cfg(
    system: dict[str, Any] | None = None, electrons: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """A recipe ``oracle`` section with defaults filled in (small, fast settings)."""
    cfg: dict[str, Any] = {
        "engine": "espresso",
        "command": "pw.x",
        "pseudo_dir": None,
        "kspacing": 0.3,
        "koffset": [0, 0, 0],
        "timeout": 120,
        "min_distance": 0.5,
        "input_data": {
            "control": {"tprnfor": True, "tstress": True},
            "system": {"ecutwfc": 15, **(system or {})},
            "electrons": {"conv_thr": 1e-8, **(electrons or {})},
        },
        "retry": {"max_attempts": 6},
    }
    cfg.update(kw)
    return cfg
