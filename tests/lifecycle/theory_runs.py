"""A real run store with two levels of theory and a relabel, built with the real pw.x.

Three 2-atom Si cells (LDA, 12 Ry, the cheap settings of ``pwx_driver.ORACLE_CFG``,
~0.3 s per pw.x): structure 1 is labelled first with a 2-step SCF budget, fails, and the
recipe's retry ladder rescues it with Marzari-Vanderbilt smearing (a theory change, as the
shipped ladder's smearing step); structures 2 and 3 are labelled with the fixed
occupations of the recipe. ``oracle.theory_mismatch: relabel`` then relabels 2 and 3 with
the rescue's smearing in ``RUN_DIR/relabel`` by the real :func:`relabel_to_one_theory`,
through three states a real run goes through: killed before the relabelling pw.x runs
(pending), every relabel quarantined (a 1-step SCF budget and no retries: failed), and,
after ``--retry-failed``, labelled.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ase.build import bulk

from mlip_autopipec.errors import Interrupted
from mlip_autopipec.lifecycle.runner import label_all, retry_failed
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.oracle import EspressoOracle, run_attempt
from mlip_autopipec.oracle.relabel import RELABEL_DIR, relabel_to_one_theory

from .pwx_driver import ORACLE_CFG, PSEUDO_DIR

PSEUDOS = {"Si": PSEUDO_DIR / "Si.pz-vbc.UPF"}
SMEARING = {"system.occupations": "smearing", "system.smearing": "mv", "system.degauss": 0.02}


def _with(cfg: dict[str, Any], electrons: dict[str, Any], retry: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    out["input_data"]["electrons"].update(electrons)
    out["retry"] = retry
    return out


#: Structure 1: 2 SCF steps cannot converge; the ladder's one step adds smearing.
RESCUE_CFG = _with(
    ORACLE_CFG,
    {"electron_maxstep": 2},
    {
        "max_attempts": 2,
        "ladders": {
            "scf_not_converged": [
                {
                    "set": {**SMEARING, "electrons.electron_maxstep": 100},
                    "restart": "scratch",
                    "changes_theory": True,
                }
            ]
        },
    },
)
#: A relabel oracle that cannot converge (1 SCF step, no retry): the relabels are quarantined.
FAILING_CFG = _with(ORACLE_CFG, {"electron_maxstep": 1}, {"max_attempts": 1})


def cells() -> list[Any]:
    out = []
    for strain in (0.0, -0.01, 0.01):
        out.append(bulk("Si", "diamond", 5.43 * (1 + strain)))
    return out


def labeller(
    executor: ThreadPoolExecutor,
) -> Callable[[Store, Path, dict[str, Any]], dict[str, int]]:
    def label(store: Store, run_dir: Path, cfg: dict[str, Any]) -> dict[str, int]:
        return label_all(
            store, EspressoOracle(cfg, PSEUDOS), run_attempt, executor, run_dir,
            handle_signals=threading.current_thread() is threading.main_thread(),
        )  # fmt: skip

    return label


def _interrupted(store: Store, run_dir: Path, cfg: dict[str, Any]) -> dict[str, int]:
    raise Interrupted(15)  # as if SIGTERM came right before the relabelling pw.x runs


class TheoryRun:
    """Drives the run store of ``run_dir`` through the states named in the module text."""

    def __init__(self, run_dir: Path, executor: ThreadPoolExecutor):
        self.run_dir = run_dir
        self.label = labeller(executor)
        self.say: list[str] = []

    def labelled(self) -> None:
        """Structure 1 rescued with smearing, 2 and 3 with fixed occupations."""
        rescue, *fixed = cells()
        with Store.open(self.run_dir) as store:
            store.add_structures([(rescue, "rescued")])
            self.label(store, self.run_dir, RESCUE_CFG)
            store.add_structures([(a, "fixed") for a in fixed])
            self.label(store, self.run_dir, ORACLE_CFG)

    def relabel(self, how: str) -> None:
        """``pending`` (killed first), ``failed`` or ``labelled`` (after --retry-failed)."""
        label: Any = {"pending": _interrupted, "failed": self._failing, "labelled": self.label}[how]
        if how == "labelled":
            with Store.open(self.run_dir / RELABEL_DIR, create=False) as rstore:
                retry_failed(rstore)
        with Store.open(self.run_dir, create=False) as store:
            try:
                relabel_to_one_theory(store, ORACLE_CFG, self.run_dir, label, self.say.append)
            except Interrupted:
                assert how == "pending"

    def _failing(self, store: Store, run_dir: Path, cfg: dict[str, Any]) -> dict[str, int]:
        # the relabel theory (cfg's smearing) with an SCF budget that cannot converge
        bad = copy.deepcopy(cfg)
        bad["input_data"]["electrons"].update(FAILING_CFG["input_data"]["electrons"])
        bad["retry"] = FAILING_CFG["retry"]
        return self.label(store, run_dir, bad)


def record_fit(
    run_dir: Path, settings: dict[str, Any] | None = None, *, relabels_fitted: bool = True
) -> int:
    """Record the run's training set as its current potential as ``stages.record_fit`` and
    ``mark_relabels_fitted`` do (the store's record only: what status, export and the
    report's theory section read; no pacemaker fit, so no ``.yace`` to evaluate).
    ``settings``: the potential's settings record; ``relabels_fitted=False`` stops before
    ``mark_relabels_fitted`` (a kill between the two)."""
    from mlip_autopipec.lifecycle.theories import run_theories
    from mlip_autopipec.oracle.relabel import mark_relabels_fitted

    view = run_theories(run_dir)
    ids = sorted(i for i, s in view.structures.items() if s["in_training_set"])
    with Store.open(run_dir, create=False) as store:
        pid = store.record_potential(
            path="trainer/fit-001/output_potential.yace",
            metrics={"rmse_energy_mev_per_atom": {}, "rmse_forces_mev_per_ang": {}},
            baseline={"type": "none"},
            pacemaker_version="0.4.0rc1",
            train_ids=ids,
            test_ids=[],
            settings=settings,
        )
        store.mark_trained(ids, pid)
    if relabels_fitted:
        mark_relabels_fitted(run_dir, pid)
    return pid
