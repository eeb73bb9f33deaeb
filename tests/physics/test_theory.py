"""The level of theory of every label, and one theory per training set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ase.build import bulk
from hypothesis import given
from hypothesis import strategies as st
from physics_testlib import PSEUDO, needs_pwx

from mlip_autopipec.oracle import EspressoOracle, label_serially
from mlip_autopipec.oracle.theory import (
    dominant_theory,
    final_theory_key,
    one_theory,
    pseudo_info,
    relabel_plan,
    theory_key,
    theory_of,
    theory_settings,
    with_theory_settings,
)

SI_PP = {"Si": PSEUDO / "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"}


def _key(params: dict[str, Any], kpoints: dict[str, Any] | None = None) -> str:
    return theory_key(theory_of(params, SI_PP, kpoints=kpoints))


def test_upf_headers_v2_and_v1(tmp_path: Path) -> None:
    info = pseudo_info(SI_PP["Si"])
    assert (info.functional, info.z_valence) == ("PBE", 4.0)
    assert len(info.md5) == 32
    fe = pseudo_info(PSEUDO / "Fe.pbe-nd-rrkjus.UPF")
    assert (fe.functional, fe.z_valence) == ("SLA PW PBE PBE", 8.0)
    v1 = tmp_path / "X.v1.UPF"
    v1.write_text(
        "<PP_INFO>\n</PP_INFO>\n<PP_HEADER>\n   0                   Version Number\n"
        "  Si                   Element\n   NC                   Norm - Conserving\n"
        " SLA  PW   PBE  PBE     PBE  Exchange-Correlation functional\n"
        "    4.00000000000      Z valence\n</PP_HEADER>\n"
    )
    old = pseudo_info(v1)
    assert (old.functional, old.z_valence) == ("SLA PW PBE PBE PBE", 4.0)


def test_key_covers_the_hamiltonian_not_the_numerics() -> None:
    base = {"system.ecutwfc": 30, "kspacing": 0.15}
    key = _key(base)
    assert key.split(" ", 1)[1] == "PBE ecut=30/120Ry fixed nspin=1"
    assert _key({**base, "system.ecutwfc": 30.0}) == key
    assert _key({**base, "system.ecutrho": 120}) == key  # pw.x's default, stated
    # k-points are recorded but never a new theory
    kp = {"grid": [3, 3, 3], "spacing": 0.12, "kspacing": 0.15, "kpts": None}
    assert _key(base, kp) == key
    assert theory_of(base, SI_PP, kpoints=kp)["kpoints"]["grid"] == [3, 3, 3]
    # SCF numerics are not theory
    for k, v in {
        "electrons.mixing_beta": 0.3,
        "electrons.diagonalization": "cg",
        "electrons.electron_maxstep": 200,
        "electrons.startingpot": "file",
        "system.nbnd": 20,
    }.items():
        assert _key({**base, k: v}) == key, k
    # the Hamiltonian is
    smear = {**base, "system.occupations": "smearing", "system.smearing": "mv"}
    assert _key(smear) != key
    assert _key({**smear, "system.degauss": 0.02}) != _key({**smear, "system.degauss": 0.04})
    assert _key({**base, "system.ecutwfc": 35}) != key
    assert _key({**base, "system.nspin": 2}) != key
    assert _key({**base, "system.input_dft": "pbesol"}) != key
    assert _key({**base, "system.vdw_corr": "grimme-d3"}) != key
    # smearing width only counts with smearing
    assert _key({**base, "system.degauss": 0.05}) == key


def test_theory_settings_keep_only_physics() -> None:
    diff = {
        "system.occupations": "smearing",
        "system.smearing": "mv",
        "system.degauss": 0.02,
        "electrons.mixing_beta": 0.35,
        "electrons.startingpot": "file",
        "kspacing": 0.2,
    }
    assert theory_settings(diff) == {
        "system.degauss": 0.02,
        "system.occupations": "smearing",
        "system.smearing": "mv",
    }
    cfg = {"input_data": {"system": {"ecutwfc": 30}}, "kspacing": 0.2}
    out = with_theory_settings(cfg, {**theory_settings(diff), "system.ecutwfc": None})
    assert out["input_data"]["system"] == {
        "occupations": "smearing",
        "smearing": "mv",
        "degauss": 0.02,
    }
    assert cfg["input_data"]["system"] == {"ecutwfc": 30}  # a copy


def test_final_theory_key_is_the_last_converged_attempts() -> None:
    attempts = [
        {"failure_class": "scf_not_converged", "theory_key": "a"},
        {"failure_class": "converged", "theory_key": "b"},
    ]
    assert final_theory_key(attempts) == "b"
    assert final_theory_key(attempts[:1]) is None
    assert final_theory_key([{"failure_class": "converged"}]) is None  # stored before keys


@given(
    st.dictionaries(
        st.sampled_from(
            ["system.ecutwfc", "system.degauss", "system.nspin", "electrons.mixing_beta"]
        ),
        st.integers(1, 60),
        min_size=1,
    )
)
def test_key_ignores_int_float_and_order(params: dict[str, int]) -> None:
    as_float = {k: float(v) for k, v in reversed(list(params.items()))}
    assert _key(params) == _key(as_float)
    key = _key(params)
    assert len(key.split(" ", 1)[0]) == 12 and key == _key(dict(params))


@given(st.lists(st.sampled_from(["a", "b", "c", None]), max_size=30))
def test_dominant_theory_partitions(keys: list[str | None]) -> None:
    labels = [{"id": i, "theory_key": k} for i, k in enumerate(keys)]
    key, kept, left = dominant_theory(labels)
    assert sorted(kept + left) == list(range(len(keys)))
    if not keys:
        assert key is None
        return
    assert all(keys[i] == key for i in kept) and all(keys[i] != key for i in left)
    assert len(kept) == max(keys.count(k) for k in set(keys))
    # ties go to the first theory seen
    tied = [k for k in set(keys) if keys.count(k) == len(kept)]
    assert key == min(tied, key=keys.index)


@pytest.mark.pwx
@needs_pwx
def test_one_rescue_with_smearing_leaves_one_theory(tmp_path: Path) -> None:
    """4 fixed-occupation 8-atom Si cells at Gamma; rattling closes the gap of one
    (100 erratic steps, measured), which the ladder rescues with smearing."""
    cells = []
    for rattle, seed, strain in ((0, 0, 0.0), (0.03, 1, 0.0), (0.01, 2, 0.0), (0, 0, 0.02)):
        si8 = bulk("Si", "diamond", 5.43 * (1 + strain), cubic=True)
        if rattle:
            si8.rattle(rattle, seed=seed)
        cells.append(si8)
    cfg = {
        "kspacing": 0.2,  # Gamma only for this cell
        "input_data": {
            "system": {"ecutwfc": 15},
            "electrons": {"conv_thr": 1e-8, "electron_maxstep": 30},
        },
    }
    pps = {"Si": PSEUDO / "Si.pz-vbc.UPF"}
    oracle = EspressoOracle(cfg, pps)
    labels = []
    history_of = []
    for i, atoms in enumerate(cells):
        history = label_serially(oracle, f"s{i}", atoms, tmp_path / f"s{i}")
        assert history[-1].ok, history[-1].message
        labels.append(history[-1])
        history_of.append(history)
    # s1: fixed occupations fail, smearing converges with its top band occupied
    # (too_few_bands, issue 14.6), more bands give the label
    assert [r.number for r in labels] == [1, 3, 1, 1]
    assert [r.failure_class for r in history_of[1]] == [
        "scf_not_converged",
        "too_few_bands",
        "converged",
    ]
    rescue = labels[1]
    assert rescue.params_diff["system.occupations"] == "smearing"
    assert rescue.theory is not None and rescue.theory["occupations"] == "smearing"
    fixed = labels[0].theory_key
    assert fixed is not None and fixed.endswith("LDA ecut=15/60Ry fixed nspin=1")
    assert rescue.theory_key != fixed

    # by default the trainer fits one theory and names the structure left out
    key, kept, left = dominant_theory(labels)
    assert key == fixed and kept == ["s0", "s2", "s3"] and left == ["s1"]

    # relabel: the others get the rescue's settings and the whole set shares its theory
    plan = relabel_plan(labels)
    assert plan is not None and plan.target_key == rescue.theory_key
    assert plan.relabel_ids == ["s0", "s2", "s3"]
    relabel = EspressoOracle(with_theory_settings(cfg, plan.settings), pps)
    redone = [
        label_serially(relabel, f"s{i}", cells[i], tmp_path / f"re{i}")[-1] for i in (0, 2, 3)
    ]
    assert all(r.ok for r in redone)
    assert {r.theory_key for r in [*redone, rescue]} == {rescue.theory_key}

    # the training set as the pipeline builds it: labelled Atoms + the stored attempts
    stored = {f"s{i}": [a.to_dict() for a in (history_of[i])] for i in range(4)}
    atoms = []
    for i, c in enumerate(cells):
        a = c.copy()
        a.info["structure_id"] = f"s{i}"
        atoms.append(a)
    kept_atoms, left_out, key = one_theory(atoms, lambda sid: final_theory_key(stored[sid]))
    assert key == fixed and left_out == ["s1"]
    assert [a.info["structure_id"] for a in kept_atoms] == ["s0", "s2", "s3"]
