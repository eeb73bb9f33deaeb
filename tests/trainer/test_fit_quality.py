"""Issue 11's done-when for the quickstart potential: its equation of state matches DFT's.

Labels the shipped recipes/si_quickstart.yaml with the real pw.x, fits it with the recipe's
own trainer section, and compares a 9-point E-V curve (-5 % .. +5 % linear strain, pw.x at
the recipe's oracle settings) with Birch-Murnaghan fits: lattice constant within 0.2 %, bulk
modulus within 5 %. The helpers are bench/fit_quality.py's (which prints the same figures).
Marked ``long`` (run with ``-m long``): 1193 s on the shared 2-core machine at load ~11 (passed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from si_data import pwx_available
from trainer_testlib import needs_pacemaker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from fit_quality import ace_ev, dft_ev, eos  # noqa: E402

pytestmark = [
    pytest.mark.long,
    pytest.mark.pacemaker,
    pytest.mark.pwx,
    needs_pacemaker,
    pytest.mark.skipif(not pwx_available(), reason="pw.x missing"),
]


def test_quickstart_equation_of_state_matches_dft(tmp_path: Path):
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.recipe.validate import load_recipe
    from mlip_autopipec.trainer import fit_potential

    recipe = ROOT / "recipes" / "si_quickstart.yaml"
    run_dir = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_autopipec",
            "run",
            str(recipe),
            "--run-dir",
            str(run_dir),
            "--stage",
            "label",
        ],
        check=True,
        capture_output=True,
    )
    with Store.open(run_dir, create=False) as store:
        atoms = store.labelled_atoms()
    assert len(atoms) == 28
    fit = fit_potential(atoms, load_recipe(recipe).trainer, tmp_path / "fit")
    assert fit.converged, fit.convergence_note
    v_dft, b_dft = eos(dft_ev(recipe, tmp_path))
    v_ace, b_ace = eos(ace_ev(fit.workdir, "si_quickstart"))
    assert (v_ace / v_dft) ** (1 / 3) == pytest.approx(1.0, abs=0.002)
    assert b_ace / b_dft == pytest.approx(1.0, abs=0.05)
