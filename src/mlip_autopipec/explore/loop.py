"""The active-learning loop over the store: explore, held-out, check, select, label, refit.

One iteration ``k`` (1, 2, ...; the recipe's own structures and first fit are iteration 0):

1. **explore**: walkers (``explore.md.run_walker``) for every condition, through the executor,
   with the current potential; each finished walker's result and frames are written in one
   transaction (``al_walkers``, ``al_candidates``), so a rerun never redoes one.
2. **heldout**: a seeded random sample of the explored frames becomes this iteration's held-out
   set; it is labelled with pw.x in a *separate* store (``RUN_DIR/heldout``), so no fit can
   ever train on it; the exploring potential's errors on it are the headline figures.
3. **check**: the stop rule (``explore.stop``) over every iteration's figures.
4. **select**: D-optimal (or random) choice among the candidates; every candidate is marked
   ``selected`` or ``rejected`` with a reason, and the selected frames are added to the store
   as pending structures.
5. **label** and **refit**: the pipeline's own label and train functions.

The loop position (iteration, stage) lives in ``al_state``; each stage is idempotent, so a
kill -9 anywhere followed by a rerun resumes in the same iteration and stage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms
from ase.build import make_supercell
from ase.io import jsonio

from mlip_autopipec.explore.md import (
    HALT_DISTANCE,
    HALT_GAMMA,
    WalkerRequest,
    WalkerResult,
    run_walker,
)
from mlip_autopipec.explore.select import (
    REJECTED,
    SELECTED,
    Fingerprint,
    decide,
    fingerprint,
    maxvol_order,
    random_order,
)
from mlip_autopipec.explore.stop import IterationFigures, StopDecision, should_stop

#: States of an explored frame (``al_candidates.state``) and the moves between them, as data
#: in the style of ``lifecycle/machine.py``. A frame is recorded as ``explored`` (max gamma
#: at or below ``gamma_select``) or ``candidate``; the held-out draw may take either.
FRAME_STATES = ("explored", "candidate", "heldout", "selected", "rejected")
FRAME_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "hold_out", "source": ["explored", "candidate"], "dest": "heldout"},
    {"trigger": "promote", "source": "explored", "dest": "candidate"},
    {"trigger": "select", "source": "candidate", "dest": "selected"},
    {"trigger": "reject", "source": "candidate", "dest": "rejected"},
]

#: Stages of one iteration, in order; ``done`` ends the loop.
STAGES = ("explore", "heldout", "check", "select", "label", "train")
DONE = "done"

HELDOUT_DIR = "heldout"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS al_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS al_iterations (
    iteration INTEGER PRIMARY KEY,
    parent_potential INTEGER NOT NULL,
    potential INTEGER,
    walkers INTEGER NOT NULL DEFAULT 0,
    frames INTEGER NOT NULL DEFAULT 0,
    candidates INTEGER NOT NULL DEFAULT 0,
    selected INTEGER NOT NULL DEFAULT 0,
    labelled INTEGER NOT NULL DEFAULT 0,
    heldout INTEGER NOT NULL DEFAULT 0,
    heldout_labelled INTEGER NOT NULL DEFAULT 0,
    heldout_rmse_energy_mev_per_atom REAL,
    heldout_rmse_forces_mev_per_ang REAL,
    refit_heldout_rmse_energy_mev_per_atom REAL,
    refit_heldout_rmse_forces_mev_per_ang REAL,
    frames_hot INTEGER NOT NULL DEFAULT 0,
    frames_hot_below_select INTEGER NOT NULL DEFAULT 0,
    walkers_halted INTEGER NOT NULL DEFAULT 0,
    gamma_max REAL,
    gamma_median REAL,
    survival_fs_mean REAL,
    survival_fs_min REAL,
    pwx_calls_total INTEGER,
    wall_seconds_total REAL,
    stop_reason TEXT,
    started REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS al_walkers (
    iteration INTEGER NOT NULL,
    key TEXT NOT NULL,
    condition TEXT NOT NULL,
    stop_reason TEXT NOT NULL,
    steps_done INTEGER NOT NULL,
    survival_fs REAL NOT NULL,
    max_gamma REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    temperatures TEXT NOT NULL,
    energies TEXT NOT NULL,
    wall_time REAL NOT NULL,
    PRIMARY KEY (iteration, key)
);
CREATE TABLE IF NOT EXISTS al_candidates (
    id INTEGER PRIMARY KEY,
    iteration INTEGER NOT NULL,
    walker TEXT NOT NULL,
    condition TEXT NOT NULL,
    frame INTEGER NOT NULL,
    potential INTEGER NOT NULL,
    gamma REAL NOT NULL,
    energy REAL NOT NULL,
    max_force REAL NOT NULL,
    atoms TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    structure_id INTEGER,
    heldout_id INTEGER,
    UNIQUE (iteration, walker, frame)
);
CREATE INDEX IF NOT EXISTS al_candidates_iteration ON al_candidates(iteration, state);
"""

