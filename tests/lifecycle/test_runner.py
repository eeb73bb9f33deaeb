"""The runner with a scripted oracle: outcomes, resume after simulated kills, signals."""

from __future__ import annotations

import io
import os
import shutil
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mlip_autopipec import process
from mlip_autopipec.errors import Interrupted, OracleError
from mlip_autopipec.execution import default_workers, make_executor, ranks_per_task
from mlip_autopipec.lifecycle.progress import Progress
from mlip_autopipec.lifecycle.runner import label_all, structure_workdir
from mlip_autopipec.lifecycle.store import Store

from .scripted import (
    PERMANENT,
    InlineExecutor,
    Killed,
    ScriptedOracle,
    ScriptedResult,
    expected_energy,
    run_scripted,
    scripted_atoms,
)

SCRIPTS = {
    "easy": ["converged"],
    "retry_once": ["scf_not_converged", "converged"],
    "retry_twice": ["crashed", "walltime", "converged"],
    "permanent": ["overlapping_atoms"],
    "retry_then_permanent": ["scf_not_converged", "xc_conflict"],
    "hopeless": ["scf_not_converged"],  # every attempt fails: ladder exhausted at 4
}


def _run(run_dir: Path, executor, oracle=None, **kw):
    store = Store.open(run_dir)
    try:
        return label_all(
            store,
            oracle or ScriptedOracle(),
            run_scripted,
            executor,
            run_dir,
            permanent=PERMANENT,
            result_from_dict=ScriptedResult.from_dict,
            **kw,
        )
    finally:
        store.close()


def _populate(run_dir: Path, scripts: list[list[str]], preflight: dict[int, str] | None = None):
    preflight = preflight or {}
    with Store.open(run_dir) as store:
        return store.add_structures(
            [(scripted_atoms(i, s, preflight.get(i)), f"s{i}") for i, s in enumerate(scripts)]
        )


def _snapshot(run_dir: Path):
    with Store.open(run_dir) as store:
        rows = {r["id"]: (r["state"], r["attempts"], r["failure"]) for r in store.structure_rows()}
        energies = store.label_energies()
        classes = {sid: [a["failure_class"] for a in store.attempts_of(sid)] for sid in rows}
    return rows, energies, classes


def test_outcomes(tmp_path):
    names = list(SCRIPTS)
    ids = _populate(tmp_path, [SCRIPTS[n] for n in names], preflight={len(names) - 1: ""})
    ids += _populate(tmp_path, [[]] * 0)
    with Store.open(tmp_path) as store:
        pf = store.add_structure(scripted_atoms(99, ["converged"], "overlapping_atoms"), "pf")
    counts = _run(tmp_path, InlineExecutor())
    assert counts == {
        "pending": 0,
        "running": 0,
        "scf_retry": 0,
        "labelled": 3,
        "failed": 4,
        "trained": 0,
    }
    rows, energies, classes = _snapshot(tmp_path)
    by = dict(zip(names, ids, strict=True))
    assert classes[by["easy"]] == ["converged"]
    assert classes[by["retry_twice"]] == ["crashed", "walltime", "converged"]
    assert classes[by["permanent"]] == ["overlapping_atoms"]  # never retried
    assert classes[by["retry_then_permanent"]] == ["scf_not_converged", "xc_conflict"]
    assert classes[by["hopeless"]] == ["scf_not_converged"] * 4
    assert rows[by["hopeless"]][2].startswith("scf_not_converged: retries exhausted after 4")
    # preflight: quarantined without running anything
    assert rows[pf] == ("failed", 0, "overlapping_atoms: found before running")
    assert not structure_workdir(tmp_path, pf).exists()
    with Store.open(tmp_path) as store:
        for sid in (by["easy"], by["retry_once"], by["retry_twice"]):
            assert energies[sid] == expected_energy(store.atoms_of(sid))
    # a second run has nothing to do and changes nothing
    oracle = ScriptedOracle()
    _run(tmp_path, InlineExecutor(), oracle)
    assert oracle.requests == []
    assert _snapshot(tmp_path) == (rows, energies, classes)


