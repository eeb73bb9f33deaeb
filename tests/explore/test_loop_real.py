"""The reduced active-learning loop, real pw.x and pacemaker (tests/explore/data/si_al_ci.yaml).

2-atom Si cells: seed labels and fit, one iteration of explore (NVT 1000 K + NPT 600 K),
held-out draw, D-optimal selection, labelling and refit, then a second exploration that
measures the refit potential and stops by the iteration budget.

One file for every test of the session's ``ci_run`` (the loop run once, uninterrupted): the
test suite gives whole files to its two pytest-xdist workers, so the loop is built once.
Parts: the loop's records; its report and progress (the active-learning figures drawn and
decoded in headless Chromium, the selected frames traced to their walker, one progress
line per iteration); SIGKILL of the loop at stages read from the store, then the rerun
ends where the uninterrupted run did.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from al_testlib import CI_RECIPE, needs_real_tools

from mlip_autopipec.explore.loop import HELDOUT_DIR, _say_iteration, iteration_rows, position
from mlip_autopipec.explore.select import REASONS
from mlip_autopipec.lifecycle.store import DB_NAME, Store, content_hash
from mlip_autopipec.report import AL_FIGURES, FIGURES, write_report

sys.path.insert(0, str(Path(__file__).parents[1]))

import report_screenshot  # noqa: E402

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
        assert pot is not None and pot["id"] == 3
        assert pot["n_train"] + pot["n_test"] == len(store.labelled_atoms())


def test_the_loop_hands_over_a_fit_with_the_trainers_own_settings(
    ci_run: dict[str, Any],
) -> None:
    """active_learning.refit_max_epochs 20: the seed fit and the refit stop there; after the
    loop the whole training set is fitted once more with trainer.max_epochs (60), continuing
    the loop's last fit, and scored next to the loop's last potential on every held-out frame."""
    from mlip_autopipec.explore.loop import loop_summary
    from mlip_autopipec.lifecycle.status import render_table, status_json

    with Store.open(ci_run["run_dir"], create=False) as store:
        limits = {
            pid: store.potential(pid)["settings"]["trainer"]["max_epochs"] for pid in (1, 2, 3)
        }
        assert limits == {1: 20, 2: 20, 3: 60}
        assert store.current_potential()["id"] == 3
        assert set(store.potential_members(3)) == set(store.potential_members(2))
        final = loop_summary(store)["final"]
        heldout = _rows(
            store.path, "SELECT COUNT(*) FROM al_candidates WHERE heldout_id IS NOT NULL"
        )[0][0]
    assert (final["potential"], final["loop_potential"]) == (3, 2)
    # it continues the loop's last fit (only the stopping rule differs), on the same data
    inputs = json.loads((ci_run["run_dir"] / "trainer" / "fit-003" / "fit_inputs.json").read_text())
    assert Path(inputs["continued_from"]).parent.name == "fit-002"
    assert final["heldout_frames"] == heldout == 4  # 2 per iteration
    for name in ("final", "loop"):
        assert final[f"{name}_heldout_rmse_energy_mev_per_atom"] > 0
        assert final[f"{name}_heldout_rmse_forces_mev_per_ang"] > 0
    # a different potential: its errors differ from the loop's last one
    assert final["final_heldout_rmse_forces_mev_per_ang"] != pytest.approx(
        final["loop_heldout_rmse_forces_mev_per_ang"], rel=1e-6
    )
    text = render_table(status_json(ci_run["run_dir"]))
    assert "final fit (trainer.max_epochs, after the loop's capped fits): potential 3" in text
    # the run output: the capped fits say they stop by design, the final one what it scored
    said = ci_run["output"]
    capped = [
        json.loads((ci_run["run_dir"] / "trainer" / f"fit-00{n}" / "potential.json").read_text())
        for n in (1, 2)
    ]
    assert all(fit["iterations"] <= 20 for fit in capped)
    stopped = sum(1 for fit in capped if not fit["converged"])
    assert stopped >= 1  # 20 iterations of BFGS do not converge these fits
    assert said.count("the loop's fit stopped at active_learning.refit_max_epochs") == stopped
    assert "raise trainer.max_epochs" not in said.split("autopipec: the final fit:")[0]
    assert f"final potential 3 on the run's {heldout} held-out frames: energy " in said


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


# -- the report and the progress of the loop ----------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_draws_every_active_learning_figure(ci_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ci_run["run_dir"], run_dir)
    index = write_report(run_dir)
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert set(data["figures"]) == set(FIGURES) | set(AL_FIGURES)
    for name in AL_FIGURES:
        assert data["figures"][name]["file"] == name, data["figures"][name]["reason"]
        assert (run_dir / "report" / name).read_bytes().startswith(PNG_MAGIC)

    detail = data["active_learning_detail"]
    conn = sqlite3.connect(run_dir / DB_NAME)
    selected = conn.execute(
        "SELECT iteration, walker, frame, gamma, structure_id FROM al_candidates"
        " WHERE state = 'selected' ORDER BY iteration, walker, frame"
    ).fetchall()
    walkers = conn.execute("SELECT iteration, key, temperatures FROM al_walkers").fetchall()
    conn.close()
    assert selected
    assert [
        (s["iteration"], s["walker"], s["frame"], s["gamma"], s["structure_id"])
        for s in detail["selected"]
    ] == selected
    assert {s["condition"] for s in detail["selected"]} <= {"nvt 1000 K", "npt 600 K 0 GPa"}
    # every walker's trace, on an MD time axis of timestep x sample_every
    assert len(detail["walkers"]) == len(walkers) == 4
    for w in detail["walkers"]:
        assert len(w["time_fs"]) == len(w["temperature_K"]) == len(w["energy_ev_per_atom"]) > 1
        assert w["time_fs"][1] == 2.0 * 5  # the recipe: timestep 2 fs (default), sample_every 5
        assert w["natoms"] == 2
    # one gamma histogram per iteration: every recorded frame
    assert sorted(detail["frames"]) == ["1", "2"]
    rows = {r["iteration"]: r for r in data["active_learning"]["iterations"]}
    for it, frames in detail["frames"].items():
        assert len(frames["gamma"]) == rows[int(it)]["frames"]

    page = index.read_text()
    for name in AL_FIGURES:
        assert f'alt="{AL_FIGURES[name]}"' in page
    assert "Selected frames (labelled with pw.x" in page

    if report_screenshot.find_chromium() is None:
        pytest.skip("no headless chromium (Debian: apt-get install chromium)")
    lone = tmp_path / "lone" / "index.html"
    lone.parent.mkdir()
    shutil.copy(index, lone)
    drawn = sum(1 for f in data["figures"].values() if f["file"])
    assert report_screenshot.loaded_images(lone) == (drawn, drawn)
    shot = report_screenshot.screenshot(lone, tmp_path / "report.png", height=6000)
    assert shot.read_bytes().startswith(PNG_MAGIC)


class _Ctx:
    def __init__(self, store: Store, recipe: Any):
        self.store = store
        self.recipe = recipe
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)


def test_one_progress_line_per_iteration(ci_run: dict[str, Any]) -> None:
    from mlip_autopipec.recipe import load_recipe

    recipe = load_recipe(ci_run["run_dir"] / "recipe.yaml")
    with Store.open(ci_run["run_dir"], create=False) as store:
        ctx = _Ctx(store, recipe)
        first, second = iteration_rows(store)
        _say_iteration(ctx, 1, refits_done=1, pwx_calls=12)  # type: ignore[arg-type]
        _say_iteration(ctx, 2, refits_done=1)  # type: ignore[arg-type]
    one, two = ctx.lines
    assert one.startswith("autopipec: active learning iteration 1: 2 walkers, ")
    assert f"{first['candidates']} candidates, {first['selected']} selected, " in one
    assert f"{first['labelled']} labelled" in one
    assert f"held-out (2) E {first['heldout_rmse_energy_mev_per_atom']:.1f} meV/atom" in one
    assert f"(refit: E {first['refit_heldout_rmse_energy_mev_per_atom']:.1f}" in one
    assert f"γ median {first['gamma_median']:.3g}, max {first['gamma_max']:.3g}" in one
    assert f"MD survival mean {first['survival_fs_mean']:.0f} fs" in one
    assert "pw.x calls 12 (no pw.x budget)" in one and "iterations 1 of 1" in one
    assert f"pw.x calls {second['pwx_calls_total']} (no pw.x budget)" in two
    assert two.endswith(second["stop_reason"])


def test_loop_structures_never_count_as_removed_from_the_recipe(
    ci_run: dict[str, Any], tmp_path: Path
) -> None:
    from mlip_autopipec.lifecycle.prune import sync_with_recipe
    from mlip_autopipec.recipe import build_structures, load_recipe
    from mlip_autopipec.stages import recipe_origin

    run_dir = tmp_path / "run"
    shutil.copytree(ci_run["run_dir"], run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    built = build_structures(recipe)
    with Store.open(run_dir, create=False) as store:
        ids = store.add_structures((s.atoms, s.source, recipe_origin(recipe, s)) for s in built)
        loop_ids = {int(r[0]) for r in store._conn.execute(
            "SELECT structure_id FROM al_candidates WHERE structure_id IS NOT NULL")}  # fmt: skip
        assert loop_ids and not loop_ids & set(ids)
        assert sync_with_recipe(store, ids, prune=True).pruned == ()  # nothing to prune
        # the recipe shrinks to its first structure: only recipe structures are pruned
        sync = sync_with_recipe(store, ids[:1], prune=True)
        assert set(sync.pruned_now) == set(ids) - {ids[0]}
        assert not loop_ids & store.pruned_ids()


# -- killed anywhere, then resumed --------------------------------------------------

Probe = Callable[[sqlite3.Connection, Path], bool]


def _stage(conn: sqlite3.Connection) -> tuple[int, str]:
    rows = dict(conn.execute("SELECT key, value FROM al_state").fetchall())
    # the loop writes its position after each stage; before the first, it is explore
    return int(rows.get("iteration", 1)), str(rows.get("stage", "explore"))


def _walkers(conn: sqlite3.Connection, iteration: int) -> int:
    sql = "SELECT COUNT(*) FROM al_walkers WHERE iteration = ?"
    return int(conn.execute(sql, (iteration,)).fetchone()[0])


def _fitting(conn: sqlite3.Connection, run_dir: Path, potentials: int) -> bool:
    """A fit is running: ``potentials`` recorded and the next fit folder made."""
    (n,) = conn.execute("SELECT COUNT(*) FROM potentials").fetchone()
    return int(n) == potentials and (run_dir / "trainer" / f"fit-{potentials + 1:03d}").is_dir()


KILL_POINTS: list[tuple[str, Probe]] = [
    ("mid-explore", lambda c, _: _stage(c) == (1, "explore") and _walkers(c, 1) >= 1),
    ("after select", lambda c, _: _stage(c) == (1, "label")),
    (
        "pw.x running",
        lambda c, _: (
            _stage(c) == (1, "label")
            and c.execute("SELECT COUNT(*) FROM structures WHERE state = 'running'").fetchone()[0]
            > 0
        ),
    ),
    # after a kill while labelling, the rerun's seed stages label and refit before the
    # loop's own label and train stages: the refit is the second fit wherever it runs
    ("refit", lambda c, d: _stage(c)[0] == 1 and _fitting(c, d, 1)),
    ("held-out of iteration 2", lambda c, _: _stage(c) == (2, "heldout")),
    ("final fit", lambda c, d: _stage(c) == (2, "done") and _fitting(c, d, 2)),
]


def _run_until(run_dir: Path, probe: Probe | None, timeout: float = 600) -> int | None:
    """Run the loop; SIGKILL its process group once ``probe`` holds. None: it was killed."""
    proc = subprocess.Popen(
        # one worker: walkers run one after another, so "a walker recorded, explore not
        # finished" is a window the probe can hit (two parallel walkers finish together)
        [
            *(sys.executable, "-m", "mlip_autopipec", "run", str(CI_RECIPE)),
            *("--run-dir", str(run_dir), "--workers", "1"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if probe is not None and (run_dir / DB_NAME).is_file():
                try:
                    with sqlite3.connect(run_dir / DB_NAME, timeout=5) as conn:
                        hit = probe(conn, run_dir)
                except sqlite3.OperationalError:  # tables not created yet
                    hit = False
                if hit:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return None
            time.sleep(0.05)
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _walker_rows(run_dir: Path) -> dict[tuple[int, str], float]:
    with sqlite3.connect(run_dir / DB_NAME) as conn:
        rows = conn.execute("SELECT iteration, key, wall_time FROM al_walkers").fetchall()
    return {(int(i), str(k)): float(w) for i, k, w in rows}


def _summary(run_dir: Path) -> dict[str, Any]:
    with Store.open(run_dir, create=False) as store:
        train = sorted(content_hash(a) for a in store.labelled_atoms())
        pot = store.latest_potential()
    with sqlite3.connect(run_dir / DB_NAME) as conn:
        decisions = conn.execute(
            "SELECT iteration, walker, frame, state, reason FROM al_candidates"
            " WHERE iteration = 1 ORDER BY walker, frame"
        ).fetchall()
        stage = _stage(conn)
    return {
        "train": train,
        "decisions": decisions,
        "stage": stage,
        "potentials": None if pot is None else pot["id"],
    }


@pytest.mark.slow
def test_kill_anywhere_then_resume(ci_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed = []
    seen: dict[tuple[int, str], float] = {}
    for name, probe in KILL_POINTS:
        code = _run_until(run_dir, probe)
        if code is None:
            killed.append(name)
        # a walker recorded before a kill is never run again
        now = _walker_rows(run_dir) if (run_dir / DB_NAME).is_file() else {}
        for key, wall in seen.items():
            assert now.get(key) == wall, f"walker {key} was redone after the kill at {name}"
        seen = now
    assert _run_until(run_dir, None) == 0
    assert len(killed) >= 4, f"only killed at {killed}"
    # pacemaker's start-up alone takes seconds: the fits are always hit
    assert {"refit", "final fit"} <= set(killed), killed
    for key, wall in seen.items():
        assert _walker_rows(run_dir)[key] == wall
    assert _summary(run_dir) == _summary(ci_run["run_dir"])
