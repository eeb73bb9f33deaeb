"""The table decides what a finished attempt leads to (ordered conditional rows on
``attempt_done``); one machine-wide hook writes every move."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from mlip_autopipec.lifecycle.machine import DECISIONS, TRANSITIONS, Lifecycle, is_permanent
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import PERMANENT

from .scripted import ScriptedResult, scripted_atoms

CLASSES = ["converged", "scf_not_converged", "crashed", *sorted(PERMANENT)]


def test_rows_are_data_and_the_hook_is_machine_wide():
    assert [row["dest"] for row in DECISIONS] == ["labelled", "failed", "scf_retry", "failed"]
    assert {row["trigger"] for row in DECISIONS} == {"attempt_done"}
    assert all("before" not in row and "after" not in row for row in (*TRANSITIONS, *DECISIONS))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    outcomes=st.lists(st.tuples(st.sampled_from(CLASSES), st.booleans()), min_size=1, max_size=6)
)
def test_first_row_whose_conditions_hold_is_taken(tmp_path_factory, outcomes):
    run_dir = tmp_path_factory.mktemp("decide")
    with Store.open(run_dir) as store:
        life = Lifecycle(store, PERMANENT)
        sid = store.add_structure(scripted_atoms(0, ["converged"]), "s")
        life.fire(sid, "start", number=1)
        for number, (cls, has_next) in enumerate(outcomes, start=1):
            result = ScriptedResult(
                number, "", cls, message="m", energy=-1.0, forces=[[0.0] * 3] * 2
            )
            expected = (
                "labelled"
                if cls == "converged"
                else "failed"
                if is_permanent(result) or not has_next
                else "scf_retry"
            )
            new = life.fire(
                sid,
                "attempt_done",
                result=result,
                next_request=object() if has_next else None,
                attempts=number,
            )
            assert new == expected == store.state_of(sid)
            if new != "scf_retry":
                break
        rows = {r["id"]: r for r in store.structure_rows()}
        assert rows[sid]["attempts"] == len(store.attempts_of(sid)) == number
        if new == "failed":
            failure = rows[sid]["failure"]
            if cls in PERMANENT:
                assert failure == f"{cls}: m"
            else:
                assert failure == f"{cls}: retries exhausted after {number} attempt(s); last: m"
        assert [t[0] for t in store.transitions_of(sid)] == ["start"] + ["attempt_done"] * number