def _reference(tmp_path: Path, scripts: list[list[str]]):
    ref = tmp_path / "reference"
    _populate(ref, scripts)
    _run(ref, InlineExecutor())
    return _snapshot(ref)


def _kill_and_resume(run_dir: Path, scripts: list[list[str]], kills: list[int]) -> int:
    """Run with 'SIGKILL' at the given submission counts, then to completion."""
    _populate(run_dir, scripts)
    for k in kills:
        with pytest.raises(Killed):
            _run(run_dir, InlineExecutor(kill_at=k))
    oracle = ScriptedOracle()
    _run(run_dir, InlineExecutor(), oracle)
    return len(oracle.requests)


def test_every_kill_point_resumes_to_the_same_labels(tmp_path):
    scripts = [SCRIPTS[n] for n in SCRIPTS] * 2
    ref = _reference(tmp_path, scripts)
    total_submissions = sum(len(c) for c in ref[2].values())
    for k in range(1, total_submissions + 1):
        run_dir = tmp_path / f"k{k}"
        _kill_and_resume(run_dir, scripts, [k])
        assert _snapshot(run_dir) == ref, f"kill at submission {k}"
        # the killed attempt's folder (and any finished but unrecorded one) was set aside
        aside = list(run_dir.glob("structures/*/attempt-*.interrupted-1"))
        texts = sorted(p.joinpath("espresso.pwo").read_text() for p in aside)
        assert "partial" in texts and len(aside) <= 2


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scripts=st.lists(st.sampled_from(list(SCRIPTS.values())), min_size=1, max_size=8),
    kills=st.lists(st.integers(1, 6), max_size=4),
)
def test_random_kills_never_lose_or_redo_labels(tmp_path_factory, scripts, kills):
    base = tmp_path_factory.mktemp("prop")
    ref = _reference(base, scripts)
    run_dir = base / "killed"
    _populate(run_dir, scripts)
    labelled_before: dict[int, float] = {}
    for k in kills:
        try:
            _run(run_dir, InlineExecutor(kill_at=k))
        except Killed:
            pass  # a run that finished before the kill point is fine too
        _, energies, _ = _snapshot(run_dir)
        # nothing labelled is ever lost or changed
        for sid, e in labelled_before.items():
            assert energies[sid] == e
        labelled_before = energies
    oracle = ScriptedOracle()
    _run(run_dir, InlineExecutor(), oracle)
    assert {int(r.structure_id) for r in oracle.requests}.isdisjoint(labelled_before)
    assert _snapshot(run_dir) == ref


def test_thread_pool_gives_the_same_labels(tmp_path):
    scripts = [SCRIPTS[n] for n in SCRIPTS] * 3
    ref = _reference(tmp_path, scripts)
    run_dir = tmp_path / "pool"
    _populate(run_dir, scripts)
    with make_executor({"engine": "local"}, 2) as ex:
        _run(run_dir, ex)
    assert _snapshot(run_dir) == ref


