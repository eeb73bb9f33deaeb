"""The one place that knows the order of steps.

validate the recipe -> prepare the run directory (recipe copy, physics-change check) ->
take the run lock -> build structures and add them to the store (idempotent by content hash)
-> label every pending structure (preflight, attempts, retry ladder, quarantine) -> fit a
potential on everything labelled -> write the report.

A rerun of the same command resumes: finished labels are never recomputed and a failed fit
is retried on its own. The science lives in ``oracle``/``trainer``; the bookkeeping in
``lifecycle``; where attempts run in ``execution``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from mlip_autopipec.errors import Interrupted, TrainerError, UsageError
from mlip_autopipec.recipe import Recipe, build_structures, load_recipe, resolve_pseudopotentials

log = logging.getLogger(__name__)

STAGES = ("all", "label", "train")
EXIT_OK = 0
EXIT_FAILED = 1


def default_run_dir(recipe: Recipe) -> Path:
    """``./runs/<recipe name>``: derived from the recipe name, under the working directory."""
    return Path.cwd() / "runs" / recipe.name


def _say(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream if stream is not None else sys.stderr, flush=True)


@contextmanager
def _graceful_signals() -> Iterator[list[int]]:
    """During training: SIGINT/SIGTERM stop pacemaker (via process.terminate_all) and
    are re-raised as :class:`Interrupted` once the child is gone."""
    from mlip_autopipec import process

    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        process.terminate_all()

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(
    recipe_path: Path,
    *,
    run_dir: Path | None = None,
    workers: int | None = None,
    stage: str = "all",
    dry_run: bool = False,
    fresh: bool = False,
) -> int:
    """Run (or resume) a recipe; returns the exit code (0 done, 1 finished with failures).

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

    from mlip_autopipec.lifecycle.lock import RunLock
    from mlip_autopipec.lifecycle.rundir import prepare_run_dir
    from mlip_autopipec.lifecycle.store import Store

    moved = prepare_run_dir(run_dir, recipe, fresh=fresh)
    if moved is not None:
        _say(f"autopipec: the previous run was moved to {moved}")
    with RunLock(run_dir), Store.open(run_dir) as store:
        pseudos = resolve_pseudopotentials(recipe, run_dir / "pseudo")
        structures = build_structures(recipe)
        ids = store.add_structures((s.atoms, s.source) for s in structures)
        _say(
            f"autopipec: {recipe.name}: {len(structures)} structures in the recipe "
            f"({len(set(ids))} distinct), run directory {run_dir}"
        )
        status = EXIT_OK
        if stage in ("all", "label"):
            counts = label(recipe, store, run_dir, pseudos, workers)
            if counts.get("failed", 0):
                status = EXIT_FAILED
        if stage in ("all", "train"):
            try:
                train(recipe, store, run_dir)
            except TrainerError as exc:
                _say(f"autopipec: error: training failed, labels are kept: {exc}")
                status = EXIT_FAILED
        if (
            stage == "all"
            and recipe.data.get("active_learning")
            and store.latest_potential() is not None
        ):
            from mlip_autopipec.explore.loop import run_from_pipeline

            try:
                run_from_pipeline(recipe, store, run_dir, pseudos, workers, _say)
            except TrainerError as exc:
                _say(f"autopipec: error: active-learning refit failed, labels are kept: {exc}")
                status = EXIT_FAILED
        _write_report_safely(run_dir)
    return status


def label(
    recipe: Recipe,
    store: Any,
    run_dir: Path,
    pseudos: dict[str, Path],
    workers: int | None,
) -> dict[str, int]:
    """Label every pending structure of ``store`` with pw.x; returns the counts per state."""
    from mlip_autopipec.execution import default_workers, make_executor
    from mlip_autopipec.lifecycle.progress import Progress
    from mlip_autopipec.lifecycle.runner import label_all
    from mlip_autopipec.oracle import EspressoOracle, run_attempt

    oracle = EspressoOracle(recipe.oracle, pseudos)
    n_workers = (
        workers
        or recipe.execution.get("workers")
        or default_workers(recipe.oracle.get("command") or "pw.x")
    )
    with make_executor(recipe.execution, int(n_workers), run_dir=run_dir) as executor:
        counts = label_all(store, oracle, run_attempt, executor, run_dir, Progress())
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    _say(f"autopipec: labelling done: {summary}")
    return counts


