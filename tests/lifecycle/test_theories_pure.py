"""Property tests of the pure rule behind the training-set view (lifecycle/theories.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlip_autopipec.lifecycle.theories import fill_unrecorded

keys_maps = st.dictionaries(
    st.integers(1, 50), st.one_of(st.none(), st.sampled_from(["k1 A", "k2 B", "k3 C"]))
)


@given(keys_maps)
def test_fill_unrecorded_gives_the_unrecorded_labels_the_base_theory(keys) -> None:
    filled = fill_unrecorded(keys)
    assert list(filled) == list(keys)  # same structures, same order
    known = [k for k in keys.values() if k]
    for sid, key in keys.items():
        if key is not None:
            assert filled[sid] == key  # a recorded key is never changed
        elif known:
            # the most common recorded key (the first seen of a tie), as the trainer does
            best = max(set(known), key=lambda k: (known.count(k), -known.index(k)))
            assert filled[sid] == best
        else:
            assert filled[sid] is None  # nothing recorded: nothing to fill with
