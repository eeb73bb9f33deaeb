"""Structures that left the recipe: visible in the run output, ``status`` and the report;
``run --prune`` leaves them out of labelling and training without deleting anything.

Real runs of 2-atom Si cells with the real pw.x (and pacemaker for the fit test).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import pandas as pd
import pytest

from cli_runner import run_cli
from mlip_autopipec.lifecycle.export import export
from mlip_autopipec.lifecycle.status import render_table, status_json
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.report import write_report

needs_pwx = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed")

RECIPE = """\
name: prune
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: {top}, count: {count}}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: 0.4
  input_data:
    system: {{ecutwfc: 12}}
trainer: {{max_epochs: 4, max_basis_size: 4, cutoff: 4.0, test_fraction: 0}}
execution:
  workers: 1
"""


def _run(tmp_path: Path, count: int, *flags: str, top: float = 0.02) -> str:
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(RECIPE.format(count=count, top=top))
    done = run_cli("run", str(recipe), "--run-dir", "run", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stderr


def _status(tmp_path: Path) -> dict[str, Any]:
    data = status_json(tmp_path / "run")
    json.dumps(data)
    return data


def _attempts(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "run" / "autopipec.sqlite")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])
    finally:
        conn.close()


@needs_pwx
@pytest.mark.slow  # 27-68 s (six real runs of the CLI, 5 pw.x calls) on a busy 2-core machine
def test_prune_leaves_removed_structures_out_of_labelling_and_comes_back(tmp_path: Path) -> None:
    # 5 strains in the store (pending: --stage train labels nothing), then the recipe keeps 3
    _run(tmp_path, 5, "--stage", "train")
    assert _status(tmp_path)["counts"]["pending"] == 5
    assert "not_in_recipe" not in _status(tmp_path)  # status --json keeps its keys
    err = _run(tmp_path, 3, "--stage", "label", "--prune")
    assert "--prune: 2 structure(s) no longer in the recipe are left out" in err
    assert "labelling: 3 structures, 3 to do" in err  # the pruned ones are no work
    assert "labelling done: 3 labelled\n" in err
    status = _status(tmp_path)
    assert status["not_in_recipe"] == {"used": [], "pruned": [2, 4]}  # strains -0.01, +0.01
    assert status["counts"]["labelled"] == 3 and status["counts"]["pending"] == 2
    assert _attempts(tmp_path) == 3  # the pruned ones cost no pw.x
    table = render_table(_status(tmp_path))
    assert "pruned: 2 structure(s) not in the recipe, left out of training" in table
    assert "pending (pruned)" in table

    # the decision sticks on a run without --prune
    err = _run(tmp_path, 3, "--stage", "label")
    assert "2 structure(s) pruned earlier stay out of training" in err
    assert _attempts(tmp_path) == 3

    # a recipe that drops one more, without --prune: visible, still used
    err = _run(tmp_path, 2, "--stage", "label", top=0.0)  # base, -0.02, 0.0: +0.02 goes
    assert "note: 1 structure(s) in the store are no longer in the recipe and are still" in err
    status = _status(tmp_path)
    assert status["not_in_recipe"] == {"used": [5], "pruned": [2, 4]}
    write_report(tmp_path / "run")
    data = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert data["not_in_recipe"] == status["not_in_recipe"]
    by_id = {s["id"]: s for s in data["structures"]}
    assert by_id[5]["not_in_recipe"] and not by_id[5]["pruned"]
    assert by_id[2]["pruned"] and by_id[4]["pruned"] and not by_id[1]["not_in_recipe"]
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "labelled (not in recipe)" in page and "pending (pruned)" in page
    assert "&#x27;autopipec run --prune&#x27; leaves them out" in page

    # pruned with its label: exports mark it; the pacemaker training set leaves it out
    _run(tmp_path, 2, "--stage", "label", "--prune", top=0.0)
    frames = ase.io.read(export(tmp_path / "run", "extxyz"), ":")
    assert [(f.info["structure_id"], f.info.get("pruned")) for f in frames] == [
        (1, None), (3, None), (5, True),
    ]  # fmt: skip
    with ase.db.connect(export(tmp_path / "run", "asedb")) as db:
        assert [r.structure_id for r in db.select(pruned=True)] == [5]
    table = pd.read_pickle(export(tmp_path / "run", "pacemaker"), compression="gzip")
    assert sorted(map(int, table["name"])) == [1, 3]

    # all five back in the recipe: restored; only the two never labelled cost pw.x
    err = _run(tmp_path, 5, "--stage", "label")
    assert "3 pruned structure(s) are in the recipe again" in err
    assert "not_in_recipe" not in _status(tmp_path)
    assert _status(tmp_path)["counts"]["labelled"] == 5
    assert _attempts(tmp_path) == 5
    conn = sqlite3.connect(tmp_path / "run" / "autopipec.sqlite")
    marks = conn.execute(
        "SELECT structure_id, trigger, source, dest FROM transitions"
        " WHERE trigger IN ('prune', 'restore') ORDER BY id"
    ).fetchall()
    conn.close()
    assert marks == [
        (2, "prune", "pending", "pending"),
        (4, "prune", "pending", "pending"),
        (5, "prune", "labelled", "labelled"),
        (2, "restore", "pending", "pending"),
        (4, "restore", "pending", "pending"),
        (5, "restore", "labelled", "labelled"),
    ]


@needs_pwx
@pytest.mark.long  # ~130 s: the default suite keeps the labelling half above and the loop's fits
def test_prune_refits_without_the_removed_structures(tmp_path: Path) -> None:
    """Real fits: a structure that left the recipe is trained on until ``--prune``, which
    refits without it (~130 s on a busy machine: three 4-iteration pacemaker fits, four reports)."""
    err = _run(tmp_path, 3)  # base, -0.02, 0.0, +0.02: 3 distinct
    assert "fitting on 3 structures" in err
    err = _run(tmp_path, 2, top=0.0)  # +0.02 (id 3) leaves the recipe
    assert "note: 1 structure(s) in the store are no longer in the recipe" in err
    assert "the current potential already covers every labelled structure" in err
    err = _run(tmp_path, 2, "--prune", top=0.0)
    assert "--prune: 1 structure(s) no longer in the recipe are left out" in err
    assert "fitting on 2 structures" in err and "(structures were pruned)" in err
    with Store.open(tmp_path / "run", create=False) as store:
        current = store.current_potential()
        assert current is not None
        assert store.potential_members(current["id"]) == [1, 2]
        assert store.state_of(3) == "trained" and store.label_energies()[3] < 0  # label kept
    err = _run(tmp_path, 3)  # back in the recipe: trained on again, no pw.x
    assert "1 pruned structure(s) are in the recipe again" in err
    assert "fitting on 3 structures" in err and "(pruned structures are back in the recipe)" in err
    assert _attempts(tmp_path) == 3
