"""The lifecycle table and a hypothesis state machine over it (with the real store)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mlip_autopipec.lifecycle.machine import (
    STATES,
    TRANSITIONS,
    IllegalTransitionError,
    Lifecycle,
    allowed_sources,
    check_bulk_move,
)
from mlip_autopipec.lifecycle.store import Store

from .scripted import PERMANENT, ScriptedResult, scripted_atoms

#: Written out by hand, independently of machine.TRANSITIONS, so a wrong table is caught.
LEGAL = {
    ("pending", "start"): "running",
    ("running", "retry"): "scf_retry",
    ("scf_retry", "retry"): "scf_retry",
    ("running", "label"): "labelled",
    ("scf_retry", "label"): "labelled",
    ("pending", "quarantine"): "failed",
    ("running", "quarantine"): "failed",
    ("scf_retry", "quarantine"): "failed",
    ("running", "requeue"): "pending",
    ("scf_retry", "requeue"): "pending",
    ("labelled", "train"): "trained",
    ("trained", "train"): "trained",
    ("failed", "retry_failed"): "pending",  # run --retry-failed (issue 10, class 9)
}
TRIGGERS = sorted({row["trigger"] for row in TRANSITIONS})
OUTCOMES = ["converged", "scf_not_converged", "crashed", "walltime", "overlapping_atoms"]


def test_table_is_data_and_matches_the_agreed_moves():
    assert STATES == ["pending", "running", "scf_retry", "labelled", "failed", "trained"]
    table = {}
    for row in TRANSITIONS:
        assert set(row) <= {"trigger", "source", "dest", "conditions", "before", "after"}
        sources = [row["source"]] if isinstance(row["source"], str) else row["source"]
        for s in sources:
            table[(s, row["trigger"])] = row["dest"]
    assert table == LEGAL
    # failed is terminal but for a retry the user asks for; nothing leaves labelled/trained
    # except training
    assert [k for k in table if k[0] == "failed"] == [("failed", "retry_failed")]
    assert {d for (s, _), d in table.items() if s in ("labelled", "trained")} == {"trained"}


def test_bulk_check_uses_the_table():
    assert allowed_sources("requeue") == {"running", "scf_retry"}
    check_bulk_move("train", ["labelled", "trained"])
    with pytest.raises(IllegalTransitionError, match="cannot train structures in state"):
        check_bulk_move("train", ["labelled", "pending"])
    with pytest.raises(IllegalTransitionError, match="unknown trigger"):
        allowed_sources("explode")


def test_illegal_move_raises_and_changes_nothing(tmp_path):
    store = Store.open(tmp_path)
    life = Lifecycle(store, PERMANENT)
    sid = store.add_structure(scripted_atoms(0, ["converged"]), "test")
    with pytest.raises(IllegalTransitionError, match="cannot label from state 'pending'"):
        life.fire(sid, "label", result=ScriptedResult(1, "", "converged", energy=-1.0))
    assert store.state_of(sid) == "pending"
    assert store.transitions_of(sid) == []
    life.fire(sid, "start", number=1)
    # a condition that fails is refused loudly, not silently ignored
    with pytest.raises(IllegalTransitionError, match="condition"):
        life.fire(sid, "retry", result=ScriptedResult(1, "", "overlapping_atoms"))
    with pytest.raises(IllegalTransitionError, match="condition"):
        life.fire(sid, "label", result=ScriptedResult(1, "", "crashed"))
    assert store.state_of(sid) == "running"
    assert store.transitions_of(sid) == [("start", "pending", "running")]
    store.close()


def test_store_and_model_never_disagree(tmp_path):
    """If the stored state changed behind the model's back, the move is refused."""
    store = Store.open(tmp_path)
    life = Lifecycle(store, PERMANENT)
    sid = store.add_structure(scripted_atoms(0, ["converged"]), "test")
    life.fire(sid, "start", number=1)
    store.bulk_transition([sid], "requeue")
    with pytest.raises(IllegalTransitionError, match="stored state is not 'running'"):
        life.fire(sid, "quarantine", failure_class="x", message="y")
    assert store.state_of(sid) == "pending"
    store.close()


