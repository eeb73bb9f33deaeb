"""Where MD walkers start: distinct seeds per condition, every seed visited over iterations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.explore.loop import start_index

_cases = st.tuples(
    st.integers(1, 12),  # seed structures
    st.integers(0, 4),  # condition
    st.integers(1, 6),  # walkers per condition
    st.integers(0, 2**31 - 1),  # recipe seed
)


@given(_cases, st.integers(1, 20))
def test_walkers_of_a_condition_start_from_distinct_seeds(case, iteration):
    n_seeds, condition, walkers, seed = case
    picks = [start_index(n_seeds, condition, w, iteration, walkers, seed) for w in range(walkers)]
    assert all(0 <= p < n_seeds for p in picks)
    assert len(set(picks)) == min(walkers, n_seeds)


@given(_cases, st.integers(1, 20))
def test_every_seed_is_a_start_of_every_condition_within_a_cycle(case, first):
    n_seeds, condition, walkers, seed = case
    cycle = -(-n_seeds // walkers)  # ceil
    seen = {
        start_index(n_seeds, condition, w, it, walkers, seed)
        for it in range(first, first + cycle)
        for w in range(walkers)
    }
    assert seen == set(range(n_seeds))


def test_the_pick_is_deterministic_and_moves_between_iterations():
    one = [start_index(6, 2, w, 1, 2, 0) for w in range(2)]
    assert one == [start_index(6, 2, w, 1, 2, 0) for w in range(2)]  # resume: same walkers
    assert one != [start_index(6, 2, w, 2, 2, 0) for w in range(2)]
