"""Real pacemaker fits of real pw.x labels (small: a dozen Si cells, few functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from trainer_testlib import SMALL_FIT, needs_pacemaker, needs_pwx

from mlip_autopipec import load_calculator as public_load_calculator
from mlip_autopipec.errors import TrainerError
from mlip_autopipec.trainer import fit_potential, load_calculator, load_fit, next_fit_dir

pytestmark = [pytest.mark.pacemaker, pytest.mark.pwx, needs_pacemaker, needs_pwx]


def _rmse_mev_per_atom(calc, structures):
    errs = []
    for atoms in structures:
        probe = atoms.copy()
        probe.calc = calc
        errs.append((probe.get_potential_energy() - atoms.get_potential_energy()) / len(atoms))
    return 1e3 * math.sqrt(float(np.mean(np.square(errs))))


def test_fit_produces_potential_active_set_and_finite_metrics(fitted_run, si_dataset):
    run_dir, fit = fitted_run
    assert fit.yace.is_file() and fit.yace.suffix == ".yace"
    assert fit.asi is not None and fit.asi.is_file()
    assert fit.potential_yaml.is_file() and fit.input_yaml.is_file() and fit.log.is_file()
    assert fit.pacemaker_version == "0.4.0rc1"
    ids = {str(a.info["structure_id"]) for a in si_dataset}
    assert set(fit.train_ids) | set(fit.test_ids) == ids
    assert not set(fit.train_ids) & set(fit.test_ids)
    assert len(fit.test_ids) == round(0.2 * len(ids))
    for table in (fit.rmse_energy_mev_per_atom, fit.rmse_forces_mev_per_ang):
        for key in ("train", "test"):
            assert table[key] is not None and math.isfinite(table[key]) and table[key] > 0
    assert fit.metrics_source == {"train": "predictions", "test": "predictions"}
    # Far better than knowing nothing: the spread of the data itself.
    epa = [a.get_potential_energy() / len(a) for a in si_dataset]
    assert fit.rmse_energy_mev_per_atom["train"] < 1e3 * np.std(epa)
    # the record on disk and the pointer that makes it current
    assert json.loads((run_dir / "trainer" / "current.json").read_text())["fit_dir"] == "fit-001"
    record = json.loads((fit.workdir / "potential.json").read_text())
    assert record["yace"] == "output_potential.yace"  # relative: the run directory can move
    assert load_fit(run_dir) == fit
    assert next_fit_dir(run_dir).name == "fit-002"


def test_calculator_reproduces_reported_errors_with_total_energies(fitted_run, si_dataset):
    run_dir, fit = fitted_run
    calc = public_load_calculator(run_dir)
    by_id = {str(a.info["structure_id"]): a for a in si_dataset}
    # pw.x total energies (about -107 eV/atom) come back: reference energies are added back.
    test = [by_id[i] for i in fit.test_ids]
    rmse = _rmse_mev_per_atom(calc, test)
    assert rmse == pytest.approx(fit.rmse_energy_mev_per_atom["test"], rel=0.02, abs=0.5)
    probe = test[0].copy()
    probe.calc = calc
    assert probe.get_potential_energy() / len(probe) < -100.0
    assert probe.get_forces().shape == (len(probe), 3)
    assert probe.get_stress().shape == (6,)


def test_forces_and_stress_are_derivatives_of_the_energy(fitted_run, si_dataset):
    run_dir, _ = fitted_run
    calc = load_calculator(run_dir)
    atoms = next(a for a in si_dataset if len(a) == 2).copy()
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-4
    for axis in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[0, axis] += h
        minus.positions[0, axis] -= h
        plus.calc = minus.calc = calc
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[0, axis] == pytest.approx(numeric, abs=2e-3)
    # stress_xx = (1/V) dE/d(eps_xx)
    stress = atoms.get_stress()
    eps = 1e-5
    energies = []
    for sign in (1, -1):
        strained = atoms.copy()
        strain = np.eye(3)
        strain[0, 0] += sign * eps
        strained.set_cell(atoms.cell @ strain, scale_atoms=True)
        strained.calc = calc
        energies.append(strained.get_potential_energy())
    numeric_xx = (energies[0] - energies[1]) / (2 * eps) / atoms.get_volume()
    assert stress[0] == pytest.approx(numeric_xx, abs=2e-4)


def test_extrapolation_grades(fitted_run, si_dataset):
    run_dir, fit = fitted_run
    calc = load_calculator(run_dir, extrapolation=True)
    inside = next(a for a in si_dataset if str(a.info["structure_id"]) == fit.train_ids[0]).copy()
    inside.calc = calc
    inside.get_potential_energy()
    gamma = calc.results["gamma"]
    assert gamma.shape == (len(inside),) and np.all(np.isfinite(gamma))
    # a strongly compressed cell lies outside the training data: larger grades
    squeezed = inside.copy()
    squeezed.set_cell(inside.cell * 0.85, scale_atoms=True)
    squeezed.calc = calc
    squeezed.get_potential_energy()
    assert calc.results["gamma"].max() > gamma.max()


def test_lj_delta_learning_reproduces_held_out_dft(si_dataset, tmp_path: Path):
    baseline = {"type": "LJ", "epsilon": 0.1, "sigma": 2.0, "rc": 4.5}
    fit = fit_potential(
        si_dataset, {**SMALL_FIT, "physics_baseline": baseline}, tmp_path / "trainer" / "fit-001"
    )
    assert fit.baseline["type"] == "LJ" and fit.baseline["epsilon"] == 0.1
    assert "Si" in fit.baseline["reference_energies"]
    record = json.loads((fit.workdir / "potential.json").read_text())
    assert record["baseline"]["sigma"] == 2.0
    calc = load_calculator(tmp_path)
    by_id = {str(a.info["structure_id"]): a for a in si_dataset}
    held_out = [by_id[i] for i in fit.test_ids]
    rmse = _rmse_mev_per_atom(calc, held_out)
    # ACE + LJ + reference energies vs pw.x on structures the fit never saw
    assert rmse <= fit.rmse_energy_mev_per_atom["test"] * 1.02 + 0.5
    # and the baseline really is part of the model: without it the energies differ
    from mlip_autopipec.trainer.baseline import baseline_calculator, baseline_labels

    lj = baseline_calculator(baseline)
    assert lj is not None
    assert abs(baseline_labels(lj, held_out[0])[0]) > 1e-3
    # the .yace cannot hold the LJ part: potential.json says so, and .yace + LJ is the model
    from pyace import PyACECalculator

    assert "LJ baseline" in fit.baseline["not_in_yace"]
    probe = held_out[0].copy()
    probe.calc = PyACECalculator(str(fit.yace))
    e_yace = probe.get_potential_energy()
    probe.calc = calc
    e_lj = baseline_labels(lj, held_out[0])[0]
    assert (e_yace + e_lj - probe.get_potential_energy()) / len(probe) == pytest.approx(0, abs=1e-6)


def test_no_potential_in_an_untrained_run(tmp_path: Path):
    with pytest.raises(TrainerError, match="no trained potential"):
        load_calculator(tmp_path)


def test_zbl_core_repulsion_switches_on_at_short_range(si_dataset, tmp_path: Path):
    fit = fit_potential(
        si_dataset,
        {**SMALL_FIT, "max_epochs": 10, "physics_baseline": {"type": "ZBL"}},
        tmp_path / "trainer" / "fit-001",
    )
    assert fit.baseline["type"] == "ZBL" and "switch" in fit.baseline["mode"]
    from pyace import BBasisConfiguration

    block = BBasisConfiguration(str(fit.potential_yaml)).funcspecs_blocks[0]
    assert block.inner_cutoff_type == "zbl"
    # Issue 11.6: the inner cutoff comes from the covalent radii (0.75 x 2 x 1.11 Å), not
    # from the shortest distance of the training set, and is recorded with the potential.
    assert block.r_in == pytest.approx(1.665)
    assert fit.baseline["pairs"]["Si-Si"]["r_in"] == pytest.approx(1.665)
    from ase import Atoms

    calc = load_calculator(tmp_path)
    energies = []
    for r in (0.8, 1.2):
        dimer = Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], cell=[12, 12, 12], pbc=True)
        dimer.calc = calc
        energies.append(dimer.get_potential_energy() - 2 * fit.baseline["reference_energies"]["Si"])
    # screened Coulomb of two Si nuclei: ~100 eV at 0.8 Å, steeply falling
    assert energies[0] > 50.0 and energies[0] > energies[1]


def test_yace_alone_gives_the_total_energies_of_load_calculator(fitted_run, si_dataset):
    # Issue 11.5: the reference energies are the .yace's E0 values (no LJ baseline here).
    from pyace import PyACECalculator

    run_dir, fit = fitted_run
    assert fit.reference_in_yace and "reference energies (E0)" in fit.baseline["in_yace"]
    alone = PyACECalculator(str(fit.yace))
    full = load_calculator(run_dir)
    for atoms in si_dataset[:4]:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = alone, full
        diff = (a.get_potential_energy() - b.get_potential_energy()) / len(atoms)
        assert abs(diff) < 1e-6
        assert a.get_potential_energy() / len(atoms) < -100.0  # a total, not a binding energy
        assert np.allclose(a.get_forces(), b.get_forces(), atol=1e-8)


def test_fit_reports_its_optimiser_verdict(fitted_run):
    _, fit = fitted_run
    assert fit.iterations >= 1 and len(fit.loss_history) >= fit.iterations
    assert fit.loss_history[-1] < fit.loss_history[0]
    assert fit.status_message
    assert fit.settings["max_epochs"] == SMALL_FIT["max_epochs"]
    if not fit.converged:  # reported, printed by the pipeline
        assert fit.convergence_note is not None and "max_epochs" in fit.convergence_note
        assert fit.convergence_note in fit.warnings
    record = json.loads((fit.workdir / "potential.json").read_text())
    assert record["settings_fingerprint"] == fit.settings_fingerprint
    assert record["loss_history"] == fit.loss_history


def test_refit_continues_from_the_previous_potential(fitted_run, si_dataset, tmp_path: Path):
    from mlip_autopipec.trainer.config import settings_fingerprint

    _, first = fitted_run
    # max_epochs is part of the fingerprint (a changed ceiling refits), but only says when
    # the optimiser stops: a fit with another max_epochs may continue from this one
    shorter = {**SMALL_FIT, "max_epochs": 5}
    assert settings_fingerprint(SMALL_FIT) == first.settings_fingerprint
    assert settings_fingerprint(shorter) != first.settings_fingerprint
    cont = fit_potential(
        si_dataset,
        shorter | {"refit": "continue"},
        tmp_path / "cont",
        initial_potential=first.workdir,
    )
    assert cont.initial_potential is not None and cont.initial_potential.is_file()
    assert "filename: initial_potential.yaml" in cont.input_yaml.read_text()
    assert cont.baseline["reference_energies"] == first.baseline["reference_energies"]
    # it starts where the first fit ended, far below a fresh start
    assert cont.loss_history[0] < 0.5 * first.loss_history[0]
    assert cont.loss_history[0] == pytest.approx(first.loss_history[-1], rel=0.3)
    # other settings (the loss): a fresh fit, and a note says why
    cfg = {**shorter, "kappa": 0.5 * float(SMALL_FIT.get("kappa", 0.3))}
    fresh = fit_potential(
        si_dataset, cfg | {"refit": "continue"}, tmp_path / "fresh", initial_potential=first.workdir
    )
    assert fresh.initial_potential is None
    assert any("settings changed" in n for n in fresh.notes)