LabelFn = Callable[[Any, Any, Path, dict[str, Path], int | None], Any]
TrainFn = Callable[[Any, Any, Path], Any]


class RunContext(Protocol):
    """What a stage needs (the attribute names of ``mlip_autopipec.stages.RunContext``)."""

    @property
    def recipe(self) -> Any: ...
    @property
    def store(self) -> Any: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def executor(self) -> Executor | None: ...
    @property
    def pseudos(self) -> dict[str, Path]: ...
    @property
    def workers(self) -> int | None: ...
    @property
    def say(self) -> Callable[[str], None]: ...
    @property
    def iteration(self) -> int: ...


@dataclass(frozen=True)
class StageResult:
    """The outcome of one stage (the shape of ``mlip_autopipec.stages.StageResult``)."""

    name: str
    status: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopOutcome:
    """How the loop ended."""

    converged: bool
    reason: str
    iterations: int
    potential_id: int | None
    pwx_calls: int


# -- the loop's own tables ---------------------------------------------------------------


def _conn(store: Any) -> sqlite3.Connection:
    # The loop's tables live in the run's one database, next to the store's own.
    conn: sqlite3.Connection = store._conn
    return conn


def ensure_tables(store: Any) -> None:
    """Create the loop's tables on the store's connection (idempotent)."""
    _conn(store).executescript(_SCHEMA)


@contextmanager
def _tx(store: Any) -> Iterator[sqlite3.Connection]:
    with store.transaction() as conn:
        yield conn


def _get(store: Any, key: str, default: str | None = None) -> str | None:
    row = _conn(store).execute("SELECT value FROM al_state WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def _set(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany(
        "INSERT INTO al_state(key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(k, str(v)) for k, v in values.items()],
    )


def position(store: Any) -> tuple[int, str]:
    """The loop's (iteration, stage); (1, "explore") before it starts."""
    ensure_tables(store)
    return int(_get(store, "iteration", "1") or 1), str(_get(store, "stage", STAGES[0]))


def _advance(store: Any, iteration: int, stage: str, **extra: Any) -> None:
    with _tx(store) as conn:
        _set(conn, iteration=iteration, stage=stage, **extra)


def iteration_rows(store: Any) -> list[dict[str, Any]]:
    """Every ``al_iterations`` row as a dict, oldest first (for status and the report)."""
    ensure_tables(store)
    cur = _conn(store).execute("SELECT * FROM al_iterations ORDER BY iteration")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def loop_summary(store: Any) -> dict[str, Any] | None:
    """The loop's state for ``status --json`` and the report: position, outcome, and one
    dict per iteration (the ``al_iterations`` columns); None when the run has no loop.
    Read-only: creates nothing in a run without the loop's tables."""
    exists = (
        _conn(store)
        .execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'al_state'")
        .fetchone()
    )
    if exists is None or _get(store, "started") is None:
        return None
    iteration, stage = position(store)
    outcome = _get(store, "outcome")
    final = _get(store, "final")
    return {
        "iteration": iteration,
        "stage": stage,
        "outcome": outcome,
        "converged": bool(outcome and outcome.startswith("converged")),
        "iterations": iteration_rows(store),
        "final": None if final is None else json.loads(final),
    }


def loop_recipe(recipe: Any) -> Any:
    """The recipe the loop's own fits use (the seed fit and every refit): ``trainer.max_epochs``
    lowered to ``active_learning.refit_max_epochs`` when that is set and lower, else the
    recipe itself (then the loop's last fit is the final one)."""
    cap = (recipe.data.get("active_learning") or {}).get("refit_max_epochs")
    if cap is None or int(cap) >= int(recipe.trainer["max_epochs"]):
        return recipe
    return _with_trainer(recipe, max_epochs=int(cap))


def final_recipe(recipe: Any) -> Any:
    """The recipe of the fit after the loop: the trainer's own settings, continued from the
    loop's last potential (``trainer.refit: continue``; the continuation ignores the changed
    stopping rule and falls back to a fresh fit, with a note, when anything else differs).
    The recipe itself when the loop's fits were not capped (:func:`loop_recipe`)."""
    if loop_recipe(recipe) is recipe:
        return recipe
    return _with_trainer(recipe, refit="continue")


def _with_trainer(recipe: Any, **changes: Any) -> Any:
    """A copy of ``recipe`` whose ``trainer`` section has ``changes``."""
    from dataclasses import replace

    return replace(recipe, data={**recipe.data, "trainer": {**recipe.trainer, **changes}})


def loop_potential(store: Any) -> int | None:
    """The loop's last potential: the one the last iteration explored with (the loop stops
    in an iteration's check stage, before it refits); None before the loop started."""
    ensure_tables(store)
    row = (
        _conn(store)
        .execute("SELECT parent_potential FROM al_iterations ORDER BY iteration DESC LIMIT 1")
        .fetchone()
    )
    return None if row is None else int(row[0])


