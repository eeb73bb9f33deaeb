"""Faults the real pw.x cannot produce on demand, injected with tests/fakes/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from oracle_testlib import FAKES, oracle_cfg

from mlip_autopipec.errors import OracleError
from mlip_autopipec.oracle import (
    AttemptResult,
    EspressoOracle,
    FailureClass,
    label_serially,
    run_attempt,
)


def _oracle(tmp_path: Path, fake: str, **kw: object) -> EspressoOracle:
    pp = tmp_path / "pp" / "Si.fake.UPF"
    pp.parent.mkdir(exist_ok=True)
    pp.write_text("fake pseudopotential: the fake pw.x never reads it\n")
    return EspressoOracle(oracle_cfg(command=[str(FAKES / fake)], **kw), {"Si": pp})


def _first(tmp_path: Path, fake: str, **kw: object) -> AttemptResult:
    oracle = _oracle(tmp_path, fake, **kw)
    req = oracle.next_request("si", bulk("Si", "diamond", 5.43), [], tmp_path / "si")
    assert req is not None
    return run_attempt(req)


def test_killed_mid_write_is_crashed_and_retried_once(tmp_path: Path) -> None:
    res = label_serially(
        _oracle(tmp_path, "pw_killed_mid_write.py"),
        "si",
        bulk("Si", "diamond", 5.43),
        tmp_path / "si",
    )
    assert [r.failure_class for r in res] == [FailureClass.CRASHED] * 2
    assert res[0].returncode == -15
    assert "signal 15" in res[0].message
    assert res[0].n_scf == 2 and len(res[0].scf_history_ev) == 1  # partial output parsed
    assert res[1].step is not None and res[1].step["ladder"] == FailureClass.CRASHED
    assert res[1].params_diff == {"electrons.diagonalization": "cg"}
    assert (tmp_path / "si" / "attempt-02" / "espresso.pwo").is_file()


def test_garbage_bytes_are_crashed(tmp_path: Path) -> None:
    res = _first(tmp_path, "pw_garbage.py")
    assert res.failure_class == FailureClass.CRASHED
    assert res.returncode == 0
    assert res.energy is None and res.n_scf == 0


def test_exit_137_without_output_is_out_of_memory(tmp_path: Path) -> None:
    res = _first(tmp_path, "pw_exit137.py")
    assert res.failure_class == FailureClass.OUT_OF_MEMORY
    assert res.returncode == 137
    assert "signal 9" in res.message


def test_hang_past_timeout_is_walltime(tmp_path: Path) -> None:
    res = _first(tmp_path, "pw_hang.py", timeout=1.0)
    assert res.failure_class == FailureClass.WALLTIME
    assert "timeout" in res.message
    assert 0.9 < res.wall_time < 10
    assert res.pw_version == "6.7MaX"


def test_missing_program_is_crashed_not_raised(tmp_path: Path) -> None:
    res = _first(tmp_path, "no-such-pw.x")
    assert res.failure_class == FailureClass.CRASHED
    assert res.returncode is None


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    res = _first(tmp_path, "pw_killed_mid_write.py")
    full = AttemptResult(
        **{
            **{k: getattr(res, k) for k in res.to_dict()},
            "energy": -1.5,
            "forces": np.arange(6.0).reshape(2, 3),
            "stress": np.arange(6.0),
            "kgrid": (2, 2, 2),
            "step": {"ladder": "crashed", "index": 0, "set": {"a.b": 1}},
        }
    )
    back = AttemptResult.from_dict(json.loads(json.dumps(full.to_dict())))
    assert back.to_dict() == full.to_dict()
    assert isinstance(back.attempt_dir, Path)
    assert back.forces is not None and np.array_equal(back.forces, full.forces)
    assert back.kgrid == (2, 2, 2)
    assert back.scf_history_ev == res.scf_history_ev
    assert back.scf_accuracy == res.scf_accuracy_ev


def test_request_is_picklable(tmp_path: Path) -> None:
    import pickle

    oracle = _oracle(tmp_path, "pw_garbage.py")
    req = oracle.next_request("si", bulk("Si", "diamond", 5.43), [], tmp_path / "si")
    assert req is not None
    back = pickle.loads(pickle.dumps(req))
    assert back.argv == req.argv and back.attempt_dir == req.attempt_dir
    assert back.atoms == req.atoms and back.input_data == req.input_data


def test_recipe_ladders_replace_per_class(tmp_path: Path) -> None:
    pp = tmp_path / "Si.UPF"
    pp.write_text("x")
    mine = [{"set": {"electrons.mixing_beta": 0.1}, "note": "mine"}]
    cfg = oracle_cfg(
        retry={"max_attempts": 3, "ladders": {"scf_not_converged": mine, "crashed": []}}
    )
    oracle = EspressoOracle(cfg, {"Si": pp})
    assert oracle.ladders["scf_not_converged"] == mine
    assert oracle.ladders["crashed"] == []
    assert (
        oracle.ladders["charge_wrong"]
        == EspressoOracle(oracle_cfg(), {"Si": pp}).ladders["charge_wrong"]
    )
    assert oracle.max_attempts == 3
    # defaults filled in by the recipe loader: an empty ladders mapping keeps every default
    empty = EspressoOracle(oracle_cfg(retry={"max_attempts": 6, "ladders": {}}), {"Si": pp})
    assert set(empty.ladders) == set(oracle.ladders)
    with pytest.raises(OracleError, match="overlapping_atoms"):
        EspressoOracle(oracle_cfg(retry={"ladders": {"overlapping_atoms": [{}]}}), {"Si": pp})


def test_write_attempt_input_without_running(tmp_path: Path) -> None:
    from mlip_autopipec.oracle import write_attempt_input

    oracle = _oracle(tmp_path, "pw_hang.py")
    req = oracle.next_request("si", bulk("Si", "diamond", 5.43), [], tmp_path / "si")
    assert req is not None
    pwi = write_attempt_input(req)
    text = pwi.read_text()
    assert pwi == tmp_path / "si" / "attempt-01" / "espresso.pwi"
    assert "K_POINTS automatic" in text and "2 2 2  0 0 0" in text
    assert "Si.fake.UPF" in text
    assert not (pwi.parent / "espresso.pwo").exists()  # nothing ran
    bad = dataclasses.replace(req, attempt_dir=pwi / "below-a-file")
    with pytest.raises(OracleError, match="below-a-file"):
        write_attempt_input(bad)
