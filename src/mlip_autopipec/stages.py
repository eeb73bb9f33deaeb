"""The stages of a run, each a function ``stage(ctx) -> StageResult`` over the store.

A stage reads what it needs from the store and writes what it made back into it, so the
driver (``pipeline.py``) can run the stages in a line (build -> label -> train -> report)
or in a loop (explore -> select -> label -> train, until a stop rule holds) and resume
after a kill at the stage the store says. Every stage of one run shares one
:class:`RunContext`: one store, one executor (a Parsl pilot job lives for the whole run),
one set of pseudopotentials.

Stage functions take only the context; what a stage found goes into the returned
:class:`StageResult` (``status`` 0 ok, 1 finished with failures) and into the store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlip_autopipec import process
from mlip_autopipec.errors import Interrupted, TrainerError
from mlip_autopipec.signals import Caught, catch_signals

log = logging.getLogger(__name__)

#: Names of the stages the driver knows, in the order of one pass.
BUILD, LABEL, TRAIN, REPORT = "build", "label", "train", "report"
EXPLORE, SELECT = "explore", "select"

#: Seconds between checks for signals while a fit runs on the executor.
FIT_POLL = 0.25


@dataclass
class RunContext:
    """What every stage of one run shares; created once per run by the driver.

    ``executor`` lives for the whole run (labelling, and later fits and MD, submit to it);
    ``iteration`` is the loop iteration the stages work on (0 = the seed: the recipe's
    structures).
    """

    recipe: Any
    store: Any
    run_dir: Path
    executor: Any
    pseudos: dict[str, Path]
    workers: int
    say: Callable[[str], None]
    iteration: int = 0
    #: ``run --prune``: leave structures no longer in the recipe out (lifecycle/prune.py)
    prune: bool = False
    #: a fit inside the active-learning loop, capped by ``active_learning.refit_max_epochs``
    #: (explore.loop.loop_recipe): its stop at the cap is by design, and the run output says so
    capped_fit: bool = False


@dataclass(frozen=True)
class StageResult:
    """What one stage did: ``status`` 0 ok, 1 finished with failures; ``details`` is
    JSON-able (stored with the stage's row of the loop table)."""

    name: str
    status: int = 0
    details: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[RunContext], StageResult]


# -- build ---------------------------------------------------------------------------------
def build(ctx: RunContext) -> StageResult:
    """Build the recipe's structures and add the new ones to the store (by content hash)."""
    from mlip_autopipec.recipe import build_structures

    structures = build_structures(ctx.recipe)
    ids = ctx.store.add_structures(
        (s.atoms, s.source, recipe_origin(ctx.recipe, s)) for s in structures
    )
    distinct = len(set(ids))
    ctx.say(
        f"autopipec: {ctx.recipe.name}: {len(structures)} structures in the recipe "
        f"({distinct} distinct), run directory {ctx.run_dir}"
    )
    from mlip_autopipec.lifecycle.prune import messages, sync_with_recipe

    sync = sync_with_recipe(ctx.store, ids, prune=ctx.prune)
    for message in messages(sync):
        ctx.say(f"autopipec: {message}")
    details: dict[str, Any] = {"structures": len(structures), "distinct": distinct}
    details.update({k: ids for k, ids in sync.details().items() if ids})
    return StageResult(BUILD, 0, details)


def recipe_origin(recipe: Any, item: Any) -> dict[str, Any]:
    """The origin record of a recipe structure: ``kind: recipe``, its source string, the
    index of its ``structures`` entry and the builder's record (``generator``: the source
    kind, its parameters, strain tensor, rattle copy; file entries: file, frame, ``index``
    and ``format``)."""
    built = dict(item.origin)
    origin: dict[str, Any] = {"kind": "recipe", "source": item.source}
    origin["generator"] = built.pop("kind")
    origin.update(built)
    entry = recipe.data["structures"][int(origin["entry"])]
    if origin["generator"] == "file":  # index: filled in from the schema
        origin.update(index=entry["index"], format=entry.get("format"))
    elif origin["generator"] == "trajectory":  # frames by start/stop/stride: no index key
        origin.update(index=":", format=entry.get("format"))
    return origin