def record_final(store: Any, run_dir: Path) -> dict[str, Any] | None:
    """Score the final potential (the store's current one, fitted after the loop ended)
    and the loop's last potential on every held-out frame of the run, and record both in
    ``al_state.final`` (``loop_summary``'s ``final``). None (nothing recorded) when the
    current potential is the loop's own or no held-out frame is labelled."""
    from mlip_autopipec.lifecycle.store import Store

    current = store.current_potential()
    last = loop_potential(store)
    if current is None or last is None or int(current["id"]) == last:
        return None
    ids = {
        int(r[0])
        for r in _conn(store).execute(
            "SELECT heldout_id FROM al_candidates WHERE heldout_id IS NOT NULL"
        )
    }
    record: dict[str, Any] = {"potential": int(current["id"]), "loop_potential": last}
    held = run_dir / HELDOUT_DIR
    if ids and (held / "autopipec.sqlite").is_file():
        with Store.open(held, create=False) as hstore:
            for name, pid in (("final", int(current["id"])), ("loop", last)):
                errors = heldout_errors(hstore, ids, fit_dir_of(store, run_dir, pid))
                record[f"{name}_heldout_rmse_energy_mev_per_atom"] = errors.get(
                    "energy_mev_per_atom"
                )
                record[f"{name}_heldout_rmse_forces_mev_per_ang"] = errors.get("forces_mev_per_ang")
            record["heldout_frames"] = errors.get("n", 0)  # the same frames for both
    with _tx(store) as tx:
        _set(tx, final=json.dumps(record, sort_keys=True))
    return record


def frame_states(store: Any, iteration: int) -> dict[str, int]:
    """Number of recorded frames of ``iteration`` per state."""
    rows = _conn(store).execute(
        "SELECT state, COUNT(*) FROM al_candidates WHERE iteration = ? GROUP BY state",
        (iteration,),
    )
    return {str(s): int(n) for s, n in rows}


# -- helpers -----------------------------------------------------------------------------


def settings_of(recipe: Any) -> dict[str, Any]:
    """The filled-in ``active_learning`` section (the schema holds every default)."""
    cfg = recipe.data.get("active_learning")
    if not cfg:
        raise ValueError("the recipe has no active_learning section")
    return dict(cfg)


def _potential(store: Any, pid: int | None = None) -> dict[str, Any]:
    pot = store.latest_potential()
    if pot is None:
        raise RuntimeError("no potential yet: the loop starts after the first fit")
    if pid is not None and int(pot["id"]) != pid:
        row = _conn(store).execute("SELECT path FROM potentials WHERE id = ?", (pid,)).fetchone()
        pot = {"id": pid, "path": row[0]}
    return pot


def fit_dir_of(store: Any, run_dir: Path, pid: int) -> Path:
    """The fit folder of potential ``pid`` (the store's path may be relative to the run dir)."""
    path = Path(_potential(store, pid)["path"])
    if not path.is_absolute():
        path = run_dir / path
    return path.parent


def _supercell(atoms: Atoms, spec: list[Any]) -> Atoms:
    if all(isinstance(x, int) for x in spec):
        return atoms.repeat(tuple(int(x) for x in spec))
    return make_supercell(atoms, np.array(spec, dtype=int))


def condition_supercell(cond: dict[str, Any], cfg: dict[str, Any]) -> list[Any]:
    """The supercell a condition's walkers use: its own ``supercell``, else the section's."""
    spec = cond.get("supercell")
    return list(cfg["supercell"] if spec is None else spec)


def _seed_int(*parts: int) -> int:
    return int(np.random.default_rng([int(p) for p in parts]).integers(1 << 31))


def start_index(
    n_seeds: int, condition: int, walker: int, iteration: int, walkers: int, seed: int
) -> int:
    """Which seed structure walker ``walker`` of ``condition`` starts from in ``iteration``.

    The walkers of a condition take consecutive seeds from a per-condition offset, and the
    window moves on by ``walkers`` every iteration: within an iteration the walkers of a
    condition start from distinct seeds (when there are enough), and over
    ``ceil(n_seeds / walkers)`` iterations every seed is a start of every condition. (A fixed
    pick per walker once left every 16-atom walker on the 2 %-compressed seed for the whole
    run, so 1000 K frames at the equilibrium volume were never explored, never labelled, and
    the potential was 5-10 meV/atom off there.)
    """
    offset = _seed_int(seed, 0, condition) % n_seeds
    return (offset + walker + (iteration - 1) * walkers) % n_seeds


def condition_key(cond: dict[str, Any]) -> str:
    """How a condition is recorded with its walkers and frames (unset keys left out)."""
    return json.dumps({k: v for k, v in cond.items() if v is not None}, sort_keys=True)


