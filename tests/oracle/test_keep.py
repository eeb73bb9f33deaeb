"""oracle.keep: pruning pw.x's scratch after real attempts, and restarts still working."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_testlib import PSEUDO, needs_pwx, oracle_cfg

from mlip_autopipec.oracle import EspressoOracle, run_attempt
from mlip_autopipec.oracle.attempt import SAVE_DIR
from mlip_autopipec.oracle.keep import KEEP_CHOICES, prune_structure
from mlip_autopipec.recipe.schema import load_schema


def _si() -> object:
    from ase.build import bulk

    return bulk("Si", "diamond", a=5.43)


def _oracle(**electrons: object) -> EspressoOracle:
    step = {"set": {"electrons.electron_maxstep": 80}, "restart": "charge_density"}
    cfg = oracle_cfg(
        system={"ecutwfc": 12},
        electrons=dict(electrons),
        kspacing=0.4,
        retry={"max_attempts": 3, "ladders": {"scf_not_converged": [step]}},
    )
    return EspressoOracle(cfg, {"Si": PSEUDO / "Si.pz-vbc.UPF"})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_schema_default_is_density() -> None:
    keep = load_schema()["properties"]["oracle"]["properties"]["keep"]
    assert keep["default"] == "density" and tuple(keep["enum"]) == KEEP_CHOICES


@needs_pwx
@pytest.mark.parametrize("keep", KEEP_CHOICES)
def test_prune_after_each_attempt_keeps_what_a_restart_needs(tmp_path: Path, keep: str) -> None:
    # electron_maxstep 2 cannot converge: attempt 1 fails, the ladder restarts from its density
    oracle = _oracle(electron_maxstep=2)
    atoms = _si()
    history = []
    req = oracle.next_request("1", atoms, history, tmp_path)
    assert req is not None
    history.append(run_attempt(req))
    assert not history[0].ok
    first = tmp_path / "attempt-01"
    # a failed SCF leaves its density, wavefunctions and mixing scratch
    assert {f"{SAVE_DIR}/charge-density.dat", "pwscf.wfc1", "pwscf.mix1"} <= _files(first)
    before = _files(first)
    freed = prune_structure(tmp_path, keep, finished=False)
    after = _files(first)
    assert {"espresso.pwi", "espresso.pwo"} <= after  # the evidence always stays
    if keep == "all":
        assert freed == 0 and after == before
    elif keep == "density":
        assert freed > 0 and f"{SAVE_DIR}/charge-density.dat" in after
        assert not [n for n in after if "wfc" in n or "mix" in n]
    else:
        assert freed > 0 and not (first / SAVE_DIR).exists()
    req = oracle.next_request("1", atoms, history, tmp_path)
    assert req is not None
    # a charge-density restart is still possible exactly when a density was kept
    assert (req.restart_from is not None) == (keep != "none")
    history.append(run_attempt(req))
    prune_structure(tmp_path, keep, finished=False)
    if keep == "density":  # only the newest density is kept
        saves = [p.parent.parent.name for p in tmp_path.rglob("charge-density.dat")]
        assert saves == ["attempt-02"]
    assert history[-1].ok  # the retry converged (from the kept density or from scratch)
    converged = tmp_path / "attempt-02" / SAVE_DIR
    if keep == "all":
        assert any(n.startswith("wfc") for n in _files(converged))  # wavefunctions of a success
    prune_structure(tmp_path, keep, finished=True)  # labelled: nothing is needed any more
    left = [p for p in tmp_path.rglob(SAVE_DIR) if p.is_dir()]
    assert (left != []) == (keep == "all")


@settings(max_examples=30, deadline=None)
@given(
    layout=st.lists(
        st.tuples(st.integers(1, 4), st.booleans(), st.booleans(), st.booleans()),
        min_size=1,
        max_size=5,
        unique_by=lambda t: (t[0], t[1]),
    ),
    finished=st.booleans(),
)
def test_density_keeps_only_the_newest_live_density(
    tmp_path_factory: pytest.TempPathFactory,
    layout: list[tuple[int, bool, bool, bool]],
    finished: bool,
) -> None:
    root = tmp_path_factory.mktemp("s")
    for n, aside, has_density, has_wfc in layout:
        d = root / (f"attempt-{n:02d}" + (".interrupted-1" if aside else "")) / SAVE_DIR
        d.mkdir(parents=True)
        (d.parent / "espresso.pwo").write_text("out")
        (d / "data-file-schema.xml").write_text("x")
        if has_density:
            (d / "charge-density.dat").write_bytes(b"rho")
        if has_wfc:
            (d / "wfc1.dat").write_bytes(b"psi")
    prune_structure(root, "density", finished=finished)
    live = sorted(n for n, aside, dens, _ in layout if not aside and dens)
    kept = sorted(p.parent.parent.name for p in root.rglob("charge-density.dat"))
    assert kept == ([] if finished or not live else [f"attempt-{live[-1]:02d}"])
    assert not list(root.rglob("wfc*"))
    assert len(list(root.rglob("espresso.pwo"))) == len(layout)


def test_unknown_choice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="oracle.keep"):
        prune_structure(tmp_path, "some", finished=True)
