"""SIGKILL between a finished fit and its record in the store: ``status`` and
``load_calculator`` still name the same potential (the store's), and a rerun records a
new fit that both then name. Real pw.x (one 2-atom cell) and real pacemaker."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.trainer.calculator import find_fit, load_calculator

V1 = Path(__file__).parent / "data" / "rundir_v1"

pytestmark = [
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed"),
    pytest.mark.skipif(
        shutil.which("pacemaker", path=f"{Path(sys.executable).parent}") is None
        and shutil.which("pacemaker") is None,
        reason="pacemaker (python-ace) not installed",
    ),
]

#: The real CLI in a child whose stages.record_fit kills the child (SIGKILL) instead:
#: the fit folder is complete, the store has not recorded it.
_KILLED_BEFORE_RECORD = """
import os, signal, sys
from mlip_autopipec import stages

def killed(ctx, fit, theory_key=None):
    assert (fit.workdir / "potential.json").is_file()
    os.kill(os.getpid(), signal.SIGKILL)

stages.record_fit = killed
from mlip_autopipec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """A finished run (one recorded potential, fit-001) whose recipe gained a structure."""
    run_dir = tmp_path / "run"
    shutil.copytree(V1, run_dir)
    recipe = tmp_path / "recipe.yaml"
    text = (V1 / "recipe.yaml").read_text()
    recipe.write_text(
        text.replace("oracle:", "  - bulk: {element: Si, crystal: diamond, a: 5.50}\noracle:")
    )
    return run_dir, recipe


def _run_killed(run_dir: Path, recipe: Path) -> subprocess.CompletedProcess[str]:
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--workers", "1"]
    return subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_RECORD, *argv],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=run_dir.parent,
    )


def _agree(run_dir: Path) -> Path:
    """The fit folder status and load_calculator both name (asserting they agree)."""
    pot = status_json(run_dir)["potential"]
    fit_dir = find_fit(run_dir)
    assert Path(pot["path"]).parent == fit_dir
    calc = load_calculator(run_dir)
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
    return fit_dir


def test_kill_between_fit_and_record(tmp_path: Path) -> None:
    run_dir, recipe = _setup(tmp_path)
    proc = _run_killed(run_dir, recipe)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # the fit on disk is complete and the trainer's pointer moved to it ...
    assert (run_dir / "trainer" / "fit-002" / "potential.json").is_file()
    pointer = json.loads((run_dir / "trainer" / "current.json").read_text())
    assert pointer["fit_dir"] == "fit-002"
    # ... but it is not recorded: the store, status and load_calculator all say fit-001
    with Store.open(run_dir, create=False) as store:
        assert store.potential_ids() == [1]
        assert store.counts()["labelled"] == 1  # the new structure, labelled, untrained
    assert _agree(run_dir) == run_dir / "trainer" / "fit-001"


@pytest.mark.slow
def test_rerun_after_the_kill_records_a_new_fit(tmp_path: Path) -> None:
    run_dir, recipe = _setup(tmp_path)
    assert _run_killed(run_dir, recipe).returncode == -signal.SIGKILL
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--workers", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Store.open(run_dir, create=False) as store:
        assert store.total_attempts() == 7  # the killed run's label is kept
        assert store.counts()["trained"] == 7
        current = store.current_potential()
    assert current is not None and current["fit_dir"] == "trainer/fit-003"
    assert _agree(run_dir) == run_dir / "trainer" / "fit-003"