def hottest_conditions(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conditions at the highest temperature (e.g. 8- and 16-atom cells at 1000 K)."""
    top = max(float(c["temperature_K"]) for c in conditions)
    return [c for c in conditions if float(c["temperature_K"]) == top]


def walker_requests(ctx: RunContext, iteration: int, parent: int) -> list[WalkerRequest]:
    """The walkers of one iteration (deterministic in the recipe, iteration and seed)."""
    from mlip_autopipec.recipe import build_structures

    cfg = settings_of(ctx.recipe)
    seeds = [s.atoms for s in build_structures(ctx.recipe)]
    fit_dir = fit_dir_of(ctx.store, ctx.run_dir, parent)
    min_distance = float(ctx.recipe.oracle["min_distance"])  # the recipe has it filled in
    seed = int(cfg["seed"])
    out = []
    for c, cond in enumerate(cfg["conditions"]):
        for w in range(int(cfg["walkers"])):
            key = f"c{c}w{w}"
            pick = start_index(len(seeds), c, w, iteration, int(cfg["walkers"]), seed)
            atoms = _supercell(seeds[pick], condition_supercell(cond, cfg))
            if cfg["start"] == "last_frames" and iteration > 1:
                atoms = _last_safe_frame(ctx.store, iteration - 1, key, cfg) or atoms
            out.append(
                WalkerRequest(
                    key=key,
                    atoms=atoms,
                    fit_dir=str(fit_dir),
                    potential_id=parent,
                    ensemble=str(cond["ensemble"]),
                    temperature_K=float(cond["temperature_K"]),
                    pressure_GPa=float(cond.get("pressure_GPa", 0.0)),
                    timestep_fs=float(cfg["timestep_fs"]),
                    steps=int(cfg["steps"]),
                    seed=_seed_int(seed, iteration, c, w),
                    gamma_select=float(cfg["gamma_select"]),
                    gamma_halt=float(cfg["gamma_halt"]),
                    min_distance=min_distance,
                    sample_every=int(cfg["sample_every"]),
                    friction_per_fs=float(cfg["friction_per_fs"]),
                    condition=json.loads(condition_key(cond)),
                )
            )
    return out


def _last_safe_frame(store: Any, iteration: int, key: str, cfg: dict[str, Any]) -> Atoms | None:
    row = (
        _conn(store)
        .execute(
            "SELECT atoms FROM al_candidates WHERE iteration = ? AND walker = ? AND gamma <= ?"
            " ORDER BY frame DESC LIMIT 1",
            (iteration, key, float(cfg["gamma_select"])),
        )
        .fetchone()
    )
    if row is None:
        return None
    atoms = jsonio.decode(row[0])
    return atoms if isinstance(atoms, Atoms) else None


def _record_walker(
    store: Any, iteration: int, request: WalkerRequest, result: WalkerResult
) -> None:
    cond = json.dumps(request.condition, sort_keys=True)
    with _tx(store) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO al_walkers(iteration, key, condition, stop_reason, steps_done,"
            " survival_fs, max_gamma, message, temperatures, energies, wall_time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                iteration,
                result.key,
                cond,
                result.stop_reason,
                result.steps_done,
                result.survival_fs,
                result.max_gamma,
                result.message,
                json.dumps(list(result.temperatures)),
                json.dumps(list(result.energies)),
                result.wall_time,
            ),
        )
        for frame in result.frames:
            if frame.step == 0:
                continue  # the start structure itself: a (supercell of a) training structure
            state = "candidate" if frame.max_gamma > request.gamma_select else "explored"
            conn.execute(
                "INSERT OR IGNORE INTO al_candidates(iteration, walker, condition, frame,"
                " potential, gamma, energy, max_force, atoms, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    iteration,
                    result.key,
                    cond,
                    frame.step,
                    request.potential_id,
                    frame.max_gamma,
                    frame.energy,
                    frame.max_force,
                    str(jsonio.encode(frame.atoms)),
                    state,
                ),
            )


def _pwx_calls(ctx: RunContext) -> int:
    from mlip_autopipec.lifecycle.store import Store

    total = int(ctx.store.total_attempts())
    held = ctx.run_dir / HELDOUT_DIR
    if (held / "autopipec.sqlite").is_file():
        with Store.open(held, create=False) as hstore:
            total += int(hstore.total_attempts())
    return total


def _wall(store: Any) -> float:
    return time.time() - float(_get(store, "started", str(time.time())) or time.time())


# -- stages ------------------------------------------------------------------------------


def explore_stage(ctx: RunContext) -> StageResult:
    """Run every walker of the current iteration not yet recorded; record figures.

    Walkers finish in any order, so everything downstream reads frames ordered by
    (walker, frame), never by row id: a resumed run decides exactly as an uninterrupted one.
    """
    from mlip_autopipec.execution import local_executor

    iteration, _ = position(ctx.store)
    cfg = settings_of(ctx.recipe)
    conn = _conn(ctx.store)
    row = conn.execute(
        "SELECT parent_potential FROM al_iterations WHERE iteration = ?", (iteration,)
    ).fetchone()
    if row is None:
        parent = int(_potential(ctx.store)["id"])
        with _tx(ctx.store) as tx:
            tx.execute(
                "INSERT INTO al_iterations(iteration, parent_potential, started) VALUES (?, ?, ?)",
                (iteration, parent, time.time()),
            )
    else:
        parent = int(row[0])
    requests = walker_requests(ctx, iteration, parent)
    done = {
        str(r[0])
        for r in conn.execute("SELECT key FROM al_walkers WHERE iteration = ?", (iteration,))
    }
    todo = [r for r in requests if r.key not in done]
    ctx.say(
        f"autopipec: active learning iteration {iteration}: {len(todo)} MD walker(s) to run "
        f"({len(done)} done) with potential {parent}"
    )
    if todo:
        executor = ctx.executor
        own = None
        if executor is None:
            own = local_executor(int(ctx.workers or 1))
            executor = own
        try:
            futures = {executor.submit(run_walker, r): r for r in todo}
            for future in as_completed(futures):
                request = futures[future]
                result = future.result()
                _record_walker(ctx.store, iteration, request, result)
                ctx.say(
                    f"autopipec:   walker {request.key} ({request.ensemble} "
                    f"{request.temperature_K:g} K): {result.stop_reason} after "
                    f"{result.survival_fs:.0f} fs, max gamma {result.max_gamma:.3g}"
                )
        finally:
            if own is not None:
                own.shutdown()
    figures = _explore_figures(ctx.store, iteration, cfg)
    with _tx(ctx.store) as tx:
        sets = ", ".join(f"{k} = ?" for k in figures)
        tx.execute(
            f"UPDATE al_iterations SET {sets} WHERE iteration = ?",
            (*figures.values(), iteration),
        )
        _set(tx, iteration=iteration, stage="heldout")
    return StageResult("explore", "done", figures)


def _explore_figures(store: Any, iteration: int, cfg: dict[str, Any]) -> dict[str, Any]:
    conn = _conn(store)
    walkers = conn.execute(
        "SELECT condition, stop_reason, survival_fs FROM al_walkers WHERE iteration = ?",
        (iteration,),
    ).fetchall()
    frames = conn.execute(
        "SELECT condition, gamma FROM al_candidates WHERE iteration = ?", (iteration,)
    ).fetchall()
    hot = {condition_key(c) for c in hottest_conditions(cfg["conditions"])}
    hot_frames = [float(g) for c, g in frames if c in hot]
    gammas = [float(g) for _, g in frames]
    survival = [float(s) for _, _, s in walkers]
    select = float(cfg["gamma_select"])
    return {
        "walkers": len(walkers),
        "frames": len(frames),
        "candidates": sum(1 for g in gammas if g > select),
        "frames_hot": len(hot_frames),
        "frames_hot_below_select": sum(1 for g in hot_frames if g <= select),
        "walkers_halted": sum(1 for _, r, _ in walkers if r in (HALT_GAMMA, HALT_DISTANCE)),
        "gamma_max": max(gammas, default=None),
        "gamma_median": float(np.median(gammas)) if gammas else None,
        "survival_fs_mean": float(np.mean(survival)) if survival else None,
        "survival_fs_min": min(survival, default=None),
    }


def heldout_stage(ctx: RunContext, label_fn: LabelFn) -> StageResult:
    """Draw, label (separate store) and score this iteration's held-out frames."""
    from mlip_autopipec.lifecycle.store import Store

    iteration, _ = position(ctx.store)
    cfg = settings_of(ctx.recipe)
    conn = _conn(ctx.store)
    drawn = conn.execute(
        "SELECT COUNT(*) FROM al_candidates WHERE iteration = ? AND state = 'heldout'",
        (iteration,),
    ).fetchone()[0]
    if not drawn and int(cfg["heldout"]) > 0:
        pool = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM al_candidates WHERE iteration = ?"
                " AND state IN ('explored', 'candidate') ORDER BY walker, frame",
                (iteration,),
            )
        ]
        rng = np.random.default_rng([int(cfg["seed"]), iteration, 7])
        take = sorted(int(i) for i in rng.permutation(pool)[: int(cfg["heldout"])])
        with _tx(ctx.store) as tx:
            tx.executemany(
                "UPDATE al_candidates SET state = 'heldout' WHERE id = ?", ((i,) for i in take)
            )
    rows = conn.execute(
        "SELECT id, atoms, walker, frame FROM al_candidates WHERE iteration = ?"
        " AND state = 'heldout' ORDER BY walker, frame",
        (iteration,),
    ).fetchall()
    held_dir = ctx.run_dir / HELDOUT_DIR
    errors: dict[str, Any] = {}
    if rows:
        with Store.open(held_dir) as hstore:
            ids = hstore.add_structures(
                (jsonio.decode(a), f"heldout it{iteration} {w} frame {f}") for _, a, w, f in rows
            )
            with _tx(ctx.store) as tx:
                tx.executemany(
                    "UPDATE al_candidates SET heldout_id = ? WHERE id = ?",
                    ((hid, int(r[0])) for hid, r in zip(ids, rows, strict=True)),
                )
            if hstore.ids_in_state("pending", "running", "scf_retry"):
                label_fn(ctx.recipe, hstore, held_dir, ctx.pseudos, ctx.workers)
            parent = int(
                conn.execute(
                    "SELECT parent_potential FROM al_iterations WHERE iteration = ?", (iteration,)
                ).fetchone()[0]
            )
            errors = heldout_errors(hstore, set(ids), fit_dir_of(ctx.store, ctx.run_dir, parent))
    with _tx(ctx.store) as tx:
        tx.execute(
            "UPDATE al_iterations SET heldout = ?, heldout_labelled = ?,"
            " heldout_rmse_energy_mev_per_atom = ?, heldout_rmse_forces_mev_per_ang = ?"
            " WHERE iteration = ?",
            (
                len(rows),
                errors.get("n", 0),
                errors.get("energy_mev_per_atom"),
                errors.get("forces_mev_per_ang"),
                iteration,
            ),
        )
        _set(tx, iteration=iteration, stage="check")
    if errors:
        ctx.say(
            f"autopipec:   held-out ({errors['n']} frames) RMSE of potential: energy "
            f"{errors['energy_mev_per_atom']:.2f} meV/atom, forces "
            f"{errors['forces_mev_per_ang']:.1f} meV/Å"
        )
    return StageResult("heldout", "done", errors)


