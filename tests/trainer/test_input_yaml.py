"""input.yaml generation: pure checks, then pacemaker's own reader (--dry-run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML
from si_data import si_cells
from trainer_testlib import needs_pacemaker

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.process import run_process
from mlip_autopipec.trainer.baseline import fit_reference_energies
from mlip_autopipec.trainer.config import with_defaults
from mlip_autopipec.trainer.dataset import build_dataframe, write_dataframe
from mlip_autopipec.trainer.fit import resolve_command
from mlip_autopipec.trainer.input_yaml import build_input, dump_yaml, write_input
from mlip_autopipec.trainer.zbl import pair_key, zbl_cutoffs


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


def test_convergence_keys_map_to_pacemaker_early_stopping():
    fit = _input(min_loss_change=1e-3, loss_patience=40)["fit"]
    assert fit["min_relative_train_loss_per_iter"] == 1e-3
    assert fit["early_stopping_patience"] == 40
    assert "min_relative_train_loss_per_iter" not in _input(min_loss_change=None)["fit"]


def test_backend_section_always_written():
    for backend in ("pyace", "tensorpot"):
        text = dump_yaml(_input(backend=backend))
        loaded = YAML(typ="safe").load(text)
        assert loaded["backend"]["evaluator"] == backend
    assert "ladder_step" not in _input()["fit"]


def test_zbl_inner_cutoff_from_covalent_radii_or_recipe_never_from_data():
    # Issue 11.6: the inner cutoff is physics (covalent radii), not pacemaker's
    # `repulsion: auto` (the shortest distance in the training set).
    rule = _input(physics_baseline={"type": "ZBL"})
    assert "repulsion" not in rule["fit"]
    si = rule["potential"]["bonds"]["Si"]
    assert si["inner_cutoff_type"] == "zbl"
    assert si["r_in"] == pytest.approx(0.75 * 2 * 1.11)  # ase.data.covalent_radii[Si]
    assert si["delta_in"] == pytest.approx(0.25 * 2 * 1.11)
    explicit = _input(physics_baseline={"type": "ZBL", "inner_cutoff": 1.2, "delta_in": 0.3})
    bonds = explicit["potential"]["bonds"]["Si"]
    assert (bonds["inner_cutoff_type"], bonds["r_in"], bonds["delta_in"]) == ("zbl", 1.2, 0.3)
    assert "repulsion" not in explicit["fit"]
    # LJ is handled outside pacemaker: nothing in the potential section.
    lj = _input(physics_baseline={"type": "LJ", "epsilon": 0.01, "sigma": 2.0, "rc": 5.0})
    assert list(lj["potential"]["bonds"]) == ["ALL"] and "repulsion" not in lj["fit"]
    assert "inner_cutoff_type" not in lj["potential"]["bonds"]["ALL"]


def test_zbl_cutoffs_per_pair():
    cfg = with_defaults(
        {"physics_baseline": {"type": "ZBL", "inner_cutoff": {"Si-C": 1.3}, "delta_in": 0.2}}
    )
    pairs = zbl_cutoffs(cfg["physics_baseline"], ["Si", "C"])
    assert sorted(pairs) == ["C-C", "C-Si", "Si-Si"]
    assert pairs["C-Si"]["r_in"] == 1.3 and pairs["C-Si"]["source"] == "recipe"
    assert pairs["C-C"]["r_in"] == pytest.approx(0.75 * 2 * 0.76)
    assert all(p["delta_in"] == 0.2 for p in pairs.values())
    data = build_input(cfg, elements=["C", "Si"], train_file="t", test_file=None, zbl=pairs)
    assert data["potential"]["bonds"]["CSi"]["r_in"] == 1.3
    assert data["potential"]["bonds"]["Si"]["r_in"] == pytest.approx(1.665)
    with pytest.raises(TrainerError, match="not a pair"):
        zbl_cutoffs({"type": "ZBL", "inner_cutoff": {"Si-Ge": 1.0}}, ["Si", "C"])
    with pytest.raises(TrainerError, match="zero distance"):
        zbl_cutoffs({"type": "ZBL", "inner_cutoff": 0.5, "delta_in": 0.6}, ["Si"])


@given(
    st.lists(
        st.sampled_from(["H", "C", "O", "Si", "Fe", "W"]), min_size=1, max_size=4, unique=True
    ),
    st.floats(0.3, 1.2),
    st.floats(0.05, 0.29),
)
def test_zbl_rule_is_symmetric_and_switch_stays_above_zero(elements, f_in, f_delta):
    pairs = zbl_cutoffs(
        {"type": "ZBL", "inner_fraction": f_in, "delta_fraction": f_delta}, elements
    )
    n = len(elements)
    assert len(pairs) == n * (n + 1) // 2
    for key, p in pairs.items():
        a, b = key.split("-")
        assert pair_key(b, a) == key
        assert 0 < p["r_in"] - p["delta_in"] < p["r_in"]
        assert p["r_in"] == pytest.approx(f_in * p["covalent_radii_sum"], abs=1e-6)


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
    elif cfg["physics_baseline"]["type"] == "ZBL":  # the covalent-radii rule (issue 11.6)
        assert block.inner_cutoff_type == "zbl"
        assert block.r_in == pytest.approx(0.75 * 2 * 1.11)
    else:
        assert block.inner_cutoff_type == "distance"


def _previous_fit(
    folder: Path, species: str, settings: dict[str, Any], basis: int, with_settings: bool
) -> Path:
    """A previous fit folder as the trainer leaves it (only what write_inputs reads); its
    record without ``settings`` as written before they were recorded."""
    from mlip_autopipec.trainer.config import settings_fingerprint, with_defaults

    folder.mkdir()
    (folder / "output_potential.yaml").write_text(f"species:\n  - speciesblock: {species}\n")
    record = {
        "settings_fingerprint": settings_fingerprint(settings),
        "basis_size": basis,
        "baseline": {"reference_energies": {"Si": -1.5}, "reference_method": "x"},
    }
    if with_settings:
        record["settings"] = with_defaults(settings)
    (folder / "potential.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("with_settings", [True, False])
@pytest.mark.parametrize(
    ("refit", "species", "before", "continued", "note"),
    [
        ("continue", "Si", {}, True, None),
        ("fresh", "Si", {}, False, None),
        ("continue", "C", {}, False, "is for ['C']"),
        ("continue", "Si", {"kappa": 0.9}, False, "settings changed"),
        ("continue", "Si", {}, False, "basis grows from 4 to 7"),
        # only the stopping rule differs: continued when the record says so
        ("continue", "Si", {"max_epochs": 6, "min_loss_change": 1e-3}, True, None),
    ],
)
def test_write_inputs_continues_only_from_a_matching_potential(
    tmp_path: Path, refit, species, before, continued, note, with_settings
):
    from mlip_autopipec.trainer.config import settings_fingerprint
    from mlip_autopipec.trainer.pacemaker import PacemakerTrainer

    cfg = {"refit": refit, "max_epochs": 5, "max_basis_size": 7}
    if before and not with_settings:
        # a record without settings has only the whole fingerprint to compare
        continued, note = False, "settings changed"
    previous = _previous_fit(
        tmp_path / "fit-001",
        species,
        {**cfg, **before},
        4 if note and "grows" in note else 7,
        with_settings,
    )
    workdir = tmp_path / "fit-002"
    PacemakerTrainer().write_inputs(_lj_labelled(5), cfg, workdir, initial_potential=previous)
    inputs = json.loads((workdir / "fit_inputs.json").read_text())
    text = (workdir / "input.yaml").read_text()
    assert ("filename: initial_potential.yaml" in text) is continued
    assert (workdir / "initial_potential.yaml").is_file() is continued
    if continued:  # the previous shape and targets are kept
        assert inputs["basis_size"] == 7
        assert inputs["baseline"]["reference_energies"] == {"Si": -1.5}
    else:
        assert "functions" in YAML(typ="safe").load(text)["potential"]
    notes = " ".join(inputs["notes"])
    assert (note in notes) if note else "refit from scratch" not in notes
    assert inputs["settings_fingerprint"] == settings_fingerprint(cfg)
