"""Explored frames become candidates when the held-out errors miss the targets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlip_autopipec.explore.loop import _conn, ensure_tables, promote_explored
from mlip_autopipec.lifecycle.store import Store

CFG = {"max_selected": 3, "targets": {"energy_mev_per_atom": 5.0, "forces_mev_per_ang": 150.0}}


def _run(tmp_path: Path, heldout: tuple[float, float], gammas: list[float], **cfg: object) -> int:
    with Store.open(tmp_path / "run") as store:
        ensure_tables(store)
        conn = _conn(store)
        with store.transaction() as tx:
            tx.execute(
                "INSERT INTO al_iterations(iteration, parent_potential, started,"
                " heldout_rmse_energy_mev_per_atom, heldout_rmse_forces_mev_per_ang)"
                " VALUES (1, 1, ?, ?, ?)",
                (time.time(), *heldout),
            )
            for i, g in enumerate(gammas):
                tx.execute(
                    "INSERT INTO al_candidates(iteration, walker, condition, frame, potential,"
                    " gamma, energy, max_force, atoms, state) VALUES (1, 'w', '{}', ?, 1, ?,"
                    " 0, 0, '{}', ?)",
                    (10 * i, g, "candidate" if g > 5.0 else "explored"),
                )
        n = promote_explored(store, 1, CFG | cfg)
        again = promote_explored(store, 1, CFG | cfg)  # idempotent
        states = [s for (s,) in conn.execute("SELECT state FROM al_candidates ORDER BY frame")]
    assert again == 0
    assert states == ["candidate" if g > 5.0 or (n and g > 1.01) else "explored" for g in gammas]
    return n


@pytest.mark.parametrize(
    ("heldout", "gammas", "cfg", "promoted"),
    [
        ((8.1, 88.7), [0.9, 1.5, 3.0, 4.9], {}, 3),  # energy misses, no candidate: fill
        ((4.0, 160.0), [0.9, 1.5, 6.0], {}, 1),  # forces miss
        ((4.0, 100.0), [0.9, 1.5, 3.0], {}, 0),  # targets met: nothing to learn
        ((8.1, 88.7), [1.5, 6.0, 7.0, 8.0], {}, 0),  # enough candidates already
        ((8.1, 88.7), [1.5, 3.0], {"fill_from_explored": False}, 0),
    ],
)
def test_promotion(
    tmp_path: Path,
    heldout: tuple[float, float],
    gammas: list[float],
    cfg: dict[str, object],
    promoted: int,
) -> None:
    assert _run(tmp_path, heldout, gammas, **cfg) == promoted