def heldout_errors(hstore: Any, ids: set[int], fit_dir: Path) -> dict[str, Any]:
    """RMSE (meV/atom, meV/Å force components) of the potential in ``fit_dir`` on the
    labelled held-out structures ``ids``; ``{}`` when none is labelled."""
    from mlip_autopipec.explore.md import quiet_pyace_import
    from mlip_autopipec.trainer.calculator import load_calculator

    labelled = [a for a in hstore.labelled_atoms() if int(a.info["structure_id"]) in ids]
    if not labelled:
        return {}
    with quiet_pyace_import():
        import pyace  # noqa: F401 - imported here for its logging side effect only
    calc = load_calculator(fit_dir)
    de, df = [], []
    for atoms in labelled:
        e_ref = atoms.get_potential_energy()
        f_ref = atoms.get_forces()
        probe = atoms.copy()
        probe.calc = calc
        de.append((probe.get_potential_energy() - e_ref) / len(atoms))
        df.append((probe.get_forces() - f_ref).ravel())
    return {
        "n": len(labelled),
        "energy_mev_per_atom": 1000 * float(np.sqrt(np.mean(np.square(de)))),
        "forces_mev_per_ang": 1000 * float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
    }


def figures_of(store: Any) -> list[IterationFigures]:
    """The stop rule's input: one entry per iteration whose held-out stage finished."""
    out = []
    for row in iteration_rows(store):
        if row["pwx_calls_total"] is None:
            continue
        out.append(
            IterationFigures(
                iteration=int(row["iteration"]),
                frames_hot=int(row["frames_hot"]),
                frames_hot_below_select=int(row["frames_hot_below_select"]),
                walkers_halted=int(row["walkers_halted"]),
                heldout_rmse_energy_mev_per_atom=row["heldout_rmse_energy_mev_per_atom"],
                heldout_rmse_forces_mev_per_ang=row["heldout_rmse_forces_mev_per_ang"],
                pwx_calls_total=int(row["pwx_calls_total"]),
                wall_seconds_total=float(row["wall_seconds_total"]),
            )
        )
    return out


