"""Too few bands for a smeared run (issue 14.6): read what pw.x printed, raise nbnd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ase.build import bulk
from oracle_testlib import PSEUDO, needs_pwx, oracle_cfg

from mlip_autopipec.oracle import (
    DEFAULT_LADDERS,
    EspressoOracle,
    FailureClass,
    label_serially,
    plan_next,
    validate_ladders,
)
from mlip_autopipec.oracle.diagnose import diagnose, parse_printed
from mlip_autopipec.oracle.ladder import apply_step, base_params

DATA = Path(__file__).resolve().parents[1] / "data" / "pwx"
MORE = {"scale_printed": {"system.nbnd": {"factor": 1.05, "at_least": 4}}}


def test_printed_values_of_a_real_output() -> None:
    pwo = (DATA / "al_nbnd2_high_verbosity" / "espresso.pwo").read_text()
    assert diagnose(0, pwo).ok
    assert parse_printed(pwo) == {"nbnd": 2, "highest_band_occupation": 1.0009}
    # default verbosity: the number of states only, no occupations
    si = (DATA / "si_converged" / "espresso.pwo").read_text()
    assert parse_printed(si) == {"nbnd": 4}


def test_scale_printed_is_max_of_five_percent_and_four() -> None:
    assert apply_step({}, MORE, {"nbnd": 2}) == {"system.nbnd": 6}
    assert apply_step({}, MORE, {"nbnd": 100}) == {"system.nbnd": 105}
    assert apply_step({"system.nbnd": 7}, MORE, {"nbnd": 81}) == {"system.nbnd": 86}


class Entry:
    def __init__(self, printed: dict[str, Any], diff: dict[str, Any] | None = None):
        self.failure_class = FailureClass.TOO_FEW_BANDS
        self.message = "too few bands"
        self.step = None
        self.params_diff = diff or {}
        self.scf_history_ev: tuple[float, ...] = ()
        self.printed = printed


def test_planner_reads_the_printed_number_of_states() -> None:
    base = base_params({"input_data": {"system": {"occupations": "smearing"}}, "kspacing": 0.3})
    plan = plan_next(base, DEFAULT_LADDERS, 6, [Entry({"nbnd": 20})])
    assert plan is not None and plan.params["system.nbnd"] == 24
    assert plan.restart == "charge_density"
    # pw.x printed nothing to read: the step cannot apply, nothing is guessed
    assert plan_next(base, DEFAULT_LADDERS, 6, [Entry({})]) is None


def test_bad_scale_printed_steps_are_refused() -> None:
    for bad in (
        {"scale_printed": {"system.ecutwfc": {"factor": 2}}},
        {"scale_printed": {"system.nbnd": {"factor": 0.5}}},
        {"scale_printed": {"system.nbnd": {"at_least": 1.5}}},
        {"scale_printed": {"system.nbnd": {}}},
    ):
        assert validate_ladders({FailureClass.TOO_FEW_BANDS: [bad]}), bad
    assert validate_ladders({FailureClass.TOO_FEW_BANDS: [MORE]}) == []


@needs_pwx
def test_occupied_highest_band_is_not_a_label_and_more_bands_rescue_it(tmp_path: Path) -> None:
    """Real pw.x: Al with nbnd=2 and smearing converges with the top band occupied."""
    smear = {"occupations": "smearing", "smearing": "mv", "degauss": 0.05}
    al = bulk("Al", "fcc", 4.05)
    cfg = oracle_cfg(system={**smear, "nbnd": 2})
    res = label_serially(EspressoOracle(cfg, {"Al": PSEUDO / "Al.pz-vbc.UPF"}), "al", al, tmp_path)
    assert [r.failure_class for r in res] == [FailureClass.TOO_FEW_BANDS, FailureClass.CONVERGED]
    assert res[0].energy is None and res[0].printed["nbnd"] == 2
    assert res[0].printed["highest_band_occupation"] > 0.5
    assert res[1].params_diff["system.nbnd"] == 6 and res[1].restart == "charge_density"
    assert res[1].printed["nbnd"] == 6 and res[1].printed["highest_band_occupation"] < 0.005
    # the label equals a direct run with enough bands from scratch
    direct = label_serially(
        EspressoOracle(oracle_cfg(system={**smear, "nbnd": 6}), {"Al": PSEUDO / "Al.pz-vbc.UPF"}),
        "al",
        al,
        tmp_path / "direct",
    )
    assert [r.failure_class for r in direct] == [FailureClass.CONVERGED]
    assert abs(res[1].energy - direct[0].energy) < 1e-5
