"""The quickstart recipe's settings run through the real oracle: one SCF, about a second."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mlip_autopipec.recipe import build_structures, load_recipe, resolve_pseudopotentials

ROOT = Path(__file__).resolve().parents[2]
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF")

pytestmark = [
    pytest.mark.pwx,
    pytest.mark.skipif(
        shutil.which("pw.x") is None or not PSEUDO.is_file(),
        reason="needs pw.x and the Debian quantum-espresso-data pseudopotentials",
    ),
]


def test_one_quickstart_scf(tmp_path: Path) -> None:
    from mlip_autopipec.oracle import EspressoOracle, run_attempt

    recipe = load_recipe(ROOT / "recipes" / "si_quickstart.yaml")
    structures = build_structures(recipe)
    rattled = next(s for s in structures if s.source.endswith("rattle=1"))
    pseudos = resolve_pseudopotentials(recipe, tmp_path / "pseudo")
    assert pseudos == {"Si": PSEUDO}
    oracle = EspressoOracle(recipe.oracle, pseudos)
    assert oracle.preflight(rattled.atoms) is None
    request = oracle.next_request("s1", rattled.atoms, [], tmp_path / "s1")
    assert request is not None
    result = run_attempt(request)
    assert result.ok, result.message
    assert result.kgrid is not None and tuple(result.kgrid) == (3, 3, 3)
    forces = np.asarray(result.forces)
    assert forces.shape == (2, 3) and np.abs(forces).max() > 0.01
    assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-3)  # Newton's third law
    assert result.wall_time < 15.0  # ~1 s on one core; generous for a shared machine