def check_stage(ctx: RunContext) -> tuple[StageResult, StopDecision]:
    """Record the iteration's totals and apply the stop rule."""
    iteration, _ = position(ctx.store)
    cfg = settings_of(ctx.recipe)
    calls, wall = _pwx_calls(ctx), _wall(ctx.store)
    with _tx(ctx.store) as tx:
        tx.execute(
            "UPDATE al_iterations SET pwx_calls_total = ?, wall_seconds_total = ?"
            " WHERE iteration = ?",
            (calls, wall, iteration),
        )
    decision = should_stop(figures_of(ctx.store), cfg, refits_done=iteration - 1)
    with _tx(ctx.store) as tx:
        if decision.stop:
            tx.execute(
                "UPDATE al_iterations SET stop_reason = ?, finished = ? WHERE iteration = ?",
                (decision.reason, time.time(), iteration),
            )
            _set(tx, iteration=iteration, stage=DONE, outcome=decision.reason)
        else:
            _set(tx, iteration=iteration, stage="select")
    return StageResult("check", "done", {"reason": decision.reason}), decision


#: Explored frames above this grade lie outside the active set (MaxVol's own tolerance):
#: the ones :func:`promote_explored` may turn into candidates.
PROMOTE_GAMMA = 1.01


def promote_explored(store: Any, iteration: int, cfg: dict[str, Any]) -> int:
    """Turn explored frames outside the active set into candidates when this iteration's
    held-out errors miss the targets but fewer than ``max_selected`` frames are candidates
    (``fill_from_explored``). Without this the loop stalls: measured on the Si recipe, after
    one refit every walker stayed below gamma 5 (no candidate) while the held-out energy
    error was 8 meV/atom. Idempotent; returns the number of frames promoted."""
    from mlip_autopipec.recipe.schema import schema_default

    if not cfg.get("fill_from_explored", schema_default("active_learning", "fill_from_explored")):
        return 0
    conn = _conn(store)
    row = conn.execute(
        "SELECT heldout_rmse_energy_mev_per_atom, heldout_rmse_forces_mev_per_ang"
        " FROM al_iterations WHERE iteration = ?",
        (iteration,),
    ).fetchone()
    targets = cfg.get("targets") or {}
    if row is None or row[0] is None or row[1] is None:
        return 0
    misses = float(row[0]) > float(targets.get("energy_mev_per_atom", float("inf"))) or float(
        row[1]
    ) > float(targets.get("forces_mev_per_ang", float("inf")))
    (candidates,) = conn.execute(
        "SELECT COUNT(*) FROM al_candidates WHERE iteration = ? AND state = 'candidate'",
        (iteration,),
    ).fetchone()
    if not misses or int(candidates) >= int(cfg["max_selected"]):
        return 0
    with _tx(store) as tx:
        cur = tx.execute(
            "UPDATE al_candidates SET state = 'candidate' WHERE iteration = ?"
            " AND state = 'explored' AND gamma > ?",
            (iteration, PROMOTE_GAMMA),
        )
    return int(cur.rowcount)


