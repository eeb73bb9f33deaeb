"""The lifecycle with the real oracle types and (marked pwx) the real pw.x."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase.io import read

from mlip_autopipec.execution import make_executor
from mlip_autopipec.lifecycle.machine import Lifecycle
from mlip_autopipec.lifecycle.runner import label_all
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import PERMANENT, AttemptResult, EspressoOracle, run_attempt

from .pwx_driver import ORACLE_CFG, PSEUDO_DIR, si_cells
from .scripted import InlineExecutor

PSEUDO = PSEUDO_DIR / "Si.pz-vbc.UPF"


def test_real_attempt_results_round_trip_through_the_store(tmp_path):
    store = Store.open(tmp_path)
    life = Lifecycle(store, PERMANENT)
    (atoms,) = si_cells(1)
    sid = store.add_structure(atoms, "si")
    failed = AttemptResult(
        1,
        tmp_path / "a1",
        "scf_not_converged",
        "convergence NOT achieved",
        step=None,
        scf_history_ev=(1.0, 0.5),
        n_scf=100,
    )
    forces = np.array([[0.1, -0.2, 0.3], [-0.1, 0.2, -0.3]])
    stress = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    ok = AttemptResult(
        2,
        tmp_path / "a2",
        "converged",
        "",
        step={"set": {"x": 1}},
        params_diff={"electrons.mixing_beta": 0.3},
        energy=-213.5,
        free_energy=-213.6,
        forces=forces,
        stress=stress,
        kgrid=(4, 4, 4),
    )
    life.fire(sid, "start", number=1)
    life.fire(sid, "retry", result=failed)
    life.fire(sid, "label", result=ok)
    stored = [AttemptResult.from_dict(d) for d in store.attempts_of(sid)]
    assert stored[0] == failed
    assert stored[1].energy == ok.energy and stored[1].kgrid == (4, 4, 4)
    assert np.array_equal(stored[1].forces, forces)
    (labelled,) = store.labelled_atoms()
    assert labelled.get_potential_energy() == -213.5
    assert labelled.get_potential_energy(force_consistent=True) == -213.6
    assert np.array_equal(labelled.get_forces(), forces)
    assert np.array_equal(labelled.get_stress(), stress)
    store.close()


def test_resume_rebuilds_history_with_the_real_result_type(tmp_path):
    """A structure killed in scf_retry resumes with its recorded history (default from_dict)."""
    store = Store.open(tmp_path)
    life = Lifecycle(store, PERMANENT)
    (atoms,) = si_cells(1)
    sid = store.add_structure(atoms, "si")
    life.fire(sid, "start", number=1)
    life.fire(sid, "retry", result=AttemptResult(1, tmp_path / "x", "crashed", "boom"))
    seen: list[list[AttemptResult]] = []

    class Oracle:
        def preflight(self, atoms):
            return None

        def next_request(self, structure_id, atoms, history, workdir):
            seen.append(list(history))
            return None  # give up: quarantine

    counts = label_all(store, Oracle(), run_attempt, InlineExecutor(), tmp_path)
    assert counts["failed"] == 1
    assert seen == [[AttemptResult(1, tmp_path / "x", "crashed", "boom")]]
    store.close()


@pytest.mark.pwx
@pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed")
@pytest.mark.skipif(not PSEUDO.is_file(), reason=f"{PSEUDO} not installed")
def test_labels_equal_pw_x_output(tmp_path):
    """Stored labels are pw.x's own numbers (read back from espresso.pwo by ASE)."""
    oracle = EspressoOracle(ORACLE_CFG, {"Si": PSEUDO})
    with Store.open(tmp_path) as store:
        store.add_structures([(a, "si") for a in si_cells(2)])
        with make_executor({"engine": "local"}, 2) as ex:
            counts = label_all(store, oracle, run_attempt, ex, tmp_path)
        assert counts["labelled"] == 2
        for atoms in store.labelled_atoms():
            sid = atoms.info["structure_id"]
            pwo = tmp_path / "structures" / f"{sid:06d}" / "attempt-01" / "espresso.pwo"
            direct = read(pwo, format="espresso-out")
            assert atoms.get_potential_energy() == direct.get_potential_energy()
            assert np.array_equal(atoms.get_forces(), direct.get_forces())
            assert np.allclose(atoms.get_stress(), direct.get_stress(), rtol=0, atol=1e-12)
            assert np.allclose(atoms.positions, direct.positions, atol=1e-6)
