"""The run directory keeps its recipe; physics changes stop a rerun, others continue."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlip_autopipec.errors import RecipeChangedError, RunLockedError
from mlip_autopipec.lifecycle.lock import RunLock
from mlip_autopipec.lifecycle.rundir import (
    RECIPE_COPY,
    RECIPE_DATA,
    compare_recipes,
    prepare_run_dir,
)

BASE: dict[str, Any] = {
    "name": "si",
    "structures": [{"bulk": {"elements": ["Si"], "crystal": "diamond", "a": 5.43}}],
    "oracle": {
        "engine": "espresso",
        "command": "pw.x",
        "pseudo_dir": None,
        "pseudopotentials": {"Si": "Si.pbe-n-rrkjus_psl.1.0.0.UPF"},
        "kspacing": 0.25,
        "koffset": [0, 0, 0],
        "input_data": {
            "control": {},
            "system": {"ecutwfc": 30, "ecutrho": 240},
            "electrons": {"conv_thr": 1e-8},
        },
        "timeout": 1800,
        "min_distance": 0.5,
        "retry": {"max_attempts": 6, "ladders": {}},
    },
    "trainer": {"engine": "pacemaker", "cutoff": 5.0, "max_epochs": 100},
    "execution": {"engine": "local", "workers": None},
}


@dataclass(frozen=True)
class FakeRecipe:
    path: Path
    data: dict[str, Any]


def _changed(**edits: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    for dotted, value in edits.items():
        node = new
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return new


_DELETE = object()


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({}, []),
        ({"execution__workers": 8, "execution__engine": "parsl"}, []),
        ({"trainer__cutoff": 6.0, "trainer__max_epochs": 5}, []),
        ({"oracle__command": "mpirun -np 2 pw.x", "oracle__timeout": 60}, []),
        ({"oracle__retry__max_attempts": 2}, []),
        ({"structures": [*BASE["structures"], {"file": "more.xyz"}]}, []),
        ({"oracle__input_data__system__ecutwfc": 30.0}, []),  # same number
        ({"oracle__input_data__system__ecutwfc": 40}, ["oracle.input_data.system.ecutwfc"]),
        (
            {"oracle__input_data__system__input_dft": "PBEsol"},
            ["oracle.input_data.system.input_dft"],
        ),
        ({"oracle__input_data__system__ecutrho": _DELETE}, ["oracle.input_data.system.ecutrho"]),
        ({"oracle__pseudopotentials__Si": "Si.pz-vbc.UPF"}, ["oracle.pseudopotentials.Si"]),
        ({"oracle__kspacing": 0.2}, ["oracle.kspacing"]),
        ({"oracle__kspacing": None, "oracle__kpts": [4, 4, 4]}, ["oracle.kpts", "oracle.kspacing"]),
        ({"oracle__koffset": [1, 1, 1]}, ["oracle.koffset"]),
        (
            {"oracle__input_data__electrons__conv_thr": 1e-6, "oracle__kspacing": 0.3},
            ["oracle.input_data.electrons.conv_thr", "oracle.kspacing"],
        ),
    ],
)
def test_compare_recipes(edits, expected):
    assert compare_recipes(BASE, _changed(**edits)) == expected


def _recipe(tmp_path: Path, data: dict[str, Any], text: str = "name: si\n") -> FakeRecipe:
    path = tmp_path / "si.yaml"
    path.write_text(text)
    return FakeRecipe(path, data)


def test_run_dir_keeps_the_recipe_and_stops_on_physics_changes(tmp_path):
    run_dir = tmp_path / "runs" / "si"
    assert prepare_run_dir(run_dir, _recipe(tmp_path, BASE, "name: si # v1\n")) is None
    assert (run_dir / RECIPE_COPY).read_text() == "name: si # v1\n"
    assert json.loads((run_dir / RECIPE_DATA).read_text()) == json.loads(json.dumps(BASE))
    (run_dir / "marker").write_text("labels live here")

    # execution change: continues, the copy is updated
    prepare_run_dir(run_dir, _recipe(tmp_path, _changed(execution__workers=4), "v2\n"))
    assert (run_dir / RECIPE_COPY).read_text() == "v2\n"

    # physics change: refused, names the keys, nothing overwritten
    bad = _changed(oracle__input_data__system__ecutwfc=50, oracle__kspacing=0.3)
    with pytest.raises(RecipeChangedError) as err:
        prepare_run_dir(run_dir, _recipe(tmp_path, bad, "v3\n"))
    msg = str(err.value)
    assert "oracle.input_data.system.ecutwfc" in msg and "oracle.kspacing" in msg
    assert "--fresh" in msg
    assert err.value.exit_code == 2
    assert (run_dir / RECIPE_COPY).read_text() == "v2\n"

    # fresh: old run moved aside intact, new one started
    moved = prepare_run_dir(run_dir, _recipe(tmp_path, bad, "v3\n"), fresh=True)
    assert moved is not None and moved.name.startswith("si.old-")
    assert (moved / "marker").exists()
    assert not (run_dir / "marker").exists()
    assert (run_dir / RECIPE_COPY).read_text() == "v3\n"


def test_fresh_refuses_to_move_a_live_run(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, _recipe(tmp_path, BASE))
    with RunLock(run_dir), pytest.raises(RunLockedError):
        prepare_run_dir(run_dir, _recipe(tmp_path, BASE), fresh=True)
    assert (run_dir / RECIPE_DATA).exists()


def test_second_runner_does_not_touch_the_recipe_record_of_a_live_run(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, _recipe(tmp_path, BASE, "v1\n"))
    with RunLock(run_dir), pytest.raises(RunLockedError, match="locked by PID"):
        prepare_run_dir(run_dir, _recipe(tmp_path, _changed(execution__workers=1), "v2\n"))
    assert (run_dir / RECIPE_COPY).read_text() == "v1\n"
