"""Shared helpers for the physics tests (real pw.x; recipes written to tmp_path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlip_autopipec.oracle import EspressoOracle
from mlip_autopipec.recipe import Recipe, load_recipe, resolve_pseudopotentials

PSEUDO = Path("/usr/share/espresso/pseudo")
ROOT = Path(__file__).resolve().parents[2]

needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_dir(),
    reason="needs pw.x and /usr/share/espresso/pseudo (Debian quantum-espresso)",
)


def write_recipe(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Recipe:
    """Write ``text`` as a recipe in ``tmp_path`` and load it (validated, defaults filled)."""
    path = tmp_path / name
    path.write_text(text)
    return load_recipe(path)


def oracle_of(recipe: Recipe, tmp_path: Path) -> EspressoOracle:
    """The oracle a run of ``recipe`` would use."""
    return EspressoOracle(recipe.oracle, resolve_pseudopotentials(recipe, tmp_path / "pseudo"))
