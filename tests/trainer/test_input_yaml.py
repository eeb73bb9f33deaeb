"""input.yaml generation: pure checks, then pacemaker's own reader (--dry-run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import needs_pacemaker
from ruamel.yaml import YAML
from si_data import si_cells

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.process import run_process
from mlip_autopipec.trainer.baseline import fit_reference_energies
from mlip_autopipec.trainer.config import with_defaults
from mlip_autopipec.trainer.dataset import build_dataframe, write_dataframe
from mlip_autopipec.trainer.fit import resolve_command
from mlip_autopipec.trainer.input_yaml import build_input, dump_yaml, write_input


def _input(**over):
    cfg = with_defaults(over)
    return build_input(cfg, elements=["Si"], train_file="train.pckl.gzip", test_file="t.pckl.gzip")


def test_recipe_keys_map_to_pacemaker_keys():
    data = _input(
        cutoff=4.5, batch_size=7, max_epochs=13, kappa=0.1, max_basis_size=21, ladder_step=5, seed=3
    )
    assert data["seed"] == 3
    assert data["potential"]["bonds"]["ALL"]["rcut"] == 4.5
    assert data["potential"]["elements"] == ["Si"]
    assert data["potential"]["functions"]["number_of_functions_per_element"] == 21
    assert data["potential"]["deltaSplineBins"] == 0.01
    assert data["fit"]["maxiter"] == 13
    assert data["fit"]["loss"]["kappa"] == 0.1
    assert data["fit"]["ladder_step"] == 5
    assert data["backend"] == {
        "evaluator": "pyace",
        "batch_size": 7,
        "display_step": 10,
        "parallel_mode": "serial",
    }
    assert data["data"] == {"filename": "train.pckl.gzip", "test_filename": "t.pckl.gzip"}


def test_backend_section_always_written():
    for backend in ("pyace", "tensorpot"):
        text = dump_yaml(_input(backend=backend))
        loaded = YAML(typ="safe").load(text)
        assert loaded["backend"]["evaluator"] == backend
    assert "ladder_step" not in _input()["fit"]


def test_zbl_auto_and_explicit_inner_cutoff():
    auto = _input(physics_baseline={"type": "ZBL"})
    assert auto["fit"]["repulsion"] == "auto"
    assert "inner_cutoff_type" not in auto["potential"]["bonds"]["ALL"]
    explicit = _input(physics_baseline={"type": "ZBL", "inner_cutoff": 1.2})
    bonds = explicit["potential"]["bonds"]["ALL"]
    assert (bonds["inner_cutoff_type"], bonds["r_in"]) == ("zbl", 1.2)
    assert "repulsion" not in explicit["fit"]
    # LJ is handled outside pacemaker: nothing in the potential section.
    lj = _input(physics_baseline={"type": "LJ", "epsilon": 0.01, "sigma": 2.0, "rc": 5.0})
    assert (
        "inner_cutoff_type" not in lj["potential"]["bonds"]["ALL"] and "repulsion" not in lj["fit"]
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "torch"},
        {"physics_baseline": {"type": "Morse"}},
        {"physics_baseline": {"type": "LJ", "sigma": 2.0}},
        {"test_fraction": 1.0},
        {"cutoff": 0},
        {"max_epochs": 0},
    ],
)
def test_bad_settings_are_trainer_errors(bad):
    with pytest.raises(TrainerError, match="trainer"):
        with_defaults(bad)


def _lj_labelled(n):
    """Si cells with (real, cheap) LJ labels: enough for pacemaker's reader."""
    out = []
    for atoms in si_cells(n, seed=5):
        work = atoms.copy()
        work.calc = LennardJones(epsilon=1.0, sigma=2.1, rc=5.0)
        atoms.calc = SinglePointCalculator(
            atoms, energy=work.get_potential_energy(), forces=work.get_forces()
        )
        out.append(atoms)
    return out


@pytest.mark.pacemaker
@needs_pacemaker
@pytest.mark.parametrize(
    "over",
    [
        {},
        {"physics_baseline": {"type": "ZBL", "inner_cutoff": 1.5}, "ladder_step": 4},
        {"physics_baseline": {"type": "ZBL"}, "max_basis_size": 5},
    ],
    ids=["default", "zbl-inner-ladder", "zbl-auto"],
)
def test_pacemaker_dry_run_accepts_generated_input(tmp_path: Path, over):
    atoms = _lj_labelled(6)
    ids = [str(a.info["structure_id"]) for a in atoms]
    ref = fit_reference_energies(
        [a.get_chemical_symbols() for a in atoms], [a.get_potential_energy() for a in atoms], ["Si"]
    )
    write_dataframe(build_dataframe(atoms[:4], ids[:4], ref, None), tmp_path / "train.pckl.gzip")
    write_dataframe(build_dataframe(atoms[4:], ids[4:], ref, None), tmp_path / "test.pckl.gzip")
    cfg = with_defaults(over)
    write_input(
        build_input(cfg, elements=["Si"], train_file="train.pckl.gzip", test_file="test.pckl.gzip"),
        tmp_path / "input.yaml",
    )
    argv = [*resolve_command("pacemaker"), "input.yaml", "--dry-run", "-l", "dry.log"]
    res = run_process(argv, tmp_path, stdout=tmp_path / "out", stderr=tmp_path / "err", timeout=300)
    err = (tmp_path / "err").read_text()
    assert res.returncode == 0, err[-2000:]
    log = (tmp_path / "dry.log").read_text()
    assert "Dry run is finished" in log
    assert "4 structures found" in log and "2 structures found" in log
    # pacemaker's own view of the basis it built from our keys.
    from pyace import BBasisConfiguration

    target = BBasisConfiguration(str(tmp_path / "target_potential.yaml"))
    assert target.total_number_of_functions == cfg["max_basis_size"]
    block = target.funcspecs_blocks[0]
    assert block.rcutij == pytest.approx(cfg["cutoff"])
    if "inner_cutoff" in cfg["physics_baseline"]:
        assert block.inner_cutoff_type == "zbl"
        assert block.r_in == pytest.approx(1.5)
    else:
        assert block.inner_cutoff_type == "distance"
