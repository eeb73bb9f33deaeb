"""The reduced active-learning loop, real pw.x and pacemaker (tests/explore/data/si_al_ci.yaml).

2-atom Si cells: seed labels and fit, one iteration of explore (NVT 1000 K + NPT 600 K),
held-out draw, D-optimal selection, labelling and refit, then a second exploration that
measures the refit potential and stops by the iteration budget.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from al_testlib import CI_RECIPE, needs_real_tools

from mlip_autopipec.explore.loop import HELDOUT_DIR, iteration_rows, position
from mlip_autopipec.explore.select import REASONS
from mlip_autopipec.lifecycle.store import DB_NAME, Store, content_hash

pytestmark = needs_real_tools


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_loop_runs_and_stops_by_budget(ci_run: dict[str, Any]) -> None:
    run_dir = ci_run["run_dir"]
    assert ci_run["code"] == 0
    with Store.open(run_dir, create=False) as store:
        assert position(store) == (2, "done")
        rows = iteration_rows(store)
        assert [r["iteration"] for r in rows] == [1, 2]
        first, second = rows
        # iteration 1 explored with the seed fit and refitted; iteration 2 only measured
        assert first["parent_potential"] == 1 and first["potential"] == 2
        assert second["parent_potential"] == 2 and second["potential"] is None
        assert second["stop_reason"].startswith("stopped by budget, not converged")
        assert first["walkers"] == second["walkers"] == 2
        assert 1 <= first["selected"] <= 3
        assert first["labelled"] == first["selected"]
        assert first["heldout"] == first["heldout_labelled"] == 2
        for row in rows:
            assert row["heldout_rmse_energy_mev_per_atom"] >= 0
            assert row["heldout_rmse_forces_mev_per_ang"] >= 0
            assert row["frames"] > 0 and row["frames_hot"] > 0
            assert row["gamma_max"] >= row["gamma_median"] > 0
        assert second["pwx_calls_total"] == store.total_attempts() + _heldout_attempts(run_dir)
        # every selected frame is a trained structure that records where it came from
        selected = _rows(
            store.path,
            "SELECT c.structure_id, c.gamma, c.walker, c.frame, s.source, s.state"
            " FROM al_candidates c JOIN structures s ON s.id = c.structure_id"
            " WHERE c.state = 'selected'",
        )
        assert len(selected) == first["selected"]
        for _sid, gamma, walker, frame, source, state in selected:
            assert gamma > 5.0
            assert state == "trained"
            assert source.startswith(f"md it1 {walker} ") and f"frame {frame} " in source
        pot = store.latest_potential()
        assert pot is not None and pot["id"] == 2
        assert pot["n_train"] + pot["n_test"] == len(store.labelled_atoms())


def test_every_candidate_is_decided_with_a_reason(ci_run: dict[str, Any]) -> None:
    db = ci_run["run_dir"] / DB_NAME
    rows = _rows(db, "SELECT state, reason, gamma FROM al_candidates WHERE iteration = 1")
    for state, reason, gamma in rows:
        assert state in ("explored", "heldout", "selected", "rejected")
        if state == "rejected":
            assert reason in REASONS
            assert gamma > 5.0
        else:
            assert reason is None
        if state == "explored":
            assert gamma <= 5.0


def test_selected_frames_carry_their_provenance(ci_run: dict[str, Any]) -> None:
    """Issue 13: every loop structure records its iteration, origin (walker, condition,
    frame), the potential that proposed it and its gamma at selection."""
    db = ci_run["run_dir"] / DB_NAME
    rows = _rows(
        db,
        "SELECT c.iteration, c.walker, c.frame, c.gamma, c.potential, s.iteration, s.origin,"
        " s.parent_potential, s.gamma FROM al_candidates c JOIN structures s"
        " ON s.id = c.structure_id WHERE c.state = 'selected'",
    )
    assert rows
    for it, walker, frame, gamma, pid, s_it, origin, parent, s_gamma in rows:
        o = json.loads(origin)
        assert (s_it, parent) == (it, pid) and s_it >= 1
        assert s_gamma == pytest.approx(gamma)
        assert o["kind"] == "md" and (o["walker"], o["frame"], o["iteration"]) == (
            walker,
            frame,
            it,
        )
        assert o["condition"]["temperature_K"] > 0


def test_heldout_frames_are_never_trained_on(ci_run: dict[str, Any]) -> None:
    run_dir = ci_run["run_dir"]
    with Store.open(run_dir / HELDOUT_DIR, create=False) as held:
        held_atoms = held.labelled_atoms()
        assert len(held_atoms) == 4  # 2 per iteration, both labelled
        held_hashes = {content_hash(a) for a in held_atoms}
    with Store.open(run_dir, create=False) as store:
        train_hashes = {content_hash(a) for a in store.labelled_atoms()}
    assert held_hashes and not held_hashes & train_hashes
    fit = json.loads((run_dir / "trainer" / "fit-002" / "potential.json").read_text())
    assert len(fit["train_ids"]) + len(fit["test_ids"]) == len(train_hashes)


def test_rerun_resumes_at_done_without_new_work(ci_run: dict[str, Any]) -> None:
    from mlip_autopipec.pipeline import run

    run_dir = ci_run["run_dir"]
    db = run_dir / DB_NAME
    before = (
        _rows(db, "SELECT COUNT(*) FROM attempts")[0][0] + _heldout_attempts(run_dir),
        _rows(db, "SELECT iteration, key, wall_time FROM al_walkers ORDER BY 1, 2"),
        _rows(db, "SELECT COUNT(*) FROM potentials")[0][0],
    )
    assert run(CI_RECIPE, run_dir=run_dir, workers=2) == 0
    after = (
        _rows(db, "SELECT COUNT(*) FROM attempts")[0][0] + _heldout_attempts(run_dir),
        _rows(db, "SELECT iteration, key, wall_time FROM al_walkers ORDER BY 1, 2"),
        _rows(db, "SELECT COUNT(*) FROM potentials")[0][0],
    )
    assert after == before


def _heldout_attempts(run_dir: Path) -> int:
    return int(_rows(run_dir / HELDOUT_DIR / DB_NAME, "SELECT COUNT(*) FROM attempts")[0][0])


@pytest.mark.parametrize("structure", ["training", "distorted"])
def test_walker_gamma_on_training_and_distorted_cells(
    ci_run: dict[str, Any], structure: str
) -> None:
    """The loop's potential: gamma <= ~1 on its training cells, large far from them."""
    import numpy as np

    from mlip_autopipec.trainer.calculator import load_calculator

    run_dir = ci_run["run_dir"]
    calc = load_calculator(run_dir / "trainer" / "fit-002", extrapolation=True)
    with Store.open(run_dir, create=False) as store:
        cells = [a for a in store.labelled_atoms() if not a.info["source"].startswith("md ")]
    grades = []
    for atoms in cells:
        probe = atoms.copy()
        if structure == "distorted":
            probe.set_cell(probe.cell * 0.85, scale_atoms=True)
            probe.rattle(0.25, seed=1)
        probe.calc = calc
        probe.get_potential_energy()
        grades.append(float(np.max(calc.results["gamma"])))
    if structure == "training":
        assert max(grades) <= 1.05
    else:
        assert min(grades) > 5.0


