"""Selection bookkeeping: every candidate gets exactly one decision with the right reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.explore.select import (
    NEAR_DUPLICATE,
    NOT_SELECTED_BY_MAXVOL,
    OVER_BUDGET,
    REJECTED,
    SELECTED,
    Fingerprint,
    decide,
    random_order,
)

fingerprints = st.lists(
    st.builds(
        Fingerprint,
        formula=st.sampled_from(["Si8", "Si2"]),
        digest=st.sampled_from([f"h{i}" for i in range(12)]),
        energy_per_atom=st.floats(-5.5, -5.4),
        max_force=st.floats(0.0, 3.0),
    ),
    max_size=25,
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Fingerprint], list[int], int, list[Fingerprint]]:
    fps = draw(fingerprints)
    order = draw(st.permutations(range(len(fps))))
    keep = draw(st.integers(0, len(fps)))
    known = draw(st.lists(st.sampled_from(fps), max_size=3)) if fps else []
    return fps, list(order[:keep]), draw(st.integers(0, 8)), known


@given(cases())
def test_every_candidate_gets_one_decision(case) -> None:  # type: ignore[no-untyped-def]
    fps, order, budget, known = case
    decisions = decide(fps, order, budget, known)
    assert [d.index for d in decisions] == list(range(len(fps)))
    # only proposed candidates are selected, never more than the budget, in the proposed order
    selected = [i for i in order if decisions[i].state == SELECTED]
    assert {d.index for d in decisions if d.state == SELECTED} == set(selected)
    assert len(selected) <= budget
    for d in decisions:
        assert (d.state == SELECTED) == (d.reason is None)
        assert d.state in (SELECTED, REJECTED)
        if d.index not in order:
            assert d.reason == NOT_SELECTED_BY_MAXVOL
    # no two selected frames are near-duplicates, and none duplicates a known structure
    for a in selected:
        assert not any(fps[a].near(k) for k in known)
        for b in selected:
            if a < b:
                assert not fps[a].near(fps[b])
    # over budget only once the budget is used up, and only for distinct frames
    n_selected = len(selected)
    for d in decisions:
        if d.reason == OVER_BUDGET:
            assert n_selected == budget
        if d.reason == NEAR_DUPLICATE:
            chosen_before = [fps[i] for i in order[: order.index(d.index)] if i in selected]
            assert any(fps[d.index].near(c) for c in chosen_before + known)


def test_worked_example() -> None:
    a = Fingerprint("Si8", "a", -5.420, 0.50)
    a_twin = Fingerprint("Si8", "b", -5.4201, 0.505)  # same energy/atom and max force
    c = Fingerprint("Si8", "c", -5.40, 1.20)
    d = Fingerprint("Si8", "d", -5.38, 2.00)
    e = Fingerprint("Si8", "e", -5.30, 2.50)
    out = decide([a, a_twin, c, d, e], order=[0, 1, 2, 3], max_selected=2)
    assert [(x.state, x.reason) for x in out] == [
        (SELECTED, None),
        (REJECTED, NEAR_DUPLICATE),
        (SELECTED, None),
        (REJECTED, OVER_BUDGET),
        (REJECTED, NOT_SELECTED_BY_MAXVOL),
    ]


def test_duplicate_of_a_stored_structure_is_rejected() -> None:
    a = Fingerprint("Si8", "a", -5.42, 0.5)
    stored = Fingerprint("", "a", float("nan"), float("nan"))
    assert decide([a], [0], 5, [stored])[0].reason == NEAR_DUPLICATE


def test_order_must_be_distinct_indices() -> None:
    import pytest

    a = Fingerprint("Si8", "a", -5.42, 0.5)
    with pytest.raises(ValueError):
        decide([a], [0, 0], 1)
    with pytest.raises(ValueError):
        decide([a], [1], 1)


@given(st.integers(0, 40), st.integers(0, 1000))
def test_random_order_is_a_seeded_permutation(n: int, seed: int) -> None:
    order = random_order(n, seed)
    assert sorted(order) == list(range(n))
    assert order == random_order(n, seed)


def test_frames_a_few_steps_apart_on_one_walker_are_near_duplicates() -> None:
    # the frame that halted a walker (step 182) and the last recorded one (step 180): the
    # previous loop labelled both; a frame of another walker at the same step is distinct
    def fp(walker: str, step: int, energy: float) -> Fingerprint:
        return Fingerprint("Si8", f"{walker}{step}", energy, 1.0 + energy, walker, step, 10)

    fps = [fp("c1w0", 180, -5.40), fp("c1w0", 182, -5.30), fp("c1w1", 182, -5.20)]
    fps.append(fp("c1w0", 192, -5.10))  # 10 steps on: distinct
    decisions = decide(fps, [1, 0, 2, 3], max_selected=5)
    assert [d.state for d in decisions] == [REJECTED, SELECTED, SELECTED, SELECTED]
    assert decisions[0].reason == NEAR_DUPLICATE
    assert not fps[0].near(Fingerprint("Si8", "stored", -5.40, 1.0))  # a stored structure