# -- label ---------------------------------------------------------------------------------
def label(ctx: RunContext) -> StageResult:
    """Label every pending structure with pw.x on the run's executor."""
    from mlip_autopipec.lifecycle.progress import Progress
    from mlip_autopipec.lifecycle.runner import label_all
    from mlip_autopipec.oracle import EspressoOracle, run_attempt
    from mlip_autopipec.oracle.converge import CONVERGE_FILE, converged_oracle_cfg
    from mlip_autopipec.recipe import build_structures

    # oracle.converge: converge k-points (and ecutwfc) first, label everything with them
    oracle_cfg, converged = converged_oracle_cfg(
        ctx.recipe.oracle, ctx.pseudos, build_structures(ctx.recipe), ctx.run_dir
    )
    if converged is not None:
        ecut = f", ecutwfc {converged['ecutwfc']} Ry" if converged.get("ecutwfc") else ""
        ctx.say(
            f"autopipec: converged settings: kspacing {converged['kspacing']} 1/Å{ecut} "
            f"({ctx.run_dir / CONVERGE_FILE})"
        )
    from mlip_autopipec.oracle.relabel import relabel_to_one_theory, relabelled_oracle_cfg

    def label_with(store: Any, run_dir: Path, cfg: dict[str, Any]) -> dict[str, int]:
        oracle = EspressoOracle(cfg, ctx.pseudos)
        return label_all(store, oracle, run_attempt, ctx.executor, run_dir, Progress())

    # a run that relabelled to the rescues' theory labels everything with it (oracle/relabel.py)
    counts = label_with(ctx.store, ctx.run_dir, relabelled_oracle_cfg(oracle_cfg, ctx.run_dir))
    done = None
    if ctx.recipe.oracle.get("theory_mismatch") == "relabel":
        done = relabel_to_one_theory(ctx.store, oracle_cfg, ctx.run_dir, label_with, ctx.say)
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    ctx.say(f"autopipec: labelling done: {summary}")
    details: dict[str, Any] = {"counts": dict(counts)}
    failed = counts.get("failed", 0)
    if done is not None:
        details["relabel"] = done
        failed += done["counts"].get("failed", 0)
    return StageResult(LABEL, 1 if failed else 0, details)


# -- train ---------------------------------------------------------------------------------
def _stop_children(_signum: int) -> None:
    process.terminate_all()


def trainer_fingerprint(trainer_cfg: dict[str, Any]) -> str:
    """The fingerprint of the trainer settings a fit depends on (the trainer's own
    :func:`~mlip_autopipec.trainer.config.settings_fingerprint`)."""
    from mlip_autopipec.trainer.config import settings_fingerprint

    return settings_fingerprint(trainer_cfg)


def _fit_due(ctx: RunContext) -> str | None:
    """Why a fit is due now (None: the current potential is up to date)."""
    current = ctx.store.current_potential()
    if current is None:
        return "no potential yet"
    pruned = ctx.store.pruned_ids()
    if set(ctx.store.ids_in_state("labelled")) - pruned:
        return "new labels"
    members = set(ctx.store.potential_members(int(current["id"])))
    if pruned & members:
        return "structures were pruned"
    if set(ctx.store.ids_in_state("trained")) & ctx.store.restored_ids() - members:
        return "pruned structures are back in the recipe"
    from mlip_autopipec.oracle.relabel import unfitted_relabels

    if unfitted_relabels(ctx.run_dir):
        return "structures relabelled to one level of theory"
    settings = current.get("settings")
    if settings is None:
        # fitted before schema v2 recorded the settings: nothing to compare against
        return None
    old = settings.get("trainer")
    if old is not None and trainer_fingerprint(old) != trainer_fingerprint(ctx.recipe.trainer):
        return "the trainer settings changed"
    return None