def train(recipe: Recipe, store: Any, run_dir: Path) -> dict[str, Any] | None:
    """Fit a potential on every labelled structure; returns the fit record (None: nothing new).

    Skipped when the latest potential was fitted on exactly the structures labelled now.
    """
    from mlip_autopipec.trainer.fit import fit_potential, next_fit_dir

    if not store.ids_in_state("labelled") and store.latest_potential() is not None:
        _say("autopipec: the current potential already covers every labelled structure")
        return None
    atoms_list = store.labelled_atoms()
    if len(atoms_list) < 2:
        _say(f"autopipec: {len(atoms_list)} labelled structure(s): nothing to fit yet")
        return None
    workdir = next_fit_dir(run_dir)
    _say(f"autopipec: fitting on {len(atoms_list)} structures in {workdir}")
    with _graceful_signals() as received:
        try:
            fit = fit_potential(atoms_list, recipe.trainer, workdir)
        except TrainerError:
            if received:
                raise Interrupted(received[0]) from None
            raise
    if received:
        raise Interrupted(received[0])
    metrics = {
        "rmse_energy_mev_per_atom": fit.rmse_energy_mev_per_atom,
        "rmse_forces_mev_per_ang": fit.rmse_forces_mev_per_ang,
    }
    pid = store.record_potential(
        path=fit.yace,
        metrics=metrics,
        baseline=fit.baseline,
        pacemaker_version=fit.pacemaker_version,
        train_ids=[int(i) for i in fit.train_ids],
        test_ids=[int(i) for i in fit.test_ids],
    )
    store.mark_trained([int(i) for i in (*fit.train_ids, *fit.test_ids)], pid)
    for note in getattr(fit, "notes", ()) or ():
        _say(f"autopipec: note: {note}")
    e, f = fit.rmse_energy_mev_per_atom, fit.rmse_forces_mev_per_ang
    _say(
        f"autopipec: potential {fit.yace} (train {len(fit.train_ids)}, test {len(fit.test_ids)}); "
        f"RMSE energy train {_fmt(e.get('train'))} / test {_fmt(e.get('test'))} meV/atom, "
        f"forces train {_fmt(f.get('train'))} / test {_fmt(f.get('test'))} meV/Å"
    )
    return fit.to_dict()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_report_safely(run_dir: Path) -> None:
    try:
        from mlip_autopipec.report import write_report
    except ImportError:  # pragma: no cover - the report module is part of the package
        return
    try:
        index = write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - a broken figure must not fail a finished run
        log.exception("report failed")
        _say(
            f"autopipec: warning: could not write the report ({exc}); "
            f"try 'autopipec report {run_dir}'"
        )
    else:
        _say(f"autopipec: report {index}")


def dry_run_recipe(recipe: Recipe, run_dir: Path) -> int:
    """Write every first-attempt pw.x input and the pacemaker input.yaml; run nothing.

    Files go to ``RUN_DIR/dry-run`` (never into a live run's attempt folders). Prints a
    summary: structures per element set, total atoms, k-points, estimated pw.x calls.
    """
    from mlip_autopipec.oracle import EspressoOracle
    from mlip_autopipec.oracle.attempt import read_kgrid, write_attempt_input
    from mlip_autopipec.trainer.config import with_defaults
    from mlip_autopipec.trainer.input_yaml import build_input, write_input

    out = run_dir / "dry-run"
    out.mkdir(parents=True, exist_ok=True)
    pseudos = resolve_pseudopotentials(recipe, out / "pseudo")
    oracle = EspressoOracle(recipe.oracle, pseudos)
    structures = build_structures(recipe)
    per_set: Counter[str] = Counter()
    kpoints: list[int] = []
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
        kgrid = read_kgrid(write_attempt_input(request).read_text())
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
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"dry run of {recipe.path.name}: nothing was run; inputs written to {out}")
    print(f"  structures: {len(structures)} ({total_atoms} atoms)")
    for key, n in sorted(per_set.items()):
        print(f"    {key}: {n}")
    if quarantined:
        print(f"  quarantined by preflight (overlapping atoms): {quarantined}")
    print(f"  k-points per structure: {kp['min']}-{kp['max']} (total {kp['total']})")
    print(
        f"  pw.x calls: {calls['first_attempts']} first attempts, at most {calls['at_most']} "
        "with retries"
    )
    print(f"  pacemaker input: {trainer_dir / 'input.yaml'}")
    return EXIT_OK
