"""The active set covers every training structure: gamma <= 1 on each, however well it fits.

pace_activeset by default leaves out of the active set the atoms whose force error is above
Q3 + 1.5 IQR of the training set. A training cell the fit does not match well (here: one
with corrupted forces; in the CI loop: a cell a continued refit fitted worse) then got a
grade of 199-726, so the loop would have selected near-copies of its own training data.
The trainer asks for every atom (``pace_activeset -a``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))

from al_testlib import needs_real_tools  # noqa: E402
from si_data import label, labelled_si_dataset  # noqa: E402

pytestmark = needs_real_tools


def test_every_training_cell_is_inside_the_active_set(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from mlip_autopipec.trainer.calculator import load_calculator
    from mlip_autopipec.trainer.fit import fit_potential

    cells = labelled_si_dataset(6, tmp_path_factory.mktemp("si-pwx"))
    # a compressed cell (environments no other cell has) with a label the fit cannot
    # follow: its forces are far off
    odd = cells[0].copy()
    odd.set_cell(odd.cell * 0.95, scale_atoms=True)
    odd.rattle(0.1, seed=3)
    bad = label(odd, tmp_path / "pw-odd")
    bad.info["structure_id"] = 1000
    rng = np.random.default_rng(5)
    forces = bad.get_forces() + rng.normal(0.0, 3.0, size=(len(bad), 3))
    bad.calc = SinglePointCalculator(bad, energy=bad.get_potential_energy(), forces=forces)
    cells.append(bad)
    cfg = {"max_basis_size": 8, "max_epochs": 20, "cutoff": 5.0, "kappa": 0.1}
    fit = fit_potential(cells, cfg | {"test_fraction": 0.0}, tmp_path / "fit")
    assert fit.asi is not None
    calc = load_calculator(fit.workdir, extrapolation=True)
    grades = []
    for atoms in cells:
        probe = atoms.copy()
        probe.calc = calc
        probe.get_potential_energy()
        grades.append(float(np.max(calc.results["gamma"])))
    assert max(grades) <= 1.01, grades