def test_loop_summary_for_status(ci_run: dict[str, Any], tmp_path: Path) -> None:
    from mlip_autopipec.explore.loop import loop_summary

    with Store.open(ci_run["run_dir"], create=False) as store:
        summary = loop_summary(store)
    assert summary is not None
    assert (summary["iteration"], summary["stage"], summary["converged"]) == (2, "done", False)
    assert summary["outcome"].startswith("stopped by budget")
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2]
    json.dumps(summary)  # JSON-safe for status --json
    with Store.open(tmp_path / "plain") as plain:
        assert loop_summary(plain) is None
        tables = plain._conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'al_%'")
        assert tables.fetchall() == []


def test_status_carries_the_loop_state(ci_run: dict[str, Any]) -> None:
    """status --json: iteration, stage, outcome and the per-iteration figures (issue 13)."""
    from mlip_autopipec.lifecycle.status import render_table, status_json

    data = status_json(ci_run["run_dir"])
    al = data["active_learning"]
    assert al["outcome"] and al["iterations"] and al["iteration"] >= 1
    assert "active learning: iteration" in render_table(data)


def test_report_has_a_row_per_loop_iteration(ci_run: dict[str, Any]) -> None:
    """The report's active-learning section: the outcome and one row per iteration."""
    from mlip_autopipec.report import collect, write_report

    index = write_report(ci_run["run_dir"])
    data = collect(ci_run["run_dir"])
    html = index.read_text()
    section = html.split("<h2>Active learning</h2>", 1)[1].split("<h2>", 1)[0]
    assert "Outcome:" in section and data["active_learning"]["outcome"] in section
    assert section.count("<tr>") == 1 + len(data["active_learning"]["iterations"])
