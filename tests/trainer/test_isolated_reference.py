"""``trainer.reference: isolated_atoms`` in a real run: pw.x labels an isolated Si atom at
the labels' theory, its energy is the fit's reference (E0 in the .yace), and the .yace
alone still equals ``load_calculator``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from trainer_testlib import needs_pacemaker, needs_pwx

from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle.isolated import RECORD_FILE, REFERENCE_DIR, isolated_atom_cfg
from mlip_autopipec.trainer import load_calculator
from mlip_autopipec.trainer.baseline import REF_GIVEN, choose_reference_energies
from procs import processes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_runner import run_cli  # noqa: E402

RECIPE = """\
name: si-isolated-reference
structures:
  - bulk: {element: Si, crystal: diamond, a: 5.43}
    strain: {min: -0.02, max: 0.02, count: 3}
oracle:
  pseudopotentials: {Si: Si.pz-vbc.UPF}
  kspacing: 0.25
  koffset: [1, 1, 1]
  input_data:
    system: {ecutwfc: 15}
    electrons: {conv_thr: 1.0e-8}
trainer:
  cutoff: 5.0
  max_basis_size: 8
  max_epochs: 8          # what is tested is the data, not the fit's quality
  kappa: 0.1
  reference: isolated_atoms
  reference_box: 6          # small boxes for a fast test (not converged at 1 meV: 6 -> 8 Å
  reference_box_step: 2     # moves this atom by 80 meV, 8 -> 10 Å by 10 meV)
  reference_box_max: 8
  reference_box_tolerance: 200
