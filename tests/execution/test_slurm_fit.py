"""Fits, isolated-atom references and MD walkers run in the Parsl pilot job on a real
(single-node) Slurm, not in the driver (issue 13: "a fit must not run on a login node").

Start Slurm with ``.ci/slurm/start.sh`` (root, Debian); without it these tests skip and say why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_slurm import SLURM_EXECUTION, assert_nothing_left

pytest.importorskip("parsl", reason="the cluster extra (parsl) is not installed")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.pwx,
    pytest.mark.pacemaker,
    pytest.mark.slow,
    pytest.mark.usefixtures("slurm", "pwx"),
]

RECIPE = """\
name: si-fit-on-slurm
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: 2}}
    rattle: {{stdev: 0.05, count: 2, seed: 1}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kpts: [2, 2, 2]
  input_data:
    system: {{ecutwfc: 12}}
trainer:
  cutoff: 4.0
  max_basis_size: 6
  max_epochs: 3
  reference: isolated_atoms   # the isolated Si atom's pw.x runs in the pilot job too
  reference_box: 6
  reference_box_step: 1
  reference_box_max: 7
  reference_box_tolerance: 500
execution:
{execution}
"""


def _is_slurm_job(where: dict[str, object]) -> None:
    """``where`` names a process inside a Slurm job, not this (driver) process."""
    assert where["pid"] != os.getpid(), where
    assert str(where["slurm_job_id"] or "").isdigit(), where
    assert "SLURM_JOB_ID" not in os.environ or where["slurm_job_id"] != os.environ["SLURM_JOB_ID"]


def test_fit_isolated_atoms_and_md_walker_run_in_the_pilot_job(tmp_path: Path) -> None:
    from mlip_autopipec.cli import main
    from mlip_autopipec.execution import make_executor
    from mlip_autopipec.execution.tasks import EXECUTION_JSON
    from mlip_autopipec.explore.md import WalkerRequest, run_walker
    from mlip_autopipec.lifecycle.store import Store
    from mlip_autopipec.recipe import load_recipe

    recipe = tmp_path / "si.yaml"
    recipe.write_text(RECIPE.format(execution=SLURM_EXECUTION))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    with Store.open(run_dir, create=False) as store:
        current = store.current_potential()
    assert current is not None
    executed = current["settings"]["execution"]
    _is_slurm_job(executed)
    fit_dir = run_dir / current["fit_dir"]
    on_disk = json.loads((fit_dir / EXECUTION_JSON).read_text())
    assert on_disk["slurm_job_id"] == executed["slurm_job_id"] and on_disk["seconds"] > 0
    # the fit really ran (pacemaker's log, the converted potential and its active set)
    assert (fit_dir / "pacemaker.log").stat().st_size > 0
    assert (fit_dir / "output_potential.yace").is_file()
    # the isolated atom's pw.x attempts (6 and 7 Å boxes) ran in the pilot job as well
    from mlip_autopipec.oracle.isolated import RECORD_FILE, REFERENCE_DIR

    record = json.loads((run_dir / REFERENCE_DIR / RECORD_FILE).read_text())["Si"]
    assert [lab["box"] for lab in record["labels"]] == [6.0, 7.0]
    for lab in record["labels"]:
        _is_slurm_job(lab["execution"])
    isolated = current["baseline"]["isolated_atoms"]["elements"]["Si"]
    _is_slurm_job(isolated["execution"])
    assert current["baseline"]["reference_energies"] == {"Si": record["energy"]}

    # an MD walker with that potential, through the same engine the loop's explore uses
    from ase.build import bulk

    request = WalkerRequest(
        key="w0",
        atoms=bulk("Si", "diamond", a=5.43),
        fit_dir=str(fit_dir),
        potential_id=int(current["id"]),
        ensemble="nvt",
        temperature_K=300.0,
        pressure_GPa=0.0,
        timestep_fs=1.0,
        steps=20,
        seed=7,
        gamma_select=5.0,
        gamma_halt=1e12,
        min_distance=1.0,
    )
    local = run_walker(request)
    assert local.stop_reason != "error", local.message
    execution = load_recipe(recipe).execution
    with make_executor(execution, 1, run_dir=tmp_path / "md-parsl") as executor:
        remote = executor.submit(run_walker, request).result(timeout=300)
    assert remote.stop_reason == local.stop_reason and remote.steps_done == local.steps_done
    assert remote.energies == pytest.approx(local.energies, abs=1e-8)
    _is_slurm_job(remote.where)
    assert local.where["pid"] == os.getpid()
    assert_nothing_left(tmp_path)