def train(ctx: RunContext) -> StageResult:
    """Fit a potential on every labelled structure when one is due (new labels, changed
    trainer settings or none yet) and record it as the current potential."""
    from mlip_autopipec.trainer.fit import fit_potential, next_fit_dir

    reason = _fit_due(ctx)
    if reason is None:
        ctx.say("autopipec: the current potential already covers every labelled structure")
        return StageResult(TRAIN, 0, {"fitted": False})
    from mlip_autopipec.oracle.relabel import relabelled_training_set

    pruned = ctx.store.pruned_ids()  # run --prune: labels kept, not trained on
    # oracle.theory_mismatch: relabel replaces the labels of the relabelled structures
    atoms_list = [
        a
        for a in relabelled_training_set(ctx.store.labelled_atoms(), ctx.run_dir)
        if a.info.get("structure_id") not in pruned
    ]
    # one level of theory per training set (oracle.theory_mismatch: exclude)
    from mlip_autopipec.lifecycle.theories import fill_unrecorded
    from mlip_autopipec.oracle.theory import one_theory

    # labels from before theory keys were recorded (a migrated v1 run) share the base
    # theory; status, export and the report apply the same rule (lifecycle/theories.py)
    keys = fill_unrecorded(
        {a.info.get("structure_id"): a.info.get("theory_key") for a in atoms_list}
    )
    atoms_list, left_out, key = one_theory(atoms_list, keys.get)
    if left_out:
        shown = ", ".join(map(str, left_out[:20])) + (" ..." if len(left_out) > 20 else "")
        ctx.say(
            f"autopipec: note: fitting one level of theory ({key}); {len(left_out)} "
            f"structure(s) labelled with another theory are left out: {shown}"
        )
        new_labels = set(ctx.store.ids_in_state("labelled"))
        if reason == "new labels" and new_labels <= set(left_out):
            ctx.say("autopipec: the current potential already covers every label of its theory")
            return StageResult(TRAIN, 0, {"fitted": False, "left_out": list(left_out)})
    if len(atoms_list) < 2:
        ctx.say(f"autopipec: {len(atoms_list)} labelled structure(s): nothing to fit yet")
        return StageResult(TRAIN, 0, {"fitted": False})
    from mlip_autopipec.lifecycle.runner import set_aside_unfinished_fits

    for moved in set_aside_unfinished_fits(ctx.run_dir):
        ctx.say(f"autopipec: set aside the unfinished fit {moved.name}")
    workdir = next_fit_dir(ctx.run_dir)
    ctx.say(f"autopipec: fitting on {len(atoms_list)} structures in {workdir} ({reason})")
    ran: dict[str, Any] = {}  # where the fit's programs ran (execution.tasks.where)
    try:
        # SIGINT/SIGTERM stop pacemaker and are re-raised as Interrupted once it is gone
        with catch_signals(then=_stop_children) as received:
            try:
                # inside: a signal stops the isolated atoms' pw.x as it stops pacemaker
                isolated = _isolated_atom_references(ctx, atoms_list, key, received)
                fit = fit_potential(
                    atoms_list,
                    ctx.recipe.trainer,
                    workdir,
                    initial_potential=_previous_fit(ctx),
                    execute=_execute_on_executor(ctx, received, ran),
                    reference=None if isolated is None else isolated[0],
                    reference_record=None if isolated is None else isolated[1],
                )
            except TrainerError:
                if received.signum is not None:
                    raise Interrupted(received.signum) from None
                raise
        if received.signum is not None:
            raise Interrupted(received.signum)
    except TrainerError as exc:
        ctx.say(f"autopipec: error: training failed, labels are kept: {exc}")
        return StageResult(TRAIN, 1, {"fitted": False, "error": str(exc)})
    pid = record_fit(ctx, fit, key)
    from mlip_autopipec.oracle.relabel import mark_relabels_fitted

    mark_relabels_fitted(ctx.run_dir, pid)
    notes = fit.warnings  # notes + "did not converge"
    if ctx.capped_fit and not fit.converged:
        notes = (
            *fit.notes,
            f"the loop's fit stopped at active_learning.refit_max_epochs ({fit.iterations} "
            "iterations, not converged) as set: it steers the exploration; the potential "
            "handed over is fitted with trainer.max_epochs after the loop",
        )
    for note in notes:
        ctx.say(f"autopipec: note: {note}")
    e, f = fit.rmse_energy_mev_per_atom, fit.rmse_forces_mev_per_ang
    ctx.say(
        f"autopipec: potential {fit.yace} (train {len(fit.train_ids)}, test {len(fit.test_ids)}); "
        f"RMSE energy train {_fmt(e.get('train'))} / test {_fmt(e.get('test'))} meV/atom, "
        f"forces train {_fmt(f.get('train'))} / test {_fmt(f.get('test'))} meV/Å"
    )
    return StageResult(TRAIN, 0, {"fitted": True, "potential": pid, "executed_on": ran or None})


