"""The resumable labelling loop: the single writer of the store.

Workers (threads or parsl) only run attempts and return AttemptResults; this loop records
each one, moves the structure through the lifecycle table and asks the oracle for the
next attempt. Every move is committed before the next side effect (submitting pw.x), so a
SIGKILL at any moment loses at most the attempts that were in flight: on the next run
those structures are requeued, their half-written attempt folders renamed aside
(``attempt-03.interrupted-1``) and never read, and finished labels are never recomputed.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path
from typing import Any, Protocol

from mlip_autopipec import process
from mlip_autopipec.errors import AutopipecError, Interrupted, RunEnvironmentError
from mlip_autopipec.fsutil import set_aside
from mlip_autopipec.lifecycle.machine import (
    FAILED,
    LABELLED,
    PENDING,
    PERMANENT,
    RUNNING,
    SCF_RETRY,
    Lifecycle,
    is_permanent,
)
from mlip_autopipec.lifecycle.progress import Progress
from mlip_autopipec.lifecycle.store import DB_NAME, Store
from mlip_autopipec.signals import catch_signals

log = logging.getLogger(__name__)

#: Seconds between checks for signals and progress redraws while attempts run.
POLL = 0.25

_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")


class Oracle(Protocol):
    """What the runner needs from an oracle (``EspressoOracle`` satisfies it)."""

    def preflight(self, atoms: Any) -> Any | None: ...

    def next_request(
        self, structure_id: str, atoms: Any, history: list[Any], workdir: Path
    ) -> Any | None: ...


def structure_workdir(run_dir: Path, structure_id: int) -> Path:
    """Where the attempts of one structure live: ``RUN_DIR/structures/000042``."""
    return run_dir / "structures" / f"{structure_id:06d}"


def set_aside_unrecorded(workdir: Path, recorded: set[int]) -> list[Path]:
    """Set aside every ``attempt-NN`` folder in ``workdir`` without a recorded result."""
    if not workdir.is_dir():
        return []
    moved = []
    for child in sorted(workdir.iterdir()):
        m = _ATTEMPT_DIR.match(child.name)
        if m and child.is_dir() and int(m.group(1)) not in recorded:
            target = set_aside(child)
            if target is not None:
                moved.append(target)
    return moved


def set_aside_unfinished_fits(run_dir: Path) -> list[Path]:
    """Set aside ``RUN_DIR/trainer/fit-NNN`` folders of fits that never finished (killed:
    no ``potential.json``) as ``fit-NNN.interrupted-<k>``; the next fit reuses the number.

    Call with the run lock held (then no live pacemaker writes there: the lock reaps a
    dead runner's children first).
    """
    from mlip_autopipec.trainer.fit import POTENTIAL_JSON

    trainer = Path(run_dir) / "trainer"
    if not trainer.is_dir():
        return []
    moved = []
    for child in sorted(trainer.glob("fit-*")):
        if child.is_dir() and child.name[4:].isdigit() and not (child / POTENTIAL_JSON).is_file():
            target = set_aside(child)
            if target is not None:
                log.info("set aside unfinished fit %s", child.name)
                moved.append(target)
    return moved


def _default_from_dict() -> Callable[[dict[str, Any]], Any]:
    oracle_module = importlib.import_module("mlip_autopipec.oracle")
    from_dict: Callable[[dict[str, Any]], Any] = oracle_module.AttemptResult.from_dict
    return from_dict


#: Below this many free bytes on the run directory's file system a failed attempt is
#: blamed on the disk, not on the structure (the run stops; nothing is quarantined).
MIN_FREE_BYTES = 1 << 20

#: How often one structure's attempt is resubmitted after its worker was lost.
MAX_LOST_RESUBMITS = 3


def _is_lost_worker(exc: BaseException) -> bool:
    try:
        from mlip_autopipec.execution.parsl_engine import is_lost_worker_error
    except ImportError:  # parsl not installed: the local pool never loses workers
        return False
    return bool(is_lost_worker_error(exc))


class _Stop:
    """Signal bookkeeping: the handler only records; the loop does the work."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.fatal: BaseException | None = None

    def __bool__(self) -> bool:
        return self.signum is not None or self.fatal is not None

    def record(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum


class _Runner:
    def __init__(
        self,
        store: Store,
        oracle: Oracle,
        run_attempt_fn: Callable[[Any], Any],
        executor: Executor,
        run_dir: Path,
        progress: Progress | None,
        max_inflight: int,
        permanent: frozenset[str],
        result_from_dict: Callable[[dict[str, Any]], Any] | None,
    ):
        self.store = store
        self.oracle = oracle
        self.run_fn = run_attempt_fn
        self.executor = executor
        self.run_dir = run_dir
        self.progress = progress
        self.max_inflight = max_inflight
        self.permanent = permanent
        self._from_dict = result_from_dict
        self.life = Lifecycle(store, permanent)
        self.inflight: dict[Future[Any], tuple[int, Any]] = {}
        self.history: dict[int, list[Any]] = {}
        self.atoms: dict[int, Any] = {}
        self.stop = _Stop()
        self.attempts = store.total_attempts()
        self.lost: dict[int, int] = {}
        self.offset: dict[int, int] = {}
        self.workdirs: dict[int, Path] = {}
        self.counts = store.counts()
        # files the run needs throughout; one that vanishes is the infrastructure's fault
        pseudos = getattr(oracle, "pseudopotentials", None) or {}
        self.required = sorted({Path(p) for p in pseudos.values() if Path(p).is_file()})

    # -- bookkeeping helpers ------------------------------------------------------------
    def _move(self, sid: int, trigger: str, **kwargs: Any) -> str:
        old = self.life.model(sid).state
        new = self.life.fire(sid, trigger, **kwargs)
        self.counts[old] -= 1
        self.counts[new] += 1
        if kwargs.get("result") is not None and not kwargs.get("preflight"):
            self.attempts += 1
        return new

    def _event(self, message: str, *, routine: bool = False) -> None:
        log.info(message)
        if self.progress is not None:
            self.progress.event(message, routine=routine)

    def _tick(self, force: bool = False) -> None:
        if self.progress is not None:
            self.progress.update(self.counts, self.attempts, force=force)

    def _done(self, sid: int) -> None:
        self.life.release(sid)
        self.history.pop(sid, None)
        self.atoms.pop(sid, None)
        self.offset.pop(sid, None)
        self.workdirs.pop(sid, None)

    def _prune(self, sid: int, *, finished: bool) -> None:
        """``oracle.keep``: drop pw.x scratch no restart will read (oracle/keep.py)."""
        keep = getattr(self.oracle, "keep", "all")
        if keep == "all":
            return
        from mlip_autopipec.oracle.keep import prune_structure

        try:
            prune_structure(self._workdir(sid), keep, finished=finished)
        except OSError as exc:  # scratch that cannot be removed costs disk, not labels
            log.warning("structure %d: could not prune pw.x scratch: %s", sid, exc)

    def _workdir(self, sid: int) -> Path:
        """Where this structure's current ladder runs: its folder, or ``retry-<k>`` in it
        after the k-th ``--retry-failed`` (the earlier attempt folders stay as they are)."""
        if sid not in self.workdirs:
            k = sum(1 for t in self.store.transitions_of(sid) if t[0] == "retry_failed")
            base = structure_workdir(self.run_dir, sid)
            self.workdirs[sid] = base / f"retry-{k}" if k else base
        return self.workdirs[sid]

    def _history(self, sid: int) -> list[Any]:
        """The attempts of the current ladder, numbered from 1 as the oracle plans them.

        After ``--retry-failed`` the ladder restarts: attempts recorded before it (outside
        the ``retry-<k>`` folder) are not shown to the oracle; their count is the offset
        added to the numbers of the new attempts (attempt numbers stay unique per structure).
        """
        if sid not in self.history:
            stored = self.store.attempts_of(sid)
            if stored and self._from_dict is None:
                self._from_dict = _default_from_dict()
            from_dict = self._from_dict
            results = [from_dict(d) for d in stored] if from_dict is not None else []
            workdir = self._workdir(sid)
            if workdir.name.startswith("retry-"):
                current = [
                    r for r in results if Path(str(r.attempt_dir)).parent.name == workdir.name
                ]
                self.offset[sid] = len(results) - len(current)
                results = [self._renumber(r, -self.offset[sid]) for r in current]
            self.history[sid] = results
        return self.history[sid]

    @staticmethod
    def _renumber(item: Any, by: int) -> Any:
        return dataclasses.replace(item, number=item.number + by) if by else item

    def _recorded_in_workdir(self, sid: int) -> set[int]:
        self._history(sid)
        offset = self.offset.get(sid, 0)
        return {n - offset for n in self.store.attempt_numbers(sid) if n > offset}

    def _infrastructure_problem(self, result: Any = None, files_only: bool = False) -> str | None:
        """Why the run, not the structure, is at fault (a vanished file, a full disk)."""
        for path in self.required:
            if not path.is_file():
                return (
                    f"{path}: existed when the run started and is gone; restore it "
                    "(the structures in flight were requeued, nothing was quarantined)"
                )
        if files_only:
            return None
        try:
            fs = os.statvfs(self.run_dir)
            free = fs.f_bavail * fs.f_frsize
        except OSError:
            free = MIN_FREE_BYTES
        message = str(getattr(result, "message", "") or "")
        if free < MIN_FREE_BYTES or "No space left on device" in message:
            return (
                f"{self.run_dir}: the file system is full ({free // 1024} KiB free); free "
                "some space (the structures in flight were requeued, nothing was quarantined)"
            )
        return None

    def _stop_for(self, sid: int, problem: str) -> None:
        """Stop the run for an infrastructure problem; ``sid`` goes back to pending."""
        if self.stop.fatal is None:
            self.stop.fatal = RunEnvironmentError(problem)
            self._event(f"stopping: {problem}")
        self._move(sid, "requeue", note=f"stopped: {problem[:200]}")
        self._done(sid)

    # -- resume -------------------------------------------------------------------------
    def resume(self) -> None:
        """Requeue what a killed run left in flight and set its attempt folders aside."""
        stale = self.store.ids_in_state(RUNNING, SCF_RETRY)
        if not stale:
            return
        self.store.bulk_transition(stale, "requeue", note="resume: in-flight attempt not trusted")
        for sid in stale:
            moved = set_aside_unrecorded(self._workdir(sid), self._recorded_in_workdir(sid))
            for path in moved:
                log.info("structure %d: set aside unfinished %s", sid, path.name)
        self.counts = self.store.counts()
        self._event(f"resume: {len(stale)} interrupted structure(s) requeued")

    # -- submitting ---------------------------------------------------------------------
    def _submit(self, sid: int, request: Any) -> None:
        # An attempt folder with this number can only be left over from a killed run
        # (results are recorded before the next number is handed out): never trust it.
        moved = set_aside(Path(request.attempt_dir))
        if moved is not None:
            log.info("structure %d: set aside unfinished %s", sid, moved.name)
        future = self.executor.submit(self.run_fn, request)
        self.inflight[future] = (sid, request)

    def begin(self, sid: int) -> None:
        """Preflight a pending structure and submit its first (next) attempt."""
        problem = self._infrastructure_problem()
        if problem is not None:
            self.stop.fatal = self.stop.fatal or RunEnvironmentError(problem)
            return
        atoms = self.store.atoms_of(sid)
        pre = self.oracle.preflight(atoms)
        if pre is not None:
            self._move(sid, "quarantine", result=pre, preflight=True)
            self._event(f"structure {sid}: failed preflight: {pre.failure_class}: {pre.message}")
            self._done(sid)
            return
        history = self._history(sid)
        request = self.oracle.next_request(str(sid), atoms, list(history), self._workdir(sid))
        if request is None:
            last = history[-1] if history else None
            self._move(
                sid,
                "quarantine",
                failure_class=last.failure_class if last is not None else "no_attempt",
                message=f"no further attempt after {len(history)}"
                + (f"; last: {last.message}" if last is not None else ""),
            )
            self._event(f"structure {sid}: quarantined (no further attempt)")
            self._done(sid)
            return
        self.atoms[sid] = atoms
        request = self._renumber(request, self.offset.get(sid, 0))
        self._move(sid, "start", number=request.number)
        self._submit(sid, request)

    # -- collecting ---------------------------------------------------------------------
    def finish(self, future: Future[Any]) -> None:
        """Record one finished attempt and decide: label, retry or quarantine."""
        sid, request = self.inflight.pop(future)
        try:
            result = future.result()
        except Exception as exc:
            if (
                _is_lost_worker(exc)
                and self.lost.get(sid, 0) < MAX_LOST_RESUBMITS
                and not self.stop
            ):
                # The machine running the attempt went away (pilot job cancelled, walltime):
                # not a pw.x failure. Same request again; nothing recorded, no state change.
                self.lost[sid] = self.lost.get(sid, 0) + 1
                self._event(f"structure {sid}: worker lost ({exc}); attempt resubmitted")
                self._submit(sid, request)
                return
            self._failed_future(sid, request, exc)
            return
        if self.stop and not result.ok:
            # The attempt was (probably) killed by our own graceful stop: not a diagnosis.
            self._move(sid, "requeue", note="stopped by signal")
            self._done(sid)
            return
        # A vanished pseudopotential also voids a converged result: pw.x silently falls back
        # to its own search path (seen: /usr/share/espresso/pseudo), another level of theory.
        problem = self._infrastructure_problem(result, files_only=result.ok)
        if problem is not None:
            self._stop_for(sid, problem)
            return
        history = self._history(sid)
        history.append(self._renumber(result, -self.offset.get(sid, 0)))
        nxt = None
        if not result.ok and not is_permanent(result, self.permanent):
            nxt = self.oracle.next_request(
                str(sid), self.atoms[sid], list(history), self._workdir(sid)
            )
        # the table decides: label / quarantine (permanent) / retry / quarantine (exhausted)
        new = self._move(
            sid, "attempt_done", result=result, next_request=nxt, attempts=len(history)
        )
        self._prune(sid, finished=new != SCF_RETRY)
        if new == SCF_RETRY:
            self._submit(sid, self._renumber(nxt, self.offset.get(sid, 0)))
            return
        if new == LABELLED:
            self._event(
                f"structure {sid}: labelled (attempt {result.number}, E = {result.energy:.6f} eV)",
                routine=True,
            )
        elif is_permanent(result, self.permanent):
            self._event(f"structure {sid}: quarantined: {result.failure_class}: {result.message}")
        else:
            self._event(
                f"structure {sid}: quarantined after {len(history)} attempts: "
                f"{result.failure_class}"
            )
        self._done(sid)

    def _failed_future(self, sid: int, request: Any, exc: BaseException) -> None:
        if isinstance(exc, AutopipecError):
            # pw.x cannot be run at all (e.g. OracleError): stop the run, keep the structure.
            self.stop.fatal = exc
            self._move(sid, "requeue", note=f"stopped: {exc}")
            self._done(sid)
            return
        # a bug in a worker must not take the whole run down
        self._move(
            sid,
            "quarantine",
            failure_class="worker_error",
            message=f"attempt {request.number} raised {type(exc).__name__}: {exc}",
        )
        self._event(f"structure {sid}: quarantined: worker raised {type(exc).__name__}")
        self._done(sid)

    # -- the loop -----------------------------------------------------------------------
    def run(self, pending: Iterable[int]) -> dict[str, int]:
        queue = deque(pending)
        if self.progress is not None:
            self.progress.start(self.counts)
        while (queue or self.inflight) and not self.stop:
            while queue and len(self.inflight) < self.max_inflight and not self.stop:
                self.begin(queue.popleft())
            if not self.inflight:
                continue
            done, _ = wait(list(self.inflight), timeout=POLL, return_when=FIRST_COMPLETED)
            for future in done:
                self.finish(future)
            self._tick()
        if self.stop:
            self.shutdown()
        if self.progress is not None:
            self.progress.finish(self.counts, self.attempts)
        return dict(self.counts)

    def abort(self, exc: BaseException) -> None:
        """After a bug: stop every child and requeue everything in flight (no result of a
        run in an unknown state is trusted); never raises over the original error."""
        log.info("internal error (%s): requeueing what was in flight", type(exc).__name__)
        try:
            process.terminate_all()
            for future in list(self.inflight):
                future.cancel()
            wait(list(self.inflight), timeout=process.KILL_GRACE + 30)
            self.inflight.clear()
            stale = self.store.ids_in_state(RUNNING, SCF_RETRY)
            self.store.bulk_transition(
                stale, "requeue", note=f"internal error: {type(exc).__name__}"
            )
        except Exception:  # noqa: BLE001 - the next run's resume requeues them anyway
            log.info("could not requeue after the internal error", exc_info=True)

    def shutdown(self) -> None:
        """Graceful stop: kill pw.x children, record what finished, requeue the rest."""
        if self.stop.signum is not None:
            self._event(f"signal {self.stop.signum}: stopping running attempts")
        process.terminate_all()
        for future in list(self.inflight):
            future.cancel()
        while self.inflight:
            future = next(iter(self.inflight))
            if future.cancelled():
                sid, _ = self.inflight.pop(future)
                self._move(sid, "requeue", note="stopped before it started")
                self._done(sid)
                continue
            wait([future])
            self.finish(future)
        # structures left between a retry and its submission
        for sid in self.store.ids_in_state(RUNNING, SCF_RETRY):
            self._move(sid, "requeue", note="stopped")
            self._done(sid)


def label_all(
    store: Store,
    oracle: Oracle,
    run_attempt_fn: Callable[[Any], Any],
    executor: Executor,
    run_dir: Path,
    progress: Progress | None = None,
    *,
    max_inflight: int | None = None,
    permanent: Iterable[str] | None = None,
    result_from_dict: Callable[[dict[str, Any]], Any] | None = None,
    handle_signals: bool = True,
) -> dict[str, int]:
    """Label every pending structure; returns the counts per state at the end.

    Resumes a killed run first (structures left ``running``/``scf_retry`` are requeued,
    their unrecorded attempt folders set aside). ``max_inflight`` defaults to the
    executor's worker count: one attempt per structure at a time, never more attempts in
    flight than workers. ``permanent`` defaults to ``mlip_autopipec.oracle.PERMANENT``;
    ``result_from_dict`` (to rebuild a resumed structure's history) to
    ``AttemptResult.from_dict``. With ``handle_signals`` (and on the main thread),
    SIGINT/SIGTERM stop gracefully: pw.x children are terminated, every state is written
    and :class:`~mlip_autopipec.errors.Interrupted` is raised (exit 130/143).
    """
    if max_inflight is None:
        # ThreadPoolExecutor keeps its size in _max_workers; other executors may say max_workers
        max_inflight = int(
            getattr(executor, "max_workers", 0)
            or getattr(executor, "_max_workers", 0)
            or os.cpu_count()
            or 1
        )
    runner = _Runner(
        store,
        oracle,
        run_attempt_fn,
        executor,
        Path(run_dir),
        progress,
        max(1, max_inflight),
        frozenset(permanent) if permanent is not None else PERMANENT,
        result_from_dict,
    )
    # a previous graceful stop in this process must not keep new attempts from starting
    process.reset()
    with catch_signals(then=runner.stop.record, enabled=handle_signals):
        runner.resume()
        try:
            pruned = store.pruned_ids()  # run --prune: not in the recipe, not labelled
            for sid in pruned:  # nor counted in the progress and the summary
                runner.counts[store.state_of(sid)] -= 1
            counts = runner.run([i for i in store.ids_in_state(PENDING) if i not in pruned])
        except Exception as exc:
            runner.abort(exc)
            raise
    if runner.stop.fatal is not None:
        raise runner.stop.fatal
    if runner.stop.signum is not None:
        raise Interrupted(runner.stop.signum)
    return counts


def requeue_in_flight(run_dir: Path, note: str = "internal error") -> int:
    """Move every ``running``/``scf_retry`` structure of ``run_dir`` back to ``pending``.

    For the CLI after an unexpected error (exit 3): takes the run lock and opens the store
    itself; returns how many moved, 0 when there is no usable store. Never raises.
    """
    from mlip_autopipec.lifecycle.lock import RunLock

    try:
        if not (Path(run_dir) / DB_NAME).is_file():
            return 0
        with RunLock(run_dir), Store.open(run_dir, create=False) as store:
            return store.bulk_transition(store.ids_in_state(RUNNING, SCF_RETRY), "requeue", note)
    except Exception:  # noqa: BLE001 - best effort on the way out of a bug
        log.info("could not requeue %s", run_dir, exc_info=True)
        return 0


def retry_failed(store: Store, classes: Iterable[str] = ()) -> list[int]:
    """Move quarantined structures (all, or those whose failure class is in ``classes``)
    back to ``pending`` with the trigger ``retry_failed``; returns their ids.

    Their retry ladder starts again in ``structures/NNNNNN/retry-<k>``; earlier attempts
    and their folders are kept as they are.
    """
    wanted = set(classes)
    ids = [
        int(row["id"])
        for row in store.structure_rows()
        if row["state"] == FAILED
        and (not wanted or str(row["failure"] or "").split(":", 1)[0] in wanted)
    ]
    note = "retry requested" + (f" ({', '.join(sorted(wanted))})" if wanted else "")
    store.bulk_transition(ids, "retry_failed", note=note)
    return ids