"""


def test_isolated_atom_settings_follow_the_labels_theory() -> None:
    fixed = {"ecutwfc": 30, "ecutrho": 240, "occupations": "fixed", "other": {}}
    cfg = isolated_atom_cfg(
        {"kspacing": 0.1, "input_data": {"system": {"ecutwfc": 20}}}, fixed, "Si"
    )
    system = cfg["input_data"]["system"]
    # the labels' cutoffs (not the recipe's), Γ only, integer Hund's-rule moment
    assert (system["ecutwfc"], system["ecutrho"]) == (30, 240)
    assert cfg["kpts"] == [1, 1, 1] and "kspacing" not in cfg
    assert system["occupations"] == "fixed" and system["tot_magnetization"] == 2.0
    smeared = {**fixed, "occupations": "smearing", "smearing": "mv", "degauss": 0.02}
    system = isolated_atom_cfg({}, smeared, "Al")["input_data"]["system"]
    assert (system["smearing"], system["degauss"]) == ("mv", 0.02)
    assert "tot_magnetization" not in system  # a smeared atom's moment is free
    assert "tot_magnetization" not in isolated_atom_cfg({}, fixed, "Ne")["input_data"]["system"]


def test_one_to_one_warning_recommends_isolated_atoms() -> None:
    cells = [bulk("SiC", "zincblende", a=4.36 * (1 + e)) for e in (-0.02, 0.0, 0.02)]
    choice = choose_reference_energies(cells, [-260.0, -262.0, -261.0], ["C", "Si"], 4.5)
    assert choice.note is not None and "trainer.reference: isolated_atoms" in choice.note


@pytest.mark.slow
@pytest.mark.pwx
@needs_pwx
@needs_pacemaker
def test_isolated_atom_energies_are_the_references_of_the_yace(tmp_path: Path) -> None:
    from pyace import PyACECalculator

    (tmp_path / "r.yaml").write_text(RECIPE)
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(tmp_path / "r.yaml"), "--run-dir", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reference energies from isolated atoms (pw.x): Si" in proc.stdout + proc.stderr
    record = json.loads((run_dir / REFERENCE_DIR / RECORD_FILE).read_text())["Si"]
    # spin-polarised, integer moment (fixed occupations as the labels), same cutoffs
    assert record["settings"]["tot_magnetization"] == 2.0
    assert record["total_magmom"] == pytest.approx(2.0, abs=1e-3)
    assert record["theory_key"].endswith("LDA ecut=15/120Ry fixed nspin=2 +tot_magnetization")
    with Store.open(run_dir, create=False) as store:
        potential = store.current_potential()
        assert potential is not None
        labelled = store.labelled_atoms()
        label_key = labelled[0].info["theory_key"]
    assert label_key.endswith("LDA ecut=15/120Ry fixed nspin=1")
    reference = potential["baseline"]["reference_energies"]
    assert reference == {"Si": record["energy"]}
    # labelled in 6 and 8 Å boxes on the run's executor (a worker thread of the local pool),
    # the difference recorded in isolated_atoms.json and in the potential's baseline
    conv = record["box_convergence"]
    assert conv["boxes_ang"] == [6.0, 8.0] and conv["converged"]
    assert record["energy"] == conv["energies_ev"][1]
    assert all(lab["execution"]["thread"].startswith("attempt") for lab in record["labels"])
    in_potential = potential["baseline"]["isolated_atoms"]["elements"]["Si"]
    assert in_potential["difference_mev"] == conv["difference_mev"]
    fit_json = json.loads((run_dir / potential["fit_dir"] / "potential.json").read_text())
    assert fit_json["baseline"]["isolated_atoms"]["elements"]["Si"] == in_potential
    assert "box 6 -> 8 Å" in proc.stdout + proc.stderr
    assert potential["baseline"]["reference_method"] == REF_GIVEN
    # cohesive energy of diamond Si from pw.x (LDA, vbc, 15 Ry): a few eV per atom bound
    perfect = min(labelled, key=lambda a: abs(a.get_volume() / len(a) - 5.43**3 / 8))
    cohesive = perfect.get_potential_energy() / len(perfect) - record["energy"]
    assert -6.5 < cohesive < -4.0, cohesive

    alone = PyACECalculator(str(run_dir / potential["path"]))
    full = load_calculator(run_dir)
    atom = Atoms("Si", positions=[[0, 0, 0]], cell=[15, 15, 15], pbc=True)
    atom.calc = alone
    assert atom.get_potential_energy() == pytest.approx(record["energy"], abs=1e-6)
    for atoms in labelled[:3]:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = alone, full
        diff = (a.get_potential_energy() - b.get_potential_energy()) / len(atoms)
        assert abs(diff) < 1e-6
        assert np.allclose(a.get_forces(), b.get_forces(), atol=1e-8)

    # a rerun reuses the recorded atom (no new pw.x run) and refits nothing
    proc = run_cli("run", str(tmp_path / "r.yaml"), "--run-dir", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / REFERENCE_DIR / RECORD_FILE).read_text())["Si"] == record


def _live_pwx(root: Path) -> list[str]:
    """pw.x processes running in a folder under ``root``."""
    where = str(root)
    return [
        f"{p.args} in {p.cwd}" for p in processes() if "pw.x" in p.args and p.cwd.startswith(where)
    ]


@pytest.mark.pwx
@needs_pwx
def test_sigterm_while_an_isolated_atom_runs_stops_its_pwx(tmp_path: Path) -> None:
    """The isolated atoms' pw.x runs on the run's executor: SIGTERM stops it, the run exits
    143 and records no half-labelled box."""
    recipe = tmp_path / "r.yaml"
    # a 14 Å box at 15 Ry: long enough to be caught running
    recipe.write_text(
        RECIPE.replace("reference_box: 6 ", "reference_box: 14").replace(
            "reference_box_max: 8", "reference_box_max: 16"
        )
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip_autopipec", "run", str(recipe), "--run-dir", str(run_dir)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    reference = run_dir / REFERENCE_DIR
    try:
        deadline = time.monotonic() + 180
        while not _live_pwx(reference) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _live_pwx(reference), "no isolated-atom pw.x seen running"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "labelling isolated atoms with pw.x" in out + err and "Si in 14 Å" in out + err
    assert not _live_pwx(tmp_path)
    record = reference / RECORD_FILE
    assert not record.is_file() or not json.loads(record.read_text()).get("Si", {}).get("labels")
    with Store.open(run_dir, create=False) as store:
        assert store.current_potential() is None
