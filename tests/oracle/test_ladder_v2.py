"""Oracle v2 ladder steps (issue 14.1, 14.2): coarse-k metals and the density-restart probe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_testlib import PSEUDO, needs_pwx, oracle_cfg

from mlip_autopipec.oracle import (
    DEFAULT_LADDERS,
    EspressoOracle,
    FailureClass,
    label_serially,
    plan_next,
)
from mlip_autopipec.oracle.ladder import DENSITY_PROBE, apply_step, validate_ladders

OSCILLATING = (1.0, 0.1, 0.5, 0.05, 0.4, 0.06, 0.5, 0.05)
METAL = {
    "kspacing": 0.4,
    "system.ecutwfc": 30,
    "system.occupations": "smearing",
    "system.smearing": "mv",
    "system.degauss": 0.005,
    "system.nspin": 2,
}


@dataclass(frozen=True)
class Entry:
    failure_class: str
    message: str = "convergence NOT achieved"
    step: dict[str, Any] | None = None
    params_diff: dict[str, Any] = field(default_factory=dict)
    scf_history_ev: tuple[float, ...] = OSCILLATING
    kgrid: tuple[int, int, int] | None = None


def test_coarse_k_metal_goes_to_denser_k_after_gentler_mixing() -> None:
    first = Entry("scf_not_converged", kgrid=(1, 1, 1))
    probe = plan_next(METAL, DEFAULT_LADDERS, 6, [first])
    # first gentler mixing from the density (keeps the level of theory) ...
    assert probe is not None and probe.step is not None and "probe_restores" in probe.step
    assert probe.params["electrons.mixing_beta"] == 0.35
    second = Entry(
        "scf_not_converged", step=probe.step, params_diff=probe.params_diff, kgrid=(1, 1, 1)
    )
    h = [first, second]
    plan = plan_next(METAL, DEFAULT_LADDERS, 6, h)
    # ... then, still erratic on a coarse grid: denser k and 0.02 Ry smearing
    assert plan is not None and plan.step is not None
    assert plan.params["kspacing"] == 0.2  # twice the k-point density
    assert plan.params["system.degauss"] == 0.02
    assert plan.params["electrons.mixing_beta"] == 0.35  # the gentle beta is kept
    assert "electrons.electron_maxstep" not in plan.params  # not the probe's budget
    assert plan.step["changes_theory"] is True and plan.restart == "scratch"
    # a dense grid: not this step, the same settings from scratch instead
    dense = [
        Entry(e.failure_class, step=e.step, params_diff=e.params_diff, kgrid=(6, 6, 6)) for e in h
    ]
    other = plan_next(METAL, DEFAULT_LADDERS, 6, dense)
    assert other is not None and "denser_k" not in (other.step or {})
    assert other.params.get("kspacing") == 0.4
    # unknown grid (an old stored result): not coarse
    unknown = [Entry(e.failure_class, step=e.step, params_diff=e.params_diff) for e in h]
    other = plan_next(METAL, DEFAULT_LADDERS, 6, unknown)
    assert other is not None and "denser_k" not in (other.step or {})
    # fixed occupations on a coarse grid: smearing first, as before
    fixed = {k: v for k, v in METAL.items() if not k.startswith("system.") or "ecut" in k}
    plan = plan_next(fixed, DEFAULT_LADDERS, 6, [first])
    assert plan is not None and plan.params["system.occupations"] == "smearing"


def test_coarse_k_metal_that_already_mixes_gently_goes_there_at_once() -> None:
    gentle = {**METAL, "electrons.mixing_beta": 0.3}
    plan = plan_next(gentle, DEFAULT_LADDERS, 6, [Entry("scf_not_converged", kgrid=(1, 1, 1))])
    assert plan is not None and plan.step is not None and plan.step["changes_theory"] is True
    assert plan.params["kspacing"] == 0.2 and plan.params["system.degauss"] == 0.02
    assert plan.params["electrons.mixing_beta"] == 0.3 and plan.restart == "scratch"
    # a dense grid: the probe with gentler mixing, as for any other erratic SCF
    plan = plan_next(gentle, DEFAULT_LADDERS, 6, [Entry("scf_not_converged", kgrid=(3, 3, 3))])
    assert plan is not None and plan.step is not None and "probe_restores" in plan.step


def test_denser_k_refines_either_grid_form() -> None:
    assert apply_step({"kpts": [1, 2, 3]}, {"denser_k": 2}) == {"kpts": [2, 4, 6]}
    assert apply_step({"kspacing": 0.3}, {"denser_k": 2}) == {"kspacing": 0.15}
    with pytest.raises(ValueError):
        apply_step({}, {"denser_k": 2})
    assert validate_ladders({"scf_not_converged": [{"denser_k": 1}]})
    assert validate_ladders({"scf_not_converged": [{"probe": 0}]})
    assert validate_ladders({"scf_not_converged": [{"changes_theory": "yes"}]})


def test_a_failed_probe_falls_back_to_scratch_with_the_full_budget() -> None:
    base = {**METAL, "electrons.electron_maxstep": 60}
    h = [Entry("scf_not_converged", kgrid=(6, 6, 6))]
    probe = plan_next(base, DEFAULT_LADDERS, 6, h)
    assert probe is not None and probe.step is not None
    assert probe.restart == "charge_density"
    assert probe.params["electrons.electron_maxstep"] == 25
    assert probe.step["probe_restores"] == 60
    h.append(Entry("scf_not_converged", step=probe.step, params_diff=probe.params_diff))
    after = plan_next(base, DEFAULT_LADDERS, 6, h)
    assert after is not None and after.restart == "scratch"
    assert after.params["electrons.electron_maxstep"] == 60
    assert after.params["electrons.mixing_beta"] == probe.params["electrons.mixing_beta"]


@settings(max_examples=200, deadline=None)
@given(
    kgrid=st.one_of(st.none(), st.tuples(*[st.integers(1, 8)] * 3)),
    maxstep=st.one_of(st.none(), st.integers(1, 300)),
    n=st.integers(1, 6),
)
def test_probe_never_grows_the_budget(
    kgrid: tuple[int, int, int] | None, maxstep: int | None, n: int
) -> None:
    base = dict(METAL)
    if maxstep is not None:
        base["electrons.electron_maxstep"] = maxstep
    history: list[Entry] = []
    for _ in range(n):
        plan = plan_next(base, DEFAULT_LADDERS, 8, history)
        if plan is None:
            break
        step = plan.step or {}
        budget = plan.params.get("electrons.electron_maxstep")
        if "probe_restores" in step:
            assert budget is not None and budget <= DENSITY_PROBE
            assert budget <= (maxstep if maxstep is not None else 100)
        history.append(
            Entry("scf_not_converged", step=plan.step, params_diff=plan.params_diff, kgrid=kgrid)
        )


@pytest.mark.slow
@needs_pwx
def test_coarse_k_magnetic_metal_rescued_in_one_step(tmp_path: Path) -> None:
    """Real pw.x: rattled bcc Fe2 at Gamma, 0.02 Ry smearing, beta 0.3: 60 oscillating
    steps (a 25-step probe with beta 0.15 does not help either, measured); mixing is
    already gentle, so the coarse-k step (2x2x2, 0.02 Ry) comes at once and converges."""
    fe2 = bulk("Fe", "bcc", 2.87, cubic=True)
    fe2.rattle(0.05, seed=3)
    # the pw.x input this was measured with: ASE's 2.3 overrode input_data's
    # starting_magnetization and pw.x clipped it to 1.0, i.e. 8 μB per Fe (8 valence electrons)
    fe2.set_initial_magnetic_moments([8.0] * len(fe2))
    cfg = oracle_cfg(
        kspacing=0.4,
        system={
            "nspin": 2,
            "ecutrho": 120,
            "occupations": "smearing",
            "smearing": "mv",
            "degauss": 0.02,
            "nbnd": 16,
        },
        electrons={"mixing_beta": 0.3, "electron_maxstep": 60},
    )
    res = label_serially(
        EspressoOracle(cfg, {"Fe": PSEUDO / "Fe.pz-nd-rrkjus.UPF"}), "fe", fe2, tmp_path
    )
    assert res[0].failure_class == FailureClass.SCF_NOT_CONVERGED and res[0].kgrid == (1, 1, 1)
    assert [r.failure_class for r in res] == ["scf_not_converged", "converged"]
    assert res[1].kgrid == (2, 2, 2) and res[1].step is not None
    assert res[1].step["changes_theory"] is True


@dataclass(frozen=True)
class PrintedEntry(Entry):
    printed: dict[str, Any] = field(default_factory=lambda: {"nbnd": 29})


def test_stalled_smeared_scf_with_default_bands_gets_more_bands_after_gentler_mixing() -> None:
    """Al 16-layer column (bench/scf_ladder.py al16_long_cell): stuck with pw.x's 29
    default bands whatever the mixing; 25 % more bands from scratch converge."""
    metal = {**METAL, "kspacing": None, "kpts": [4, 4, 1], "electrons.mixing_beta": 0.9}
    first = PrintedEntry("scf_not_converged", kgrid=(4, 4, 1))
    probe = plan_next(metal, DEFAULT_LADDERS, 6, [first])
    assert probe is not None and probe.params["electrons.mixing_beta"] == 0.45
    second = PrintedEntry(
        "scf_not_converged", step=probe.step, params_diff=probe.params_diff, kgrid=(4, 4, 1)
    )
    plan = plan_next(metal, DEFAULT_LADDERS, 6, [first, second])
    assert plan is not None and plan.step is not None and plan.restart == "scratch"
    assert plan.params["system.nbnd"] == 37  # ceil(29 x 1.25)
    assert "electrons.electron_maxstep" not in plan.params  # the probe's budget is gone
    # bands the recipe chose are the recipe's: not this step
    chosen = plan_next({**metal, "system.nbnd": 29}, DEFAULT_LADDERS, 6, [first, second])
    assert chosen is not None and "system.nbnd" not in (chosen.params_diff or {})
    # fixed occupations: smearing first, as before
    fixed = {k: v for k, v in metal.items() if k != "system.occupations"}
    plan = plan_next(fixed, DEFAULT_LADDERS, 6, [first])
    assert plan is not None and plan.params["system.occupations"] == "smearing"