def _wait(future: Any, received: Caught) -> Any:
    """The result of an executor task, checking for signals every :data:`FIT_POLL` s.

    After SIGINT/SIGTERM the wait ends once the task is gone (local: its programs were
    stopped by the handler) or after one kill grace period (Parsl: leaving the run's
    executor cancels the pilot job, whose worker stops them); then :class:`Interrupted`.
    """
    deadline: float | None = None
    while True:
        try:
            return future.result(timeout=FIT_POLL)
        except TimeoutError:
            if received.signum is None:
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + process.KILL_GRACE + 5
            elif now > deadline:
                future.cancel()
                raise Interrupted(received.signum) from None


def _execute_on_executor(
    ctx: RunContext, received: Caught, ran: dict[str, Any]
) -> Callable[[Any, Path, Any], None] | None:
    """The fit's execute step as a task of the run's executor (on Parsl: in the pilot job,
    never on the login node); None without an executor (the step then runs here).
    Signals: see :func:`_wait`."""
    if ctx.executor is None:
        return None
    from mlip_autopipec.execution.tasks import execute_fit

    def execute(trainer: Any, workdir: Path, profile: Any) -> None:
        ran.update(_wait(ctx.executor.submit(execute_fit, trainer, workdir, profile), received))

    return execute


def isolated_atoms_on(
    executor: Any, received: Caught
) -> Callable[[Sequence[Any]], list[tuple[Any, dict[str, Any]]]]:
    """A batch of isolated-atom pw.x attempts as tasks of ``executor``
    (:func:`~mlip_autopipec.oracle.isolated.run_isolated_attempt`, the request as argument
    as every label's), all submitted at once; results in order. Signals: see :func:`_wait`."""
    from mlip_autopipec.oracle.isolated import run_isolated_attempt

    def run(requests: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
        futures = [executor.submit(run_isolated_attempt, req) for req in requests]
        return [_wait(future, received) for future in futures]

    return run


def _isolated_atom_references(
    ctx: RunContext, atoms_list: list[Any], key: str | None, received: Caught
) -> tuple[dict[str, float], dict[str, Any]] | None:
    """``trainer.reference: isolated_atoms``: pw.x isolated-atom energies (eV) per element
    at the fitted labels' theory, each converged with the box (oracle/isolated.py), and
    what potential.json records of them; else None (fitted references).

    The atoms' pw.x runs are tasks of the run's executor (on Parsl: in the pilot job);
    each box's ``execution`` (host, pid, thread, slurm_job_id) is in the record.
    """
    trainer = ctx.recipe.trainer
    if trainer.get("reference") != "isolated_atoms":
        return None
    from mlip_autopipec.lifecycle.store import DB_NAME, Store
    from mlip_autopipec.oracle.isolated import (
        isolated_atom_references,
        reference_summary,
        training_theory,
    )
    from mlip_autopipec.oracle.relabel import RELABEL_DIR

    theory = training_theory([ctx.store], key)
    if theory is None and (ctx.run_dir / RELABEL_DIR / DB_NAME).is_file():
        with Store.open(ctx.run_dir / RELABEL_DIR, create=False) as rstore:
            theory = training_theory([rstore], key)
    if theory is None:
        raise TrainerError(f"trainer.reference isolated_atoms: no theory record of {key}")
    elements = trainer.get("elements") or sorted(
        {s for a in atoms_list for s in a.get_chemical_symbols()}
    )
    run = None if ctx.executor is None else isolated_atoms_on(ctx.executor, received)
    boxes = {
        "first": float(trainer["reference_box"]),
        "step": float(trainer["reference_box_step"]),
        "largest": float(trainer["reference_box_max"]),
        "tolerance_mev": float(trainer["reference_box_tolerance"]),
    }
    records = isolated_atom_references(
        elements, theory, ctx.recipe.oracle, ctx.pseudos, ctx.run_dir, boxes, run, ctx.say
    )
    shown = []
    for el, r in records.items():
        conv = r["box_convergence"]
        shown.append(
            f"{el} {r['energy']:.4f} eV ({r['total_magmom']} μB; box {conv['checked_box_ang']:g}"
            f" -> {conv['used_box_ang']:g} Å: {conv['difference_mev']:+.2f} meV)"
        )
    ctx.say("autopipec: reference energies from isolated atoms (pw.x): " + ", ".join(shown))
    return {el: float(r["energy"]) for el, r in records.items()}, reference_summary(records)


def _previous_fit(ctx: RunContext) -> Path | None:
    """The current potential's fit folder: a refit continues from it when
    ``trainer.refit`` is ``continue`` and its settings match (the trainer decides)."""
    current = ctx.store.current_potential()
    if current is None or not current.get("fit_dir"):
        return None
    folder = ctx.run_dir / str(current["fit_dir"])
    return folder if folder.is_dir() else None


def record_fit(ctx: RunContext, fit: Any, theory_key: str | None = None) -> int:
    """Record ``fit`` and its members as the current potential (one transaction) and move
    its structures to ``trained``; returns the potential id. Where the fit's programs ran
    (the fit folder's ``execution.json``: host, pid, slurm_job_id, seconds) goes into the
    settings as ``execution``; the level of theory of its labels as ``theory_key``
    (recorded with the fit, so ``status`` never has to work it out afterwards)."""
    from mlip_autopipec.execution.tasks import EXECUTION_JSON

    run_dir = ctx.run_dir.resolve()
    workdir = Path(fit.workdir).resolve()
    metrics = {
        "rmse_energy_mev_per_atom": fit.rmse_energy_mev_per_atom,
        "rmse_forces_mev_per_ang": fit.rmse_forces_mev_per_ang,
    }
    settings = {
        "trainer": ctx.recipe.trainer,
        "fingerprint": trainer_fingerprint(ctx.recipe.trainer),
        "baseline": fit.baseline,
        "theory_key": theory_key,
    }
    executed = workdir / EXECUTION_JSON
    if executed.is_file():
        settings["execution"] = json.loads(executed.read_text())
    pid: int = ctx.store.record_potential(
        path=os.path.relpath(Path(fit.yace).resolve(), run_dir),
        metrics=metrics,
        baseline=fit.baseline,
        pacemaker_version=fit.pacemaker_version,
        train_ids=[int(i) for i in fit.train_ids],
        test_ids=[int(i) for i in fit.test_ids],
        iteration=ctx.iteration,
        settings=settings,
        fit_dir=os.path.relpath(workdir, run_dir),
    )
    ctx.store.mark_trained([int(i) for i in (*fit.train_ids, *fit.test_ids)], pid)
    return pid


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# -- report --------------------------------------------------------------------------------
def report(ctx: RunContext) -> StageResult:
    """Write the HTML report; a broken figure never fails a finished run."""
    from mlip_autopipec.report import write_report

    try:
        index = write_report(ctx.run_dir)
    except Exception as exc:  # noqa: BLE001 - a broken figure must not fail a finished run
        log.exception("report failed")
        ctx.say(
            f"autopipec: warning: could not write the report ({exc}); "
            f"try 'autopipec report {ctx.run_dir}'"
        )
        return StageResult(REPORT, 0, {"written": False, "error": str(exc)})
    ctx.say(f"autopipec: report {index}")
    return StageResult(REPORT, 0, {"written": True, "index": str(index)})


#: The stages by name (explore/select come from ``mlip_autopipec.explore.loop``).
STAGES: dict[str, Stage] = {BUILD: build, LABEL: label, TRAIN: train, REPORT: report}
