"""Issue 14.3: what pw.x would refuse is read from the UPF headers, before any pw.x run."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.build import bulk
from oracle_testlib import oracle_cfg

from mlip_autopipec.oracle import EspressoOracle
from mlip_autopipec.oracle.diagnose import FailureClass
from mlip_autopipec.recipe import pseudo

PSEUDO = Path("/usr/share/espresso/pseudo")
needs_pseudo = pytest.mark.skipif(not PSEUDO.is_dir(), reason="quantum-espresso-data")
PBE = ("SLA", "PW", "PBX", "PBC")
LDA = ("SLA", "PZ", "NOGX", "NOGC")


@needs_pseudo
@pytest.mark.parametrize(
    ("name", "functional", "full", "ultrasoft"),
    [
        ("Si.pz-vbc.UPF", LDA, False, False),  # v2 header, four parts
        ("Si.pbe-rrkj.UPF", PBE, False, False),  # old spelling "SLA PW PBE PBE"
        ("Si.pbe-nl-rrkjus_psl.1.0.0.UPF", PBE, False, True),  # short name "PBE"
        ("Li.pbesol-s-rrkjus_psl.0.2.1.UPF", ("SLA", "PW", "PSX", "PSC"), False, True),
        ("C.UPF", LDA, False, False),  # UPF v1, "... Exchange-Correlation functional"
        ("Pt.rel-pz-n-rrkjus.UPF", LDA, True, True),  # v2 has_so="true"
        ("Fe.rel-pbe-spn-rrkjus_psl.0.2.1.UPF", PBE, True, True),  # relativistic="full"
        ("Pt.rel-pbe-n-rrkjus.UPF", PBE, True, True),  # v1: a PP_ADDINFO block at the end
        ("Si_r.upf", PBE, True, False),  # fully relativistic, norm-conserving
    ],
)
def test_headers_of_real_files(name: str, functional: tuple, full: bool, ultrasoft: bool) -> None:
    h = pseudo.read_header(PSEUDO / name)
    assert pseudo.canonical_functional(h.functional) == functional
    assert (h.fully_relativistic, h.ultrasoft) == (full, ultrasoft)


def test_unknown_functionals_are_not_compared() -> None:
    a = pseudo.UpfHeader("Si", None, functional="SLA PW XYZQ PBC")
    b = pseudo.UpfHeader("C", None, functional="PBE")
    assert pseudo.canonical_functional(a.functional) is None
    assert pseudo.functional_conflict({"Si": a, "C": b}) is None
    c = pseudo.UpfHeader("C", None, functional=" SLA  PZ   NOGX NOGC")
    assert "different functionals" in (pseudo.functional_conflict({"Si": b, "C": c}) or "")


@needs_pseudo
@pytest.mark.parametrize(
    ("pps", "system", "cls"),
    [
        # measured with pw.x 6.7: "conflicting values for icorr" after reading the files
        ({"Si": "Si.pz-vbc.UPF", "C": "C.pbe-rrkjus.UPF"}, {}, FailureClass.XC_CONFLICT),
        # measured: average_pp "FR-PP please use lspinorb=.true."
        (
            {"Si": "Si.pz-vbc.UPF", "C": "C.pz-rrkjus.UPF", "Pt": "Pt.rel-pz-n-rrkjus.UPF"},
            {},
            FailureClass.NEEDS_SPINORBIT,
        ),  # fmt: skip
        # measured: both run (PBE PBE = PBX PBC; a norm-conserving FR file is averaged)
        ({"Si": "Si.pbe-rrkj.UPF", "C": "C.pbe-n-kjpaw_psl.0.1.UPF"}, {}, None),
        ({"Si": "Si.rel-pbe-rrkj.UPF", "C": "C.pbe-rrkjus.UPF"}, {}, None),
        # spin-orbit asked for: the fully-relativistic file is what the user wants
        ({"Pt": "Pt.rel-pz-n-rrkjus.UPF"}, {"lspinorb": True, "noncolin": True}, None),
        # the user overrides the files' functional: pw.x does not compare them then
        ({"Si": "Si.pz-vbc.UPF", "C": "C.pbe-rrkjus.UPF"}, {"input_dft": "PBE"}, None),
    ],
)
def test_preflight_and_validate_agree(
    pps: dict[str, str], system: dict, cls: str | None, tmp_path: Path
) -> None:
    from mlip_autopipec.recipe import validate

    atoms = bulk("SiC", "zincblende", 4.36)
    if "Pt" in pps:
        atoms = bulk("Pt", "fcc", 3.92)
        pps = {"Pt": pps["Pt"]}
    oracle = EspressoOracle(oracle_cfg(system=system), {k: PSEUDO / v for k, v in pps.items()})
    got = oracle.preflight(atoms)
    assert (got.failure_class if got else None) == cls
    if got is not None:
        assert got.number == 0 and got.attempt_dir is None

    recipe = tmp_path / "r.yaml"
    elements = sorted(pps)
    from ase.io import write

    write(tmp_path / "cell.extxyz", atoms)
    structures = "  - file: cell.extxyz\n"
    sys_lines = "".join(f"      {k}: {v}\n" for k, v in system.items())
    recipe.write_text(
        "structures:\n" + structures + "oracle:\n  pseudopotentials:\n"
        + "".join(f"    {el}: {pps[el]}\n" for el in elements)
        + "  kspacing: 0.3\n  input_data:\n    system:\n      ecutwfc: 20\n" + sys_lines
        + "trainer:\n  elements: [" + ", ".join(elements) + "]\n"
    )  # fmt: skip
    errors = [d.message for d in validate.check_recipe(recipe) if d.severity == "error"]
    expect = {
        None: None,
        FailureClass.XC_CONFLICT: "different functionals",
        FailureClass.NEEDS_SPINORBIT: "without lspinorb",
    }[cls]
    if expect is None:
        assert not [e for e in errors if "functional" in e or "lspinorb" in e], errors
    else:
        assert any(expect in e for e in errors), errors