def test_worker_errors(tmp_path):
    _populate(tmp_path, [["converged"], ["converged"]])

    def broken(request):
        if request.structure_id == "1":
            raise ValueError("bug in a worker")
        return run_scripted(request)

    with Store.open(tmp_path) as store:
        counts = label_all(
            store,
            ScriptedOracle(),
            broken,
            InlineExecutor(),
            tmp_path,
            permanent=PERMANENT,
            result_from_dict=ScriptedResult.from_dict,
        )
    assert counts["failed"] == 1 and counts["labelled"] == 1
    rows, _, _ = _snapshot(tmp_path)
    assert rows[1][2] == "worker_error: attempt 1 raised ValueError: bug in a worker"

    run_dir = tmp_path / "fatal"
    _populate(run_dir, [["converged"]])

    def no_pwx(request):
        raise OracleError("pw.x: command not found")

    try:
        with Store.open(run_dir) as store, pytest.raises(OracleError):
            label_all(
                store,
                ScriptedOracle(),
                no_pwx,
                InlineExecutor(),
                run_dir,
                permanent=PERMANENT,
                result_from_dict=ScriptedResult.from_dict,
            )
        assert process.stopping()  # a fatal error stops every other attempt too
    finally:
        process.reset()
    assert _snapshot(run_dir)[0] == {1: ("pending", 0, None)}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_gracefully(tmp_path, signum, code):
    """Real child processes (sleep) are terminated; states are written; Interrupted."""
    _populate(tmp_path, [["converged"]] * 5)

    def slow(request):
        res = process.run_process(["sleep", "30"], request.attempt_dir)
        if res.stopped:
            return ScriptedResult(request.number, str(request.attempt_dir), "crashed", "killed")
        return run_scripted(request)

    timer = threading.Timer(1.0, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        with ThreadPoolExecutor(2) as ex, Store.open(tmp_path) as store:
            with pytest.raises(Interrupted) as err:
                label_all(
                    store,
                    ScriptedOracle(),
                    slow,
                    ex,
                    tmp_path,
                    permanent=PERMANENT,
                    result_from_dict=ScriptedResult.from_dict,
                )
    finally:
        timer.cancel()
        process.reset()
    assert err.value.signum == signum and err.value.exit_code == code
    rows, energies, classes = _snapshot(tmp_path)
    assert {r[0] for r in rows.values()} == {"pending"}
    assert energies == {} and all(c == [] for c in classes.values())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    # and the rerun completes, setting the stopped attempts aside
    _run(tmp_path, InlineExecutor())
    assert _snapshot(tmp_path)[0] == {i: ("labelled", 1, None) for i in range(1, 6)}
    assert len(list(tmp_path.glob("structures/*/attempt-01.interrupted-1"))) == 2


def test_progress_plain_and_tty(tmp_path):
    _populate(tmp_path, [SCRIPTS["easy"], SCRIPTS["permanent"], SCRIPTS["retry_once"]])
    out = io.StringIO()
    _run(tmp_path, InlineExecutor(), progress=Progress(out, tty=False))
    text = out.getvalue()
    assert "labelling: 3 structures, 3 to do" in text
    assert "structure 2: quarantined: overlapping_atoms" in text
    assert "structure 3: labelled (attempt 2, E = " in text
    assert (
        text.rstrip()
        .splitlines()[-1]
        .startswith(
            "pending 0 | running 0 | scf_retry 0 | "
            "labelled 2 | failed 1 | trained 0 | "
            "attempts 4 | ETA"
        )
    )
    tty = io.StringIO()
    run2 = tmp_path / "tty"
    _populate(run2, [SCRIPTS["easy"]])
    _run(run2, InlineExecutor(), progress=Progress(tty, tty=True))
    assert "\r\x1b[K" in tty.getvalue() and "labelled 1" in tty.getvalue()
    assert "structure 1: labelled" not in tty.getvalue()  # the live counts show it


@pytest.mark.parametrize(
    ("command", "ranks"),
    [
        ("pw.x", 1),
        ("mpirun -np 4 pw.x -nk 2", 4),
        (["mpiexec", "-n", "2", "pw.x"], 2),
        ("srun --ntasks=8 pw.x", 8),
        ("/usr/bin/mpirun --np 3 pw.x", 3),
        ("mpirun pw.x", 1),
    ],
)
def test_ranks_per_task(command, ranks):
    assert ranks_per_task(command) == ranks


def test_default_workers():
    assert default_workers("pw.x", cpus=8) == 8
    assert default_workers("mpirun -np 4 pw.x", cpus=8) == 2
    assert default_workers("mpirun -np 16 pw.x", cpus=8) == 1


def _expected_classes(script: list[str], max_attempts: int = 4) -> list[str]:
    """The attempt classes a script leads to: stop at converged, permanent, or the cap."""
    out: list[str] = []
    for n in range(max_attempts):
        outcome = script[n] if n < len(script) else script[-1]
        out.append(outcome)
        if outcome == "converged" or outcome in PERMANENT:
            break
    return out


class RunnerStateMachine(RuleBasedStateMachine):
    """Structures appended, runs killed at random submissions, resumed, trained."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="runner-"))
        self.scripts: dict[int, list[str]] = {}
        self.ever_labelled: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.energies: dict[int, float] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(i=st.integers(0, 40), script=st.sampled_from(sorted(SCRIPTS)))
    def add(self, i: int, script: str) -> None:
        with Store.open(self.tmp) as store:
            sid = store.add_structure(scripted_atoms(i, SCRIPTS[script]), f"s{i}")
        self.scripts.setdefault(sid, SCRIPTS[script])

    @rule(kill_at=st.one_of(st.none(), st.integers(1, 8)))
    def run(self, kill_at: int | None) -> None:
        try:
            _run(self.tmp, InlineExecutor(kill_at=kill_at))
        except Killed:
            return
        rows, _, classes = _snapshot(self.tmp)
        # a run that was not killed leaves every structure labelled/failed (or trained)
        for sid, (state, _, _) in rows.items():
            assert state in ("labelled", "failed", "trained")
            assert classes[sid] == _expected_classes(self.scripts[sid])

    @rule()
    def train(self) -> None:
        with Store.open(self.tmp) as store:
            ids = store.ids_in_state("labelled", "trained")
            if ids:
                pid = store.record_potential(
                    path="p.yace",
                    metrics={},
                    baseline={},
                    pacemaker_version="x",
                    train_ids=ids,
                    test_ids=[],
                )
                store.mark_trained(ids, pid)

    @invariant()
    def bookkeeping_holds(self) -> None:
        rows, energies, classes = _snapshot(self.tmp) if self.scripts else ({}, {}, {})
        assert len(rows) == len(self.scripts)
        with Store.open(self.tmp) as store:
            counts = store.counts()
        assert sum(counts.values()) == len(rows)
        for sid, (state, n_attempts, _) in rows.items():
            # attempts monotone; the recorded ones are a prefix of the scripted sequence
            assert n_attempts >= self.attempts.get(sid, 0)
            self.attempts[sid] = n_attempts
            assert classes[sid] == _expected_classes(self.scripts[sid])[:n_attempts]
            # labelled: has a label, never goes back, label never recomputed
            if state in ("labelled", "trained"):
                self.ever_labelled.add(sid)
            if sid in self.ever_labelled:
                assert state in ("labelled", "trained")
                assert energies[sid] == self.energies.setdefault(sid, energies[sid])
            # a permanent failure is the last attempt and the structure is failed
            if any(c in PERMANENT for c in classes[sid]):
                assert classes[sid][-1] in PERMANENT and state == "failed"


RunnerStateMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_runner_state_machine = RunnerStateMachine.TestCase


def test_make_executor_engines():
    from mlip_autopipec.errors import UsageError

    with make_executor({"engine": "local"}, 3) as ex:
        assert ex.submit(sum, [1, 2]).result() == 3
        assert ex._max_workers == 3  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="unknown engine 'dask'"):
        make_executor({"engine": "dask"}, 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_executor({"engine": "local"}, 0)


def test_a_bug_in_the_loop_requeues_what_was_in_flight(tmp_path):
    _populate(tmp_path, [["converged"]] * 3)

    class Buggy(ScriptedOracle):
        def next_request(self, structure_id, atoms, history, workdir):
            if len(self.requests) == 1:
                raise RuntimeError("injected bug")
            return super().next_request(structure_id, atoms, history, workdir)

    def slow(request):
        process.run_process(["sleep", "0.3"], request.attempt_dir)
        return run_scripted(request)

    with ThreadPoolExecutor(2) as ex, pytest.raises(RuntimeError, match="injected bug"):
        _run(tmp_path, ex, Buggy())
    rows, energies, _ = _snapshot(tmp_path)
    assert {r[0] for r in rows.values()} == {"pending"} and energies == {}
    with Store.open(tmp_path) as store:
        assert store.transitions_of(1) == [
            ("start", "pending", "running"),
            ("requeue", "running", "pending"),
        ]
    process.reset()
    _run(tmp_path, InlineExecutor())
    assert _snapshot(tmp_path)[0] == {i: ("labelled", 1, None) for i in range(1, 4)}


def test_retry_failed_restarts_the_ladder_and_keeps_the_old_attempts(tmp_path):
    from mlip_autopipec.lifecycle.runner import retry_failed

    _populate(tmp_path, [["converged"], ["converged"], ["overlapping_atoms"]])
    broken = {"on": True}

    def flaky(request):  # the machine, not the structure, was at fault during the first run
        result = run_scripted(request)
        if broken["on"] and request.structure_id != "3":
            return ScriptedResult(request.number, result.attempt_dir, "crashed", "node died")
        return result

    def run(executor):
        with Store.open(tmp_path) as store:
            return label_all(
                store,
                ScriptedOracle(),
                flaky,
                executor,
                tmp_path,
                permanent=PERMANENT,
                result_from_dict=ScriptedResult.from_dict,
            )

    assert run(InlineExecutor())["failed"] == 3
    broken["on"] = False
    with Store.open(tmp_path) as store:
        assert retry_failed(store, ["walltime"]) == []
        assert retry_failed(store, ["crashed"]) == [1, 2]  # not the permanent one
    with pytest.raises(Killed):  # killed during the new ladder, then resumed
        run(InlineExecutor(kill_at=2))
    counts = run(InlineExecutor())
    assert counts["labelled"] == 2 and counts["failed"] == 1
    with Store.open(tmp_path) as store:
        for sid in (1, 2):
            attempts = store.attempts_of(sid)
            assert [a["number"] for a in attempts] == [1, 2, 3, 4, 5]
            assert [a["failure_class"] for a in attempts] == ["crashed"] * 4 + ["converged"]
            assert Path(attempts[-1]["attempt_dir"]).parent.name == "retry-1"
            assert ("retry_failed", "failed", "pending") in store.transitions_of(sid)
    first = structure_workdir(tmp_path, 1)
    assert sorted(p.name for p in first.glob("attempt-*")) == [
        f"attempt-0{i}" for i in (1, 2, 3, 4)
    ]
    assert (first / "retry-1" / "attempt-01").is_dir()
    assert list(tmp_path.glob("structures/*/retry-1/attempt-01.interrupted-1"))


def test_unfinished_fit_folders_are_set_aside(tmp_path):
    from mlip_autopipec.lifecycle.runner import set_aside_unfinished_fits
    from mlip_autopipec.trainer.fit import next_fit_dir

    assert set_aside_unfinished_fits(tmp_path) == []
    done = tmp_path / "trainer" / "fit-001"
    done.mkdir(parents=True)
    (done / "potential.json").write_text("{}")
    killed = tmp_path / "trainer" / "fit-002"
    killed.mkdir()
    (killed / "log.txt").write_text("half a fit")
    assert next_fit_dir(tmp_path).name == "fit-003"
    assert set_aside_unfinished_fits(tmp_path) == [tmp_path / "trainer" / "fit-002.interrupted-1"]
    assert (tmp_path / "trainer" / "fit-002.interrupted-1" / "log.txt").read_text() == "half a fit"
    assert done.is_dir() and next_fit_dir(tmp_path) == killed  # the number is reused