class LifecycleStateMachine(RuleBasedStateMachine):
    """Random legal and illegal moves; the invariants must hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        self.store = Store.open(self.tmp)
        self.life = Lifecycle(self.store, PERMANENT)
        self.expected: dict[int, str] = {}
        self.attempts: dict[int, int] = {}
        self.ever_labelled: set[int] = set()
        self.permanent_hit: set[int] = set()
        #: attempts recorded before the structure's last retry_failed (its ladder restarted)
        self.ladder_start: dict[int, int] = {}
        self.potentials = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _pick(self, data: st.DataObject, *states: str) -> int | None:
        ids = sorted(s for s, state in self.expected.items() if state in states)
        return data.draw(st.sampled_from(ids)) if ids else None

    def _result(self, sid: int, outcome: str) -> ScriptedResult:
        n = self.store.attempts_of(sid)
        number = len(n) + 1
        if outcome == "converged":
            return ScriptedResult(number, "", outcome, energy=-7.0, forces=[[0, 0, 0]] * 2)
        return ScriptedResult(number, "", outcome, message="scripted")

    @rule(i=st.integers(0, 30))
    def add(self, i: int) -> None:
        sid = self.store.add_structure(scripted_atoms(i, ["converged"]), f"s{i}")
        self.expected.setdefault(sid, "pending")
        self.attempts.setdefault(sid, 0)

    @precondition(lambda self: any(s == "pending" for s in self.expected.values()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        sid = self._pick(data, "pending")
        assert sid is not None
        self.expected[sid] = self.life.fire(sid, "start", number=1)

    @precondition(lambda self: any(s in ("running", "scf_retry") for s in self.expected.values()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES), give_up=st.booleans())
    def attempt_finished(self, data: st.DataObject, outcome: str, give_up: bool) -> None:
        """What the runner does with a result: label, quarantine, or retry."""
        sid = self._pick(data, "running", "scf_retry")
        assert sid is not None
        result = self._result(sid, outcome)
        if result.ok:
            self.expected[sid] = self.life.fire(sid, "label", result=result)
            self.ever_labelled.add(sid)
        elif outcome in PERMANENT or give_up:
            self.expected[sid] = self.life.fire(sid, "quarantine", result=result)
        else:
            self.expected[sid] = self.life.fire(sid, "retry", result=result)
        if outcome in PERMANENT:
            self.permanent_hit.add(sid)

    @precondition(lambda self: any(s in ("running", "scf_retry") for s in self.expected.values()))
    @rule(data=st.data())
    def killed_and_resumed(self, data: st.DataObject) -> None:
        sid = self._pick(data, "running", "scf_retry")
        assert sid is not None
        self.life.release(sid)
        assert self.store.bulk_transition([sid], "requeue") == 1
        self.expected[sid] = "pending"

    @precondition(lambda self: any(s == "labelled" for s in self.expected.values()))
    @rule(data=st.data())
    def train(self, data: st.DataObject) -> None:
        ids = sorted(s for s, state in self.expected.items() if state in ("labelled", "trained"))
        chosen = data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
        for sid in chosen:
            self.life.release(sid)
        pid = self.store.record_potential(
            path="p.yace",
            metrics={},
            baseline={},
            pacemaker_version="x",
            train_ids=chosen,
            test_ids=[],
        )
        self.store.mark_trained(chosen, pid)
        for sid in chosen:
            self.expected[sid] = "trained"

    @precondition(lambda self: bool(self.expected))
    @rule(data=st.data(), trigger=st.sampled_from(TRIGGERS), outcome=st.sampled_from(OUTCOMES))
    def any_move(self, data: st.DataObject, trigger: str, outcome: str) -> None:
        """Any trigger on any structure: legal ones move, illegal ones raise and change nothing."""
        sid = self._pick(data, *STATES)
        assert sid is not None
        state = self.expected[sid]
        result = self._result(sid, outcome)
        legal = (state, trigger) in LEGAL
        if trigger == "label":
            legal = legal and result.ok
        if trigger == "retry":
            legal = legal and not result.ok and outcome not in PERMANENT
        before = len(self.store.transitions_of(sid))
        if trigger in ("train", "requeue"):
            self.life.release(sid)
        if legal:
            new = self.life.fire(sid, trigger, result=result, number=1)
            assert new == LEGAL[(state, trigger)]
            self.expected[sid] = new
            if new == "labelled":
                self.ever_labelled.add(sid)
            if trigger in ("retry", "quarantine") and outcome in PERMANENT:
                self.permanent_hit.add(sid)
            if trigger == "retry_failed":  # the user asked for it: the ladder starts again
                self.permanent_hit.discard(sid)
                self.ladder_start[sid] = len(self.store.attempts_of(sid))
        else:
            with pytest.raises(IllegalTransitionError):
                self.life.fire(sid, trigger, result=result, number=1)
            assert self.store.state_of(sid) == state
            assert len(self.store.transitions_of(sid)) == before

    @invariant()
    def one_state_each_and_counts_add_up(self) -> None:
        counts = self.store.counts()
        assert sum(counts.values()) == len(self.expected)
        assert {k: v for k, v in counts.items() if v} == dict(Counter(self.expected.values()))
        rows = self.store.structure_rows()
        assert len({r["id"] for r in rows}) == len(rows) == len(self.expected)
        for r in rows:
            assert r["state"] == self.expected[r["id"]]
            if self.life._models.get(r["id"]) is not None:
                assert self.life._models[r["id"]].state == r["state"]

    @invariant()
    def attempts_monotone(self) -> None:
        for r in self.store.structure_rows():
            assert r["attempts"] >= self.attempts.get(r["id"], 0)
            assert r["attempts"] == len(self.store.attempts_of(r["id"]))
            self.attempts[r["id"]] = r["attempts"]

    @invariant()
    def labelled_has_label_and_never_goes_back(self) -> None:
        energies = self.store.label_energies()
        for sid, state in self.expected.items():
            if state in ("labelled", "trained"):
                assert sid in energies
            if sid in self.ever_labelled:
                assert state in ("labelled", "trained")
            else:
                assert sid not in energies

    @invariant()
    def permanent_failures_never_retried(self) -> None:
        for sid in self.permanent_hit:
            history = self.store.attempts_of(sid)[self.ladder_start.get(sid, 0) :]
            classes = [h["failure_class"] for h in history]
            first = next(i for i, c in enumerate(classes) if c in PERMANENT)
            assert first == len(classes) - 1, classes
            assert self.expected[sid] == "failed"


LifecycleStateMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lifecycle_state_machine = LifecycleStateMachine.TestCase