def select_stage(ctx: RunContext) -> StageResult:
    """Decide every candidate of this iteration; add the selected ones to the store."""
    from mlip_autopipec.trainer.calculator import load_fit

    iteration, _ = position(ctx.store)
    cfg = settings_of(ctx.recipe)
    conn = _conn(ctx.store)
    promoted = promote_explored(ctx.store, iteration, cfg)
    if promoted:
        ctx.say(
            f"autopipec:   held-out errors above the targets and few candidates: {promoted} "
            f"explored frame(s) with gamma > {PROMOTE_GAMMA} become candidates"
        )
    rows = conn.execute(
        "SELECT id, atoms, energy, max_force, gamma, walker, condition, frame, potential"
        " FROM al_candidates WHERE iteration = ? AND state = 'candidate' ORDER BY walker, frame",
        (iteration,),
    ).fetchall()
    atoms_list = [jsonio.decode(r[1]) for r in rows]
    if rows:
        gap = int(cfg["sample_every"])
        fps = [
            fingerprint(a, r[2], r[3], walker=str(r[5]), step=int(r[7]), min_gap=gap)
            for a, r in zip(atoms_list, rows, strict=True)
        ]
        store_hashes = {str(h) for (h,) in conn.execute("SELECT hash FROM structures").fetchall()}
        known = [
            Fingerprint("", fp.digest, float("nan"), float("nan"))
            for fp in fps
            if fp.digest in store_hashes
        ]
        if cfg["selection"] == "random":
            order = random_order(len(rows), _seed_int(int(cfg["seed"]), iteration, 11))
        else:
            fit = load_fit(fit_dir_of(ctx.store, ctx.run_dir, int(rows[0][8])))
            order = maxvol_order(atoms_list, fit.potential_yaml, fit.asi)
        decisions = decide(fps, order, int(cfg["max_selected"]), known)
        with _tx(ctx.store) as tx:
            tx.executemany(
                "UPDATE al_candidates SET state = ?, reason = ?"
                " WHERE id = ? AND state = 'candidate'",
                ((d.state, d.reason, int(rows[d.index][0])) for d in decisions),
            )
    chosen = conn.execute(
        "SELECT id, atoms, walker, condition, frame, gamma, potential FROM al_candidates"
        " WHERE iteration = ? AND state = ? AND structure_id IS NULL ORDER BY walker, frame",
        (iteration, SELECTED),
    ).fetchall()
    if chosen:
        # provenance (issue 13): iteration, origin (walker, condition, frame), the
        # potential that proposed the frame and its gamma at selection
        by_potential: dict[int | None, list[Any]] = {}
        for row in chosen:
            by_potential.setdefault(None if row[6] is None else int(row[6]), []).append(row)
        for pid, group in by_potential.items():
            items = []
            for _, text, walker, cond, frame, gamma, _pid in group:
                c = json.loads(cond)
                source = (
                    f"md it{iteration} {walker} {c['ensemble']} {c['temperature_K']:g}K "
                    f"frame {frame} gamma {gamma:.3g} potential {pid}"
                )
                origin = {
                    "kind": "md",
                    "source": source,
                    "iteration": iteration,
                    "walker": walker,
                    "condition": c,
                    "frame": int(frame),
                }
                gamma_value = None if gamma is None else float(gamma)
                items.append((jsonio.decode(text), source, origin, gamma_value))
            ids = ctx.store.add_structures(items, iteration=iteration, parent_potential=pid)
            with _tx(ctx.store) as tx:
                tx.executemany(
                    "UPDATE al_candidates SET structure_id = ? WHERE id = ?",
                    ((sid, int(r[0])) for sid, r in zip(ids, group, strict=True)),
                )
    states = frame_states(ctx.store, iteration)
    reasons = dict(
        conn.execute(
            "SELECT reason, COUNT(*) FROM al_candidates WHERE iteration = ? AND state = ?"
            " GROUP BY reason",
            (iteration, REJECTED),
        ).fetchall()
    )
    with _tx(ctx.store) as tx:
        tx.execute(
            "UPDATE al_iterations SET selected = ? WHERE iteration = ?",
            (states.get(SELECTED, 0), iteration),
        )
        _set(tx, iteration=iteration, stage="label")
    ctx.say(
        f"autopipec:   selected {states.get(SELECTED, 0)} of "
        f"{states.get(SELECTED, 0) + states.get(REJECTED, 0)} candidates "
        f"({cfg['selection']}); rejected: {reasons or 'none'}"
    )
    return StageResult("select", "done", {"states": states, "rejected": reasons})


