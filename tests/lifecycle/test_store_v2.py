"""Store schema v2: provenance per structure and label, the current potential, the loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.lifecycle.machine import IllegalTransitionError, Lifecycle
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store

from .scripted import PERMANENT, ScriptedResult, scripted_atoms


@dataclass(frozen=True)
class TheoryResult(ScriptedResult):
    """A converged result carrying the physics helper's optional fields."""

    theory_key: str | None = None
    theory: dict | None = None
    magmoms: tuple[float, ...] | None = None


def _label(store: Store, sid: int, result: ScriptedResult) -> None:
    life = Lifecycle(store, PERMANENT)
    life.fire(sid, "start", number=result.number)
    life.fire(sid, "label", result=result)


def _converged(store: Store, sid: int, cls: type = ScriptedResult, **extra) -> ScriptedResult:
    n = len(store.atoms_of(sid))
    return cls(
        1,
        "attempt-01",
        "converged",
        energy=-1.0,
        forces=np.zeros((n, 3)).tolist(),
        stress=[0.0] * 6,
        **extra,
    )


def test_provenance_of_a_structure(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        seed = store.add_structure(scripted_atoms(0, []), "bulk[0] Si diamond")
        origin = {"kind": "md", "walker": 3, "temperature": 1000.0, "frame": 17}
        new = store.add_structure(
            scripted_atoms(1, []), "md", origin, iteration=2, parent_potential=None, gamma=7.5
        )
        again = store.add_structure(scripted_atoms(1, []), "other", {"kind": "x"}, iteration=5)
        rows = {r["id"]: r for r in store.structure_rows()}
    assert again == new
    assert rows[seed]["origin"]["generator"] == "bulk" and rows[seed]["iteration"] == 0
    assert rows[new]["origin"] == origin
    assert rows[new]["iteration"] == 2 and rows[new]["gamma"] == 7.5
    assert rows[new]["source"] == "md"  # the first add wins: provenance never rewritten


def test_add_in_another_state_must_be_a_known_state(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store, pytest.raises(IllegalTransitionError):
        store.add_structure(scripted_atoms(0, []), "s", state="nonsense")


def test_label_records_theory_and_moments_when_the_result_has_them(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        a = store.add_structure(scripted_atoms(0, []), "a")
        b = store.add_structure(scripted_atoms(1, []), "b")
        theory = {"functional": "PBE", "ecutwfc": 30.0, "pseudopotentials": {"Si": "x.UPF"}}
        _label(
            store,
            a,
            _converged(
                store, a, TheoryResult, theory_key="abc123", theory=theory, magmoms=(0.5, -0.5)
            ),
        )
        _label(store, b, _converged(store, b))  # a result without the new fields
        rows = store._conn.execute(
            "SELECT structure_id, theory_key, theory, magmoms FROM labels ORDER BY structure_id"
        ).fetchall()
        atoms = {x.info["structure_id"]: x for x in store.labelled_atoms()}
    assert rows[0][1] == "abc123"
    assert rows[0][2] is not None and '"PBE"' in rows[0][2]
    assert rows[0][3] == "[0.5, -0.5]"
    assert rows[1][1:] == (None, None, None)
    assert atoms[a].info["theory_key"] == "abc123"
    assert "theory_key" not in atoms[b].info


def _record(store: Store, run_dir: Path, ids: list[int], fit: str, iteration: int = 0) -> int:
    return store.record_potential(
        path=run_dir / "trainer" / fit / "output_potential.yace",
        metrics={"rmse_energy_mev_per_atom": {"train": 1.0, "test": None}},
        baseline={"type": "none"},
        pacemaker_version="0.4.0rc1",
        train_ids=ids,
        test_ids=[],
        iteration=iteration,
        settings={"trainer": {"cutoff": 5.0}, "fingerprint": "f", "baseline": {"type": "none"}},
    )


def test_current_potential_is_set_with_the_record(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.current_potential() is None
        ids = [store.add_structure(scripted_atoms(i, []), "s") for i in range(2)]
        first = _record(store, tmp_path, ids, "fit-001")
        second = _record(store, tmp_path, ids[:1], "fit-002", iteration=1)
        current = store.current_potential()
        assert store.latest_potential() == current
        assert store.potential_ids() == [first, second]
        assert store.potential(first)["n_train"] == 2  # type: ignore[index]
    assert current is not None
    assert current["id"] == second and current["iteration"] == 1
    assert current["path"] == "trainer/fit-002/output_potential.yace"
    assert current["fit_dir"] == "trainer/fit-002"
    assert current["settings"]["trainer"] == {"cutoff": 5.0}
    assert status_json(tmp_path)["potential"]["path"] == str(
        tmp_path / "trainer/fit-002/output_potential.yace"
    )


def test_loop_rows_and_state(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.loop_state() is None
        r1 = store.begin_stage(0, "label")
        store.finish_stage(r1, 0, {"counts": {"labelled": 2}})
        r2 = store.begin_stage(1, "explore")
        state = store.loop_state()
        rows = store.loop_rows()
    assert [r["stage"] for r in rows] == ["label", "explore"]
    assert rows[0]["details"] == {"counts": {"labelled": 2}} and rows[0]["finished"] is not None
    assert state is not None and state["id"] == r2 and state["finished"] is None
    assert status_json(tmp_path)["loop"] == {
        "iteration": 1,
        "stage": "explore",
        "finished": None,
        "status": None,
    }


@settings(max_examples=25, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-10, 10)
        | st.floats(-1e3, 1e3)
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_origin_round_trips_any_json(tmp_path_factory, value) -> None:
    run_dir = tmp_path_factory.mktemp("o")
    origin = {"kind": "md", "value": value}
    with Store.open(run_dir) as store:
        sid = store.add_structure(scripted_atoms(0, []), "s", origin)
        (row,) = [r for r in store.structure_rows() if r["id"] == sid]
    assert row["origin"] == origin
