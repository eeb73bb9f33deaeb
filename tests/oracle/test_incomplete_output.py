"""Label integrity: an output that claims convergence without finite, complete numbers.

The fake pw.x (tests/fakes/pw_incomplete.py) prints a real converged pw.x 6.7 output with
one defect; none of them may become a label. Each is retried once with the same settings
from scratch and then quarantined as ``incomplete_output``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from oracle_testlib import FAKES, oracle_cfg

from mlip_autopipec.execution import make_executor
from mlip_autopipec.lifecycle.runner import label_all
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import EspressoOracle, FailureClass, label_serially, run_attempt
from mlip_autopipec.oracle.attempt import complete_label

MODES = {
    "no_forces": "no forces block",
    "nan_energy": "energy is nan",
    "inf_energy": "energy is inf",
    "nan_force": "force on atom 2 is not finite",
    "no_stress": "tstress was set but no stress block",
    "few_forces": "cannot be parsed",
}


def _oracle(tmp_path: Path, mode: str) -> EspressoOracle:
    pp = tmp_path / "pp" / "Si.fake.UPF"
    pp.parent.mkdir(exist_ok=True)
    pp.write_text("fake pseudopotential: the fake pw.x never reads it\n")
    cfg = oracle_cfg(command=[sys.executable, str(FAKES / "pw_incomplete.py"), mode])
    return EspressoOracle(cfg, {"Si": pp})


@pytest.mark.parametrize("mode", sorted(MODES))
def test_incomplete_output_is_never_a_label(tmp_path: Path, mode: str) -> None:
    atoms = bulk("Si", "diamond", 5.43)
    history = label_serially(_oracle(tmp_path, mode), "si", atoms, tmp_path / "si")
    assert [r.failure_class for r in history] == [FailureClass.INCOMPLETE_OUTPUT] * 2
    for res in history:
        assert not res.ok
        assert res.energy is None and res.forces is None and res.stress is None
        assert MODES[mode] in res.message
        assert res.returncode == 0 and res.n_scf == 6  # the rest of the output was read
    # the retry: same settings, from scratch, recorded as the incomplete_output step
    second = history[1]
    assert second.step is not None and second.step["ladder"] == FailureClass.INCOMPLETE_OUTPUT
    assert second.params_diff == history[0].params_diff == {}
    assert second.restart == "scratch"


def test_the_unmodified_output_is_a_label(tmp_path: Path) -> None:
    """Control: the undamaged pw.x output the fake starts from is a complete label."""
    from ase.io import read

    from mlip_autopipec.oracle.diagnose import diagnose

    pwo = FAKES.parent / "data" / "pwx" / "si_converged" / "espresso.pwo"
    text = pwo.read_text()
    assert diagnose(0, text).ok
    props = dict(read(pwo, format="espresso-out").calc.properties())
    label, problem = complete_label(props, 2, stress_requested=True)
    assert problem is None
    assert np.isfinite(label["energy"]) and label["forces"].shape == (2, 3)
    assert label["stress"].shape == (6,)


def test_stress_is_optional_only_when_not_requested() -> None:
    forces = np.zeros((2, 3))
    label, problem = complete_label(
        {"energy": -1.0, "free_energy": -1.0, "forces": forces}, 2, stress_requested=False
    )
    assert problem is None and label["stress"] is None
    _, problem = complete_label(
        {"energy": -1.0, "free_energy": float("nan"), "forces": forces}, 2, stress_requested=False
    )
    assert problem is not None and "free energy is nan" in problem
    _, problem = complete_label(
        {"energy": -1.0, "forces": forces, "stress": np.array([0, 0, 0, 0, 0, np.inf])},
        2,
        stress_requested=True,
    )
    assert problem is not None and "stress is not finite" in problem


@pytest.mark.parametrize("mode", sorted(MODES))
def test_runner_quarantines_incomplete_output_after_two_attempts(tmp_path: Path, mode: str) -> None:
    """Through the lifecycle runner and the local executor: no IntegrityError, no label."""
    oracle = _oracle(tmp_path, mode)
    run_dir = tmp_path / "run"
    with Store.open(run_dir) as store:
        (sid,) = store.add_structures([(bulk("Si", "diamond", 5.43), "si")])
        with make_executor({"engine": "local"}, 1) as ex:
            counts = label_all(store, oracle, run_attempt, ex, run_dir, handle_signals=False)
        assert counts.get("failed") == 1 and counts.get("labelled", 0) == 0
        assert store.state_of(sid) == "failed"
        assert store.labelled_atoms() == []
        attempts = store.attempts_of(sid)
        assert [a["failure_class"] for a in attempts] == [FailureClass.INCOMPLETE_OUTPUT] * 2
        (row,) = store.structure_rows()
        assert row["attempts"] == 2
        assert row["failure"].startswith(f"{FailureClass.INCOMPLETE_OUTPUT}: ")
        assert MODES[mode] in row["failure"]
