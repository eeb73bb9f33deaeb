"""The driver of the stages: order, the loop, resuming at the stored iteration and stage,
and when a fit is due. The stages here are recording stand-ins for pw.x/pacemaker: what is
tested is the driver's bookkeeping over a real store, not the science."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec import pipeline, stages
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.stages import RunContext, StageResult


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing is recorded."""


@dataclass
class Script:
    """Stage stand-ins that log (iteration, stage) and can die at the n-th stage run."""

    kill_at: int | None = None
    calls: int = 0

    def __post_init__(self) -> None:
        self.log: list[tuple[int, str]] = []

    def stage(self, name: str) -> Any:
        def fn(ctx: RunContext) -> StageResult:
            self.calls += 1
            if self.kill_at is not None and self.calls == self.kill_at:
                raise Killed
            self.log.append((ctx.iteration, name))
            return StageResult(name, 0, {"n": self.calls})

        return fn


@pytest.fixture
def scripted(monkeypatch):
    def install(script: Script) -> None:
        table = {n: script.stage(n) for n in ("build", "label", "train", "report")}
        monkeypatch.setattr(stages, "STAGES", table)
        monkeypatch.setattr(stages, "build", table["build"])
        monkeypatch.setattr(stages, "report", table["report"])

    return install


def _ctx(store: Store, run_dir: Path) -> RunContext:
    return RunContext(None, store, run_dir, None, {}, 1, lambda m: None)


def test_one_shot_plans(tmp_path: Path, scripted) -> None:
    script = Script()
    scripted(script)
    with Store.open(tmp_path) as store:
        for plan in ("all", "label", "train"):
            pipeline.drive(_ctx(store, tmp_path), pipeline.PLANS[plan])
    assert [s for _, s in script.log] == [
        *("build", "label", "train", "report"),
        *("build", "label", "report"),
        *("build", "train", "report"),
    ]


# -- when a fit is due -----------------------------------------------------------------
def _recipe(trainer: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(trainer=trainer)


def _record(store: Store, settings: dict[str, Any] | None) -> None:
    store.record_potential(
        path="trainer/fit-001/output_potential.yace",
        metrics={},
        baseline={"type": "none"},
        pacemaker_version="x",
        train_ids=[],
        test_ids=[],
        settings=settings,
    )


def test_fit_due(tmp_path: Path) -> None:
    cfg = {"cutoff": 5.0, "max_epochs": 60}
    with Store.open(tmp_path) as store:
        ctx = RunContext(_recipe(cfg), store, tmp_path, None, {}, 1, print)
        assert stages._fit_due(ctx) == "no potential yet"
        _record(store, {"trainer": cfg, "fingerprint": stages.trainer_fingerprint(cfg)})
        assert stages._fit_due(ctx) is None
        ctx.recipe = _recipe({**cfg, "max_epochs": 61})
        assert stages._fit_due(ctx) == "the trainer settings changed"
        _record(store, None)  # a potential fitted before schema v2: nothing to compare
        assert stages._fit_due(ctx) is None


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)))
def test_fingerprint_ignores_key_order(cfg) -> None:
    reordered = dict(reversed(list(cfg.items())))
    assert stages.trainer_fingerprint(cfg) == stages.trainer_fingerprint(reordered)


# -- build: provenance of the recipe's structures -------------------------------------
def test_build_records_where_each_structure_came_from(tmp_path: Path) -> None:
    from ase.build import bulk
    from ase.io import write

    from mlip_autopipec.recipe import load_recipe

    write(tmp_path / "frames.extxyz", [bulk("Si", "diamond", a=a) for a in (5.40, 5.45, 5.50)])
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        "name: origins\n"
        "structures:\n"
        "  - bulk: {element: Si, crystal: diamond, a: 5.43}\n"
        "    strain: {min: -0.01, max: 0.01, count: 2}\n"
        "    rattle: {stdev: 0.05, count: 1, seed: 1}\n"
        "  - file: frames.extxyz\n"
        "    index: '1:'\n"
        "oracle:\n"
        "  pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}\n"
        "  kspacing: 0.3\n"
        "  input_data: {system: {ecutwfc: 15}}\n"
    )
    recipe = load_recipe(recipe_path)
    with Store.open(tmp_path / "run") as store:
        ctx = RunContext(recipe, store, tmp_path / "run", None, {}, 1, lambda m: None)
        result = stages.build(ctx)
        again = stages.build(ctx)
        rows = store.structure_rows()
    assert result.details == again.details == {"structures": 8, "distinct": 8}
    assert len(rows) == 8
    origins = [r["origin"] for r in rows]
    first = origins[0]
    assert (first["kind"], first["generator"], first["entry"]) == ("recipe", "bulk", 0)
    assert first["source"] == "bulk[0] Si diamond strain=-0.010"
    assert np.allclose(first["strain"], -0.01 * np.eye(3))
    assert first["params"]["a"] == 5.43 and first["rattle"] == 0
    assert origins[1]["rattle"] == 1 and origins[1]["entry"] == 0
    assert [(o["entry"], o["file"], o["frame"], o["index"]) for o in origins[-2:]] == [
        (1, "frames.extxyz", 1, "1:"),
        (1, "frames.extxyz", 2, "1:"),
    ]
    assert {r["iteration"] for r in rows} == {0}


# -- the run's one executor ----------------------------------------------------------
def test_the_run_executor_starts_once_on_first_use() -> None:
    from mlip_autopipec.execution import local_executor

    started: list[Any] = []

    def factory() -> Any:
        cm = local_executor(2)
        started.append(cm)
        return cm

    with pipeline.OnDemandExecutor(factory) as idle:
        assert not idle.started
    assert started == []  # nothing submitted: no engine (no pilot job on a cluster)

    with pipeline.OnDemandExecutor(factory) as ex:
        assert ex.max_workers == 2
        futures = [ex.submit(pow, 2, n) for n in range(5)]
        assert [f.result() for f in futures] == [1, 2, 4, 8, 16]
        assert ex.submit(len, "abc").result() == 3
    assert len(started) == 1
    assert not ex.started
