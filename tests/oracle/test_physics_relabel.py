"""``oracle.theory_mismatch: relabel`` in a real run: pw.x rescues 1 of 3 fixed-occupation
Si cells with smearing, the other two are labelled again with the rescue's settings, and
the training set, ``status`` and the report show one level of theory."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from mlip_autopipec.errors import Interrupted
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle.relabel import (
    RELABEL_DIR,
    RELABEL_FILE,
    relabel_to_one_theory,
    relabelled_training_set,
)

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "physics")]
from physics_testlib import PSEUDO, needs_pwx  # noqa: E402

from cli_runner import run_cli  # noqa: E402

RECIPE = """\
name: si-relabel
structures:
  - file: cells.extxyz
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: 0.2            # Gamma only for the 8-atom cube
  koffset: [0, 0, 0]
  theory_mismatch: {mode}
  input_data:
    system: {{ecutwfc: 15}}
    electrons: {{conv_thr: 1.0e-8, electron_maxstep: 30}}
trainer:
  cutoff: 5.0
  max_basis_size: 8
  max_epochs: 8          # what is tested is the data, not the fit's quality
  kappa: 0.1
"""


def _cells() -> list:
    """8-atom Si cubes at Gamma; the one rattled by 0.03 Å (seed 1) does not converge with
    fixed occupations (100 erratic steps, measured) and the ladder rescues it with smearing."""
    out = []
    for rattle, seed, strain in ((0, 0, 0.0), (0.03, 1, 0.0), (0, 0, 0.02)):
        si8 = bulk("Si", "diamond", 5.43 * (1 + strain), cubic=True)
        if rattle:
            si8.rattle(rattle, seed=seed)
        out.append(si8)
    return out


def _recipe(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"{mode}.yaml"
    path.write_text(RECIPE.format(mode=mode))
    return path


def _interrupt(store: Store, run_dir: Path, cfg: dict) -> dict[str, int]:
    raise Interrupted(15)  # as if SIGTERM came right before the relabelling pw.x runs


@pytest.mark.slow
@pytest.mark.pwx
@needs_pwx
@pytest.mark.skipif(shutil.which("pacemaker") is None, reason="pacemaker not installed")
def test_relabel_gives_one_theory_and_survives_a_kill(tmp_path: Path) -> None:
    assert (PSEUDO / "Si.pz-vbc.UPF").is_file()
    write(tmp_path / "cells.extxyz", _cells())
    run_dir = tmp_path / "run"

    # 1. labelled with the default (exclude): two theories in the store
    proc = run_cli("run", str(_recipe(tmp_path, "exclude")), "--run-dir", str(run_dir),
                   "--stage", "label", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Store.open(run_dir, create=False) as store:
        rows = store.structure_rows()
        keys = [r["theory_key"] for r in rows]
        assert len(set(keys)) == 2
        rescued = [r["id"] for r in rows if " fixed " not in r["theory_key"]]
        assert len(rescued) == 1, keys
        fixed = {r["id"]: r["theory_key"] for r in rows if r["id"] not in rescued}
        assert all(k.endswith("LDA ecut=15/120Ry fixed nspin=1") for k in fixed.values())
        target = keys[[r["id"] for r in rows].index(rescued[0])]
        old_energy = {sid: store.label_energies()[sid] for sid in fixed}
        attempts_before = store.total_attempts()

        # 2. the switch is turned on and the run is killed right before the relabelling
        # pw.x runs: the decision is on disk, the copies wait in the relabel store
        oracle_cfg = json.loads((run_dir / "recipe.json").read_text())["oracle"]
        with pytest.raises(Interrupted):
            relabel_to_one_theory(store, oracle_cfg, run_dir, _interrupt, lambda m: None)
        record = json.loads((run_dir / RELABEL_FILE).read_text())
        assert record["target_key"] == target
        assert record["structures"] == sorted(fixed) and record["rescued"] == rescued
        assert record["settings"]["system.occupations"] == "smearing"
    with Store.open(run_dir / RELABEL_DIR, create=False) as rstore:
        assert rstore.counts().get("pending") == 2

    # 3. the resumed run (relabel on) labels them with the rescue's theory, then fits
    proc = run_cli("run", str(_recipe(tmp_path, "relabel")), "--run-dir", str(run_dir),
                   cwd=tmp_path, timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one level of theory: 2 structure(s) relabelled with the rescues' theory" in out
    assert "left out" not in out
    with Store.open(run_dir, create=False) as store:
        # history: the run store keeps the fixed-occupation labels as they were
        rows = {r["id"]: r for r in store.structure_rows()}
        assert {sid: rows[sid]["theory_key"] for sid in fixed} == fixed
        assert {sid: store.label_energies()[sid] for sid in fixed} == old_energy
        assert store.total_attempts() == attempts_before
        potential = store.current_potential()
        assert potential is not None
        assert potential["n_train"] + potential["n_test"] == 3  # nobody left out
        assert store.counts().get("trained") == 3
        training = relabelled_training_set(store.labelled_atoms(), run_dir)
    # the training set: one theory, the relabels' energies for the relabelled structures
    assert {a.info["theory_key"] for a in training} == {target}
    with Store.open(run_dir / RELABEL_DIR, create=False) as rstore:
        assert rstore.counts().get("trained") == 2
        relabels = {r["origin"]["structure"]: r for r in rstore.structure_rows()}
        assert sorted(relabels) == sorted(fixed)
        assert {r["theory_key"] for r in relabels.values()} == {target}
        relabel_attempts = rstore.total_attempts()
    for a in training:
        sid = a.info["structure_id"]
        if sid in fixed:
            assert a.get_potential_energy() == pytest.approx(relabels[sid]["energy_ev"])
            # a new calculation: at Γ only, these cubes are nearly metallic, and smearing
            # moved the perfect cube by 1.2 eV/atom (measured): mixing would have been wrong
            assert abs(a.get_potential_energy() - old_energy[sid]) > 1e-3
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["dft"]["relabel"]["structures"] == sorted(fixed)
    assert "One level of theory by relabelling" in (run_dir / "report" / "index.html").read_text()

    # 4. a rerun does nothing new: the decision is recorded, every relabel is fitted
    proc = run_cli("run", str(_recipe(tmp_path, "relabel")), "--run-dir", str(run_dir),
                   cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already covers" in proc.stdout + proc.stderr
    with Store.open(run_dir / RELABEL_DIR, create=False) as rstore:
        assert rstore.total_attempts() == relabel_attempts


def test_the_recorded_theory_applies_to_every_later_label(tmp_path: Path) -> None:
    from mlip_autopipec.fsutil import atomic_write_json
    from mlip_autopipec.oracle.relabel import relabel_record, relabelled_oracle_cfg

    cfg = {"kspacing": 0.2, "input_data": {"system": {"ecutwfc": 15}}}
    assert relabel_record(tmp_path) is None and relabelled_oracle_cfg(cfg, tmp_path) == cfg
    settings = {"system.occupations": "smearing", "system.smearing": "mv", "system.degauss": 0.02}
    atomic_write_json(tmp_path / RELABEL_FILE, {"target_key": "k", "settings": settings})
    for run_dir in (tmp_path, tmp_path / "heldout"):  # the held-out store follows its run
        system = relabelled_oracle_cfg(cfg, run_dir)["input_data"]["system"]
        assert system == {
            "ecutwfc": 15,
            "occupations": "smearing",
            "smearing": "mv",
            "degauss": 0.02,
        }
    assert cfg["input_data"]["system"] == {"ecutwfc": 15}  # the recipe's dict is not changed
    assert relabel_record(tmp_path / "elsewhere") is None
