"""The one place that knows the order of steps.

validate the recipe -> prepare the run directory (recipe copy, physics-change check) ->
take the run lock -> open the store (migrating an older schema) -> start ONE executor for
the whole run -> run the stages of :mod:`mlip_autopipec.stages` over the store:

    one-shot (today's recipes):  build -> label -> train -> report
    active learning:             build -> [seed: label -> train]
                                       -> while not stop: [explore -> select -> label -> train]
                                       -> report

Every stage run is a row of the store's ``loop`` table (iteration, stage, started,
finished), so a rerun after a kill resumes the loop at the stage and iteration the store
says; each stage is idempotent over the store besides (finished labels are never
recomputed, a fit is redone only when due). The science lives in ``oracle``/``trainer``;
the bookkeeping in ``lifecycle``; where work runs in ``execution``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TextIO

from mlip_autopipec import stages
from mlip_autopipec.errors import EXIT_OK, UsageError
from mlip_autopipec.recipe import Recipe, build_structures, load_recipe, resolve_pseudopotentials
from mlip_autopipec.stages import RunContext, Stage, StageResult

log = logging.getLogger(__name__)

STAGES = ("all", "label", "train")

#: The stages each ``--stage`` runs (one-shot runs; every stage is idempotent).
PLANS: dict[str, tuple[str, ...]] = {
    "all": (stages.BUILD, stages.LABEL, stages.TRAIN, stages.REPORT),
    "label": (stages.BUILD, stages.LABEL, stages.REPORT),
    "train": (stages.BUILD, stages.TRAIN, stages.REPORT),
}


def default_run_dir(recipe: Recipe) -> Path:
    """``./runs/<recipe name>``: derived from the recipe name, under the working directory."""
    return Path.cwd() / "runs" / recipe.name


def _say(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream if stream is not None else sys.stderr, flush=True)


def run(
    recipe_path: Path,
    *,
    run_dir: Path | None = None,
    workers: int | None = None,
    stage: str = "all",
    dry_run: bool = False,
    fresh: bool = False,
    prune: bool = False,
) -> int:
    """Run (or resume) a recipe; returns the exit code (0 done, 1 finished with failures).

    ``prune``: structures in the store that the recipe no longer builds are left out of
    labelling and training from now on (kept, never deleted; see
    :mod:`mlip_autopipec.lifecycle.prune`).

    Raises :class:`~mlip_autopipec.errors.RecipeError` for a bad recipe,
    :class:`~mlip_autopipec.errors.RunLockedError` when another runner holds the run
    directory, :class:`~mlip_autopipec.errors.Interrupted` on SIGINT/SIGTERM.
    """
    if stage not in STAGES:
        raise UsageError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    recipe = load_recipe(Path(recipe_path))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    if dry_run:
        return dry_run_recipe(recipe, run_dir)

    from mlip_autopipec.execution import default_workers, make_executor
    from mlip_autopipec.lifecycle.lock import RunLock
    from mlip_autopipec.lifecycle.rundir import prepare_run_dir
    from mlip_autopipec.lifecycle.store import Store

    moved = prepare_run_dir(run_dir, recipe, fresh=fresh)
    if moved is not None:
        _say(f"autopipec: the previous run was moved to {moved}")
    loop = stage == "all" and bool(recipe.data.get("active_learning"))
    with RunLock(run_dir), Store.open(run_dir) as store:
        pseudos = resolve_pseudopotentials(recipe, run_dir / "pseudo")
        execution = recipe.execution
        n_workers = int(
            workers or execution["workers"] or default_workers(recipe.oracle["command"])
        )
        with OnDemandExecutor(lambda: make_executor(execution, n_workers, run_dir=run_dir)) as ex:
            ctx = RunContext(recipe, store, run_dir, ex, pseudos, n_workers, _say, prune=prune)
            if loop:
                return drive_active_learning(ctx)
            return drive(ctx, PLANS[stage])


class OnDemandExecutor:
    """The run's one executor, started on first use and shut down with the run.

    Every stage submits to the same engine (on Parsl: the same pilot jobs); a run that
    submits nothing (``--stage train``, a finished run resumed) starts none.
    """

    def __init__(self, factory: Callable[[], AbstractContextManager[Executor]]):
        self._factory = factory
        self._cm: AbstractContextManager[Executor] | None = None
        self._executor: Executor | None = None

    @property
    def started(self) -> bool:
        """Whether the engine was started."""
        return self._executor is not None

    def _get(self) -> Executor:
        if self._executor is None:
            cm = self._factory()
            self._executor = cm.__enter__()
            self._cm = cm
        return self._executor

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """``Executor.submit`` on the (started) engine."""
        return self._get().submit(fn, *args, **kwargs)

    @property
    def max_workers(self) -> int:
        """How many tasks the engine runs at once (starts it)."""
        ex = self._get()
        return int(getattr(ex, "max_workers", 0) or getattr(ex, "_max_workers", 0) or 1)

    def __enter__(self) -> OnDemandExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            cm, self._cm, self._executor = self._cm, None, None
            cm.__exit__(*exc)


def run_stage(ctx: RunContext, name: str, fn: Stage) -> StageResult:
    """Run one stage, recorded in the store's ``loop`` table (a row without ``finished``
    is a stage that was killed or interrupted)."""
    row = ctx.store.begin_stage(ctx.iteration, name)
    result = fn(ctx)
    ctx.store.finish_stage(row, result.status, result.details)
    return result


def drive(ctx: RunContext, plan: Sequence[str]) -> int:
    """Run the stages of ``plan`` in order; returns the worst status."""
    status = EXIT_OK
    for name in plan:
        status = max(status, run_stage(ctx, name, stages.STAGES[name]).status)
    return status


def drive_active_learning(ctx: RunContext) -> int:
    """The seed (build -> label -> train), then the active-learning loop of
    :func:`mlip_autopipec.explore.loop.run_loop` (explore -> held-out -> check -> select ->
    label -> train, resumable from its own tables) with this run's label and train stages
    and executor, then the report. Returns the worst status."""
    from dataclasses import replace

    from mlip_autopipec.errors import EXIT_FAILED, TrainerError
    from mlip_autopipec.explore.loop import DONE, final_recipe, loop_recipe, position, run_loop

    # the loop's fits may stop at active_learning.refit_max_epochs (they steer the
    # exploration); the potential handed over is then fitted once more with the
    # trainer's own settings. A finished loop's seed stage already fits that way, so a
    # rerun after the final fit (or a kill during it) never goes back to a capped fit.
    capped = loop_recipe(ctx.recipe)
    loop_ctx = replace(ctx, recipe=capped, capped_fit=capped is not ctx.recipe)
    final_ctx = replace(ctx, recipe=final_recipe(ctx.recipe))
    status = drive(ctx, (stages.BUILD, stages.LABEL))
    seed_ctx = final_ctx if position(ctx.store)[1] == DONE else loop_ctx
    status = max(status, run_stage(seed_ctx, stages.TRAIN, stages.train).status)
    if ctx.store.current_potential() is None:
        ctx.say("autopipec: active learning needs a seed potential; the seed fit did not run")
        return max(status, EXIT_FAILED, run_stage(ctx, stages.REPORT, stages.report).status)

    def sub(recipe: Any, store: Any, run_dir: Path) -> RunContext:
        # the held-out frames are labelled in their own store: same executor, same recipe
        it = position(ctx.store)[0]
        return replace(
            loop_ctx, recipe=recipe, store=store, run_dir=Path(run_dir), iteration=it, prune=False
        )

    def label_fn(recipe: Any, store: Any, run_dir: Path, pseudos: Any, workers: Any) -> Any:
        return stages.label(sub(recipe, store, run_dir)).details.get("counts")

    def train_fn(recipe: Any, store: Any, run_dir: Path) -> Any:
        result = stages.train(sub(recipe, store, run_dir))
        if result.status != EXIT_OK:
            raise TrainerError(str(result.details.get("error", "the refit failed")))
        return result.details

    try:
        outcome = run_loop(loop_ctx, label_fn, train_fn)
    except TrainerError as exc:
        ctx.say(f"autopipec: the loop stops: the fit of this iteration failed ({exc})")
        status = max(status, EXIT_FAILED)
    else:
        ctx.say(
            f"autopipec: active learning: {outcome.reason} after {outcome.iterations} "
            f"iteration(s), {outcome.pwx_calls} pw.x calls"
        )
        if capped is not ctx.recipe:
            status = max(status, _final_fit(final_ctx))
    return max(status, run_stage(ctx, stages.REPORT, stages.report).status)


def _final_fit(ctx: RunContext) -> int:
    """After the loop: the fit with the trainer's own settings on the whole training set
    (when the loop's were capped), scored next to the loop's last potential on every
    held-out frame. Returns the train stage's status."""
    from mlip_autopipec.explore.loop import record_final

    limit = int(ctx.recipe.trainer["max_epochs"])
    ctx.say(
        "autopipec: the final fit: the loop's fits stopped at active_learning.refit_max_epochs;"
        f" the potential handed over continues the loop's last fit up to trainer.max_epochs "
        f"{limit}"
    )
    result = run_stage(ctx, stages.TRAIN, stages.train)
    record = record_final(ctx.store, ctx.run_dir)
    if record is not None and record.get("heldout_frames"):
        ctx.say(
            f"autopipec: final potential {record['potential']} on the run's "
            f"{record['heldout_frames']} held-out frames: energy "
            f"{record['final_heldout_rmse_energy_mev_per_atom']:.2f} meV/atom, forces "
            f"{record['final_heldout_rmse_forces_mev_per_ang']:.1f} meV/Å (the loop's last, "
            f"{record['loop_potential']}: {record['loop_heldout_rmse_energy_mev_per_atom']:.2f}"
            f" / {record['loop_heldout_rmse_forces_mev_per_ang']:.1f})"
        )
    return result.status


def dry_run_recipe(recipe: Recipe, run_dir: Path) -> int:
    """Write every first-attempt pw.x input and the pacemaker input.yaml; run nothing.

    Files go to ``RUN_DIR/dry-run`` (never into a live run's attempt folders). Prints a
    summary: structures per element set, total atoms, k-points, estimated pw.x calls.
    """
    from mlip_autopipec.oracle import EspressoOracle
    from mlip_autopipec.oracle.attempt import read_kgrid, write_attempt_input
    from mlip_autopipec.oracle.effective import effective_lines
    from mlip_autopipec.trainer.config import with_defaults
    from mlip_autopipec.trainer.input_yaml import build_input, write_input

    out = run_dir / "dry-run"
    out.mkdir(parents=True, exist_ok=True)
    pseudos = resolve_pseudopotentials(recipe, out / "pseudo")
    oracle = EspressoOracle(recipe.oracle, pseudos)
    structures = build_structures(recipe)
    per_set: Counter[str] = Counter()
    kpoints: list[int] = []
    pwi_texts: list[str] = []
    quarantined = 0
    total_atoms = 0
    for i, item in enumerate(structures, start=1):
        atoms = item.atoms
        total_atoms += len(atoms)
        per_set["-".join(sorted(set(atoms.get_chemical_symbols())))] += 1
        if oracle.preflight(atoms) is not None:
            quarantined += 1
            continue
        request = oracle.next_request(str(i), atoms, [], out / f"structure-{i:05d}")
        if request is None:
            continue
        pwi_texts.append(write_attempt_input(request).read_text())
        kgrid = read_kgrid(pwi_texts[-1])
        if kgrid:
            kpoints.append(kgrid[0] * kgrid[1] * kgrid[2])
    cfg = with_defaults(recipe.trainer)
    elements = sorted(cfg["elements"])  # load_recipe defaults it to the structures' elements
    trainer_dir = out / "trainer"
    trainer_dir.mkdir(exist_ok=True)
    write_input(
        build_input(
            cfg,
            elements=elements,
            train_file="train.pckl.gzip",
            test_file="test.pckl.gzip" if float(cfg["test_fraction"]) > 0 else None,
            metadata={"generator": "mlip-autopipec --dry-run"},
        ),
        trainer_dir / "input.yaml",
    )
    kp = {"min": min(kpoints, default=0), "max": max(kpoints, default=0), "total": sum(kpoints)}
    effective = _effective_pwx(recipe, pwi_texts)
    first = len(structures) - quarantined
    calls = {"first_attempts": first, "at_most": first * oracle.max_attempts}
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "structures": len(structures),
        "per_element_set": dict(sorted(per_set.items())),
        "total_atoms": total_atoms,
        "quarantined_by_preflight": quarantined,
        "kpoints_per_structure": kp,
        "estimated_pwx_calls": calls,
        "inputs": str(out),
        "effective_pwx": [v.to_dict() for v in effective],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"dry run of {recipe.path.name}: nothing was run; inputs written to {out}")
    print(f"  structures: {len(structures)} ({total_atoms} atoms)")
    for key, n in sorted(per_set.items()):
        print(f"    {key}: {n}")
    if quarantined:
        print(f"  quarantined by preflight (overlapping atoms): {quarantined}")
    print(f"  k-points per structure: {kp['min']}-{kp['max']} (total {kp['total']})")
    if recipe.oracle.get("kspacing") is not None and recipe.oracle.get("kpts") is None:
        from mlip_autopipec.oracle.converge import kgrid_report

        if recipe.oracle.get("converge"):
            print("  k-points: oracle.converge replaces kspacing before labelling")
        print(f"  k-point grid of each distinct cell (kspacing {recipe.oracle['kspacing']}):")
        for row in kgrid_report(structures, float(recipe.oracle["kspacing"])):
            grid = "x".join(map(str, row.grid))
            print(f"    {grid} ({row.density} k-points per reciprocal atom): {row.cell}")
    print(
        f"  pw.x calls: {calls['first_attempts']} first attempts, at most {calls['at_most']} "
        "with retries"
    )
    print(f"  pacemaker input: {trainer_dir / 'input.yaml'}")
    print("  pw.x variables of the first attempts (* = not pw.x's default):")
    for line in effective_lines(effective):
        print(f"    {line}")
    return EXIT_OK


def _effective_pwx(recipe: Recipe, pwi_texts: list[str]) -> list[Any]:
    """Every pw.x variable the dry run wrote, its source and pw.x's default (issue 14.8)."""
    from mlip_autopipec.oracle.effective import effective_values
    from mlip_autopipec.recipe.validate import oracle_as_written

    raw = oracle_as_written(recipe.path)
    key = "kpts" if recipe.oracle.get("kpts") is not None else "kspacing"
    value = recipe.oracle.get(key)
    kpoints = f"oracle.{key} {value}" if value is not None else "the Gamma point"
    if recipe.oracle.get("converge"):
        kpoints += " (oracle.converge replaces it before labelling)"
    raw_data = raw.get("input_data")
    return effective_values(
        pwi_texts,
        raw_data if isinstance(raw_data, dict) else {},
        recipe.oracle.get("input_data") or {},
        kpoints,
        kpoints_from_recipe=key in raw,
    )
