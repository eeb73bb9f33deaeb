"""The report and the progress of the reduced real loop (the session's ``ci_run``: no extra
pw.x or pacemaker): the active-learning figures drawn and decoded in headless Chromium,
the selected frames traced to their walker, and one progress line per iteration.

(Owned by the ux helper; it sits here to share the ``ci_run`` fixture of this folder.)
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from al_testlib import needs_real_tools

from mlip_autopipec.explore.loop import _say_iteration, iteration_rows
from mlip_autopipec.lifecycle.store import DB_NAME, Store
from mlip_autopipec.report import AL_FIGURES, FIGURES, write_report

sys.path.insert(0, str(Path(__file__).parents[1]))

import report_screenshot  # noqa: E402

pytestmark = needs_real_tools
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