def _label_stage(ctx: RunContext, label_fn: LabelFn) -> StageResult:
    iteration, _ = position(ctx.store)
    if ctx.store.ids_in_state("pending", "running", "scf_retry"):
        label_fn(ctx.recipe, ctx.store, ctx.run_dir, ctx.pseudos, ctx.workers)
    conn = _conn(ctx.store)
    labelled = conn.execute(
        "SELECT COUNT(*) FROM al_candidates c JOIN labels l ON l.structure_id = c.structure_id"
        " WHERE c.iteration = ? AND c.state = ?",
        (iteration, SELECTED),
    ).fetchone()[0]
    with _tx(ctx.store) as tx:
        tx.execute(
            "UPDATE al_iterations SET labelled = ? WHERE iteration = ?", (labelled, iteration)
        )
        _set(tx, iteration=iteration, stage="train")
    return StageResult("label", "done", {"labelled": int(labelled)})


def _train_stage(ctx: RunContext, train_fn: TrainFn) -> StageResult:
    from mlip_autopipec.lifecycle.store import Store

    iteration, _ = position(ctx.store)
    train_fn(ctx.recipe, ctx.store, ctx.run_dir)
    pid = int(_potential(ctx.store)["id"])
    refit: dict[str, Any] = {}
    held = ctx.run_dir / HELDOUT_DIR
    ids = {
        int(r[0])
        for r in _conn(ctx.store).execute(
            "SELECT heldout_id FROM al_candidates WHERE iteration = ? AND heldout_id IS NOT NULL",
            (iteration,),
        )
    }
    if ids:
        with Store.open(held, create=False) as hstore:
            refit = heldout_errors(hstore, ids, fit_dir_of(ctx.store, ctx.run_dir, pid))
    with _tx(ctx.store) as tx:
        tx.execute(
            "UPDATE al_iterations SET potential = ?, refit_heldout_rmse_energy_mev_per_atom = ?,"
            " refit_heldout_rmse_forces_mev_per_ang = ?, finished = ? WHERE iteration = ?",
            (
                pid,
                refit.get("energy_mev_per_atom"),
                refit.get("forces_mev_per_ang"),
                time.time(),
                iteration,
            ),
        )
        _set(tx, iteration=iteration + 1, stage=STAGES[0])
    return StageResult("train", "done", {"potential": pid, **refit})


def _say_iteration(ctx: RunContext, iteration: int, **kwargs: Any) -> None:
    """The progress line of one iteration (lifecycle.progress.iteration_summary)."""
    from mlip_autopipec.lifecycle.progress import iteration_summary

    row = next((r for r in iteration_rows(ctx.store) if r["iteration"] == iteration), None)
    if row is not None:
        budget = settings_of(ctx.recipe).get("budget")
        ctx.say("autopipec: " + iteration_summary(row, budget, **kwargs))


def run_loop(ctx: RunContext, label_fn: LabelFn, train_fn: TrainFn) -> LoopOutcome:
    """Run (or resume) the loop until the stop rule or a budget ends it."""
    ensure_tables(ctx.store)
    if _get(ctx.store, "started") is None:
        with _tx(ctx.store) as tx:
            _set(tx, started=time.time())
    while True:
        iteration, stage = position(ctx.store)
        if stage == DONE:
            break
        if stage == "explore":
            explore_stage(ctx)
        elif stage == "heldout":
            heldout_stage(ctx, label_fn)
        elif stage == "check":
            _, decision = check_stage(ctx)
            if decision.stop:
                _say_iteration(ctx, iteration, refits_done=iteration - 1)
                ctx.say(f"autopipec: active learning: {decision.reason}")
        elif stage == "select":
            select_stage(ctx)
        elif stage == "label":
            _label_stage(ctx, label_fn)
        elif stage == "train":
            _train_stage(ctx, train_fn)
            _say_iteration(ctx, iteration, refits_done=iteration, pwx_calls=_pwx_calls(ctx))
        else:  # pragma: no cover - only if the table was edited by hand
            raise RuntimeError(f"unknown active-learning stage {stage!r}")
    reason = str(_get(ctx.store, "outcome", "") or "")
    pot = ctx.store.latest_potential()
    return LoopOutcome(
        converged=reason.startswith("converged"),
        reason=reason,
        iterations=iteration,
        potential_id=None if pot is None else int(pot["id"]),
        pwx_calls=_pwx_calls(ctx),
    )
