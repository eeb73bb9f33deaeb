"""The README's quickstart recipe, end to end: real pw.x, real pacemaker, the report."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed"),
    pytest.mark.skipif(
        shutil.which("pacemaker", path=f"{Path(sys.executable).parent}") is None
        and shutil.which("pacemaker") is None,
        reason="pacemaker (python-ace) not installed",
    ),
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, timeout=1200)


def test_quickstart_recipe_end_to_end(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "si_quickstart.yaml"
    run_dir = tmp_path / "si-quickstart"
    proc = _cli("run", str(recipe), "--run-dir", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    status = json.loads(_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert set(status) == {"counts", "structures", "potential", "theories"}
    (theory,) = status["theories"]  # one level of theory, fitted
    assert theory["fitted"] and theory["theory_key"] == status["potential"]["theory_key"]
    n = len(status["structures"])
    assert n >= 20
    assert status["counts"]["trained"] == n
    assert sum(status["counts"].values()) == n
    for row in status["structures"]:
        assert set(row) == {
            "id", "state", "attempts", "failure", "energy_ev", "theory_key", "in_training_set"
        }  # fmt: skip
        assert row["theory_key"] == theory["theory_key"] and row["in_training_set"] is True
        assert row["failure"] is None and row["attempts"] >= 1
        # two-atom Si cells with this pseudopotential: about -138.7 eV per atom
        assert -140.0 < row["energy_ev"] / 2 < -137.0
    pot = status["potential"]
    assert Path(pot["path"]).is_file() and pot["path"].endswith(".yace")
    assert pot["n_train"] + pot["n_test"] == n and pot["n_test"] >= 1
    assert math.isfinite(pot["rmse_energy_mev_per_atom"])
    assert math.isfinite(pot["rmse_forces_mev_per_ang"])

    report = run_dir / "report"
    assert (report / "index.html").is_file()
    data = json.loads((report / "report.json").read_text())
    assert data["counts"] == status["counts"]
    assert data["status_potential"] == pot
    assert len(list(report.glob("*.png"))) >= 4  # parity x2, histograms, attempts

    # a rerun resumes: nothing is recomputed, no new potential
    again = _cli("run", str(recipe), "--run-dir", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already covers every labelled structure" in again.stderr
    status2 = json.loads(_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert status2 == status
