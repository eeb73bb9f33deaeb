"""pacemaker failures (injected with a fake executable) become clear TrainerErrors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from si_data import si_cells

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.trainer import fit_potential

FAKE = Path(__file__).parent / "fakes" / "fake_pacemaker.py"


def _labelled(n=5):
    out = []
    for atoms in si_cells(n, seed=9):
        work = atoms.copy()
        work.calc = LennardJones(epsilon=0.5, sigma=2.2, rc=4.5)
        atoms.calc = SinglePointCalculator(
            atoms, energy=work.get_potential_energy(), forces=work.get_forces()
        )
        out.append(atoms)
    return out


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("exit3", "exited with code 3"),
        ("kill", "killed by signal 9"),
        ("nopot", "left no output_potential.yaml"),
        ("hang", "timed out"),
    ],
)
def test_failure_is_a_trainer_error_and_touches_nothing_else(tmp_path: Path, mode, message):
    run_dir = tmp_path / "run"
    previous = run_dir / "trainer" / "fit-001"
    previous.mkdir(parents=True)
    pointer = run_dir / "trainer" / "current.json"
    pointer.write_text(json.dumps({"fit_dir": "fit-001"}))
    atoms = _labelled()
    before = [(a.get_potential_energy(), a.get_forces().copy(), dict(a.info)) for a in atoms]
    workdir = run_dir / "trainer" / "fit-002"
    cfg = {"command": [sys.executable, str(FAKE), mode], "timeout": 2}
    with pytest.raises(TrainerError) as info:
        fit_potential(atoms, cfg, workdir)
    text = str(info.value)
    assert message in text
    assert str(workdir / "pacemaker.log") in text  # where to look
    assert info.value.workdir == workdir
    if mode == "exit3":
        assert "ValueError: fake failure" in text  # the cause is quoted
    # nothing outside the fit folder changed: the previous fit stays current
    assert json.loads(pointer.read_text()) == {"fit_dir": "fit-001"}
    assert sorted(p.name for p in (run_dir / "trainer").iterdir()) == [
        "current.json",
        "fit-001",
        "fit-002",
    ]
    assert not (workdir / "potential.json").exists()
    # labels untouched
    for a, (e, f, info_) in zip(atoms, before, strict=True):
        assert a.get_potential_energy() == e and np.array_equal(a.get_forces(), f)
        assert a.info == info_


def test_missing_program_is_a_trainer_error(tmp_path: Path):
    with pytest.raises(TrainerError, match="cannot start"):
        fit_potential(_labelled(), {"command": "no-such-pacemaker-xyz"}, tmp_path / "fit")


def test_bad_input_is_rejected_before_running(tmp_path: Path):
    atoms = _labelled()
    with pytest.raises(TrainerError, match="trainer.elements"):
        fit_potential(atoms, {"elements": ["C"]}, tmp_path / "fit")
    atoms[1].info["structure_id"] = atoms[0].info["structure_id"]
    with pytest.raises(TrainerError, match="duplicate"):
        fit_potential(atoms, {}, tmp_path / "fit")
    with pytest.raises(TrainerError, match="at least 2"):
        fit_potential(atoms[:1], {}, tmp_path / "fit")
    assert not (tmp_path / "fit").exists()  # rejected before anything is written


def test_tensorpot_without_tensorpotential_is_explained(tmp_path: Path):
    import importlib.util

    from mlip_autopipec.trainer.fit import resolve_command

    if importlib.util.find_spec("tensorpotential") is not None:
        pytest.skip("tensorpotential is installed here")
    exe = resolve_command("pacemaker")[0]
    if Path(shutil.which(exe) or exe).parent != Path(sys.executable).parent:
        pytest.skip("pacemaker is not this environment's")
    with pytest.raises(TrainerError, match="tensorpotential"):
        fit_potential(_labelled(), {"backend": "tensorpot"}, tmp_path / "fit")


@pytest.mark.pacemaker
def test_rerun_after_a_failure_retries_training_only(tmp_path: Path):
    from trainer_testlib import pacemaker_available

    if not pacemaker_available():
        pytest.skip("pacemaker not installed")
    # Only 2-atom cells: the held-out cell's two force norms are equal (Newton's third law),
    # which makes pacemaker 0.4.0rc1 crash in its final histogram after saving everything.
    atoms = _labelled(12)[::3]
    workdir = tmp_path / "trainer" / "fit-001"
    with pytest.raises(TrainerError):
        fit_potential(atoms, {"command": [sys.executable, str(FAKE), "nopot"]}, workdir)
    assert not (tmp_path / "trainer" / "current.json").exists()
    # same folder, real pacemaker: the stale log is replaced and the fit completes
    cfg = {"max_basis_size": 3, "max_epochs": 3, "test_fraction": 0.25}
    fit = fit_potential(atoms, cfg, workdir)
    assert fit.yace.is_file() and fit.pacemaker_version == "0.4.0rc1"
    assert "fake" not in fit.log.read_text()
    assert json.loads((tmp_path / "trainer" / "current.json").read_text())["fit_dir"] == "fit-001"
    assert len(fit.test_ids) == 1
    assert len(fit.notes) == 1 and "plotting" in fit.notes[0]
    assert fit.rmse_energy_mev_per_atom["test"] is not None


@pytest.mark.pacemaker
def test_small_dataset_caps_the_basis_and_keeps_a_potential_without_active_set(tmp_path: Path):
    from trainer_testlib import pacemaker_available

    from mlip_autopipec.trainer import load_calculator
    from mlip_autopipec.trainer.fit import resolve_command

    if not pacemaker_available():
        pytest.skip("pacemaker not installed")
    # Six 2-atom cells, default basis (30 functions): 5 train cells have 10 environments.
    atoms = _labelled(18)[::3]
    assert len(atoms) == 6 and all(len(a) == 2 for a in atoms)
    # pacemaker from a folder whose pace_activeset fails (a fault the real tool cannot be
    # made to produce once the basis is capped); pace_yaml2yace is the real one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pacemaker").symlink_to(Path(shutil.which(resolve_command("pacemaker")[0]) or ""))
    fake = bin_dir / "pace_activeset"
    fake.write_text(
        "#!/bin/sh\necho 'ValueError: Insufficient atomic environments (injected)' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    cfg = {"command": str(bin_dir / "pacemaker"), "max_epochs": 3, "test_fraction": 0.2}
    fit = fit_potential(atoms, cfg, tmp_path / "trainer" / "fit-001")
    assert fit.basis_size == 10
    assert any("basis capped at 10" in n for n in fit.notes)
    assert fit.asi is None and fit.yace.is_file()
    assert any("no active set" in n and "Insufficient" in n for n in fit.notes)
    assert json.loads((tmp_path / "trainer" / "current.json").read_text())["fit_dir"] == "fit-001"
    probe = atoms[0].copy()
    probe.calc = load_calculator(tmp_path)
    assert np.isfinite(probe.get_potential_energy())
    with pytest.raises(TrainerError, match="no active set"):
        load_calculator(tmp_path, extrapolation=True)


@pytest.mark.pacemaker
def test_capped_basis_builds_a_real_active_set(tmp_path: Path):
    from trainer_testlib import pacemaker_available

    if not pacemaker_available():
        pytest.skip("pacemaker not installed")
    atoms = _labelled(18)[::3]  # the six 2-atom cells with the default basis size
    fit = fit_potential(atoms, {"max_epochs": 3}, tmp_path / "fit")
    assert fit.basis_size == 10
    assert fit.asi is not None and fit.asi.is_file()
