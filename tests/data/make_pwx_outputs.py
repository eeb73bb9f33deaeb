#!/usr/bin/env python3
"""Regenerate tests/data/pwx/<case>/ with the real pw.x (QE 6.7 here): run

    .venv/bin/python tests/data/make_pwx_outputs.py [case ...]

Each case keeps pw.x's espresso.pwi/.pwo/.err (and CRASH when written) plus meta.json
(return code, timeout flag, the class the case was built to produce). The parsing tests
read only these files, so they need no binary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from oracle_testlib import oracle_cfg  # noqa: E402

from mlip_autopipec.oracle import EspressoOracle, run_attempt

HERE = Path(__file__).resolve().parent / "pwx"
P = Path("/usr/share/espresso/pseudo")


#: The oracle tests' recipe section (tests/oracle/oracle_testlib.py): one helper.
cfg = oracle_cfg


SI = bulk("Si", "diamond", 5.43)
NI2 = Atoms("Ni2", positions=[[0, 0, 0], [0.6, 0, 0]], cell=[4.5] * 3, pbc=True)
NI_SMEAR = {"ecutrho": 120, "occupations": "smearing", "smearing": "mv", "degauss": 0.02}


def with_moments(atoms: Atoms, moment: float) -> Atoms:
    """``atoms`` with an initial moment of ``moment`` μB on every site: magnetism is recipe
    data (the atoms' moments), never ``starting_magnetization`` in input_data (refused).
    The oracle writes moment / z_valence as pw.x's fraction and sets nspin = 2."""
    out = atoms.copy()
    out.set_initial_magnetic_moments([moment] * len(out))
    return out


# Fe.pz-nd-rrkjus.UPF has z_valence 8, so 8 μB is the pw.x fraction 1.0: what the stored
# fixtures ran with (their espresso.pwo: "Fe 1.000"; ASE's default 2.3 had overwritten the
# starting_magnetization of input_data and pw.x clipped it to 1)
FE_MOMENT = 8.0
FE_BCC = with_moments(bulk("Fe", "bcc", 2.87), FE_MOMENT)

# name: (oracle cfg, pseudopotentials, atoms, request overrides, expected class)
CASES: dict[str, tuple[dict[str, Any], dict[str, str], Atoms, dict[str, Any], str]] = {
    "si_converged": (cfg(), {"Si": "Si.pz-vbc.UPF"}, SI, {}, "converged"),
    "si_maxstep": (
        cfg(electrons={"electron_maxstep": 3}),
        {"Si": "Si.pz-vbc.UPF"},
        SI,
        {},
        "scf_not_converged",
    ),
    "al_fixed_occupations": (
        cfg(),
        {"Al": "Al.pz-vbc.UPF"},
        bulk("Al", "fcc", 4.05),
        {},
        "charge_wrong",
    ),
    "missing_pseudo": (
        cfg(),
        {"Si": "Si.pz-vbc.UPF"},
        SI,
        {"pseudopotentials": {"Si": "Si.does-not-exist.UPF"}},
        "missing_pseudopotential",
    ),
    "xc_conflict": (
        cfg(system={"ecutrho": 120}),
        {"Si": "Si.pz-vbc.UPF", "C": "C.pbe-rrkjus.UPF"},
        bulk("SiC", "zincblende", 4.36),
        {},
        "xc_conflict",
    ),
    "fr_pp_needs_spinorbit": (
        cfg(system={"ecutrho": 120, "occupations": "smearing", "degauss": 0.02}),
        {"Pt": "Pt.rel-pz-n-rrkjus.UPF"},
        bulk("Pt", "fcc", 3.92),
        {},
        "needs_spinorbit",
    ),
    "lsda_fixed_occupations": (
        cfg(system={"ecutrho": 120}),
        {"Fe": "Fe.pz-nd-rrkjus.UPF"},
        FE_BCC,
        {},
        "input_error",
    ),
    "ni2_s_matrix": (
        cfg(kspacing=None, kpts=[1, 1, 1], system=NI_SMEAR),
        {"Ni": "Ni.pbe-nd-rrkjus.UPF"},
        NI2,
        {},
        "diagonalization",
    ),
    "ni2_cg_segfault": (
        cfg(kspacing=None, kpts=[1, 1, 1], system=NI_SMEAR, electrons={"diagonalization": "cg"}),
        {"Ni": "Ni.pbe-nd-rrkjus.UPF"},
        NI2,
        {},
        "crashed",
    ),
    "ni2_max_seconds": (
        cfg(kspacing=None, kpts=[1, 1, 1], system=NI_SMEAR),
        {"Ni": "Ni.pbe-nd-rrkjus.UPF"},
        Atoms("Ni2", positions=[[0, 0, 0], [0.9, 0, 0]], cell=[4.5] * 3, pbc=True),
        {},
        "walltime",
    ),
}
FE_MAG = {
    "ecutrho": 120,
    "occupations": "smearing",
    "smearing": "mv",
    "degauss": 0.01,
}
SI8 = bulk("Si", "diamond", 5.43, cubic=True)
SI8.rattle(0.03, seed=1)
FE2 = with_moments(bulk("Fe", "bcc", 2.87, cubic=True), FE_MOMENT)
# SCF trajectories: the ladder's "when" labels are checked on these
CASES["si8_gamma_erratic"] = (
    cfg(kspacing=0.2, electrons={"electron_maxstep": 30}),
    {"Si": "Si.pz-vbc.UPF"},
    SI8,
    {},
    "scf_not_converged",
)
CASES["fe2_beta095_oscillating"] = (
    cfg(system=FE_MAG, electrons={"mixing_beta": 0.95, "electron_maxstep": 10}),
    {"Fe": "Fe.pz-nd-rrkjus.UPF"},
    FE2,
    {},
    "scf_not_converged",
)
CASES["fe2_beta09_decreasing"] = (
    cfg(system=FE_MAG, electrons={"mixing_beta": 0.9, "electron_maxstep": 12}),
    {"Fe": "Fe.pz-nd-rrkjus.UPF"},
    FE2,
    {},
    "scf_not_converged",
)
# Oracle v2 classes (issue 14.4) that pw.x 6.7 produces on demand on this machine. The
# others (Broyden factorization, PPCG's QR failure, dexx is negative, pw.x 6.4's "some
# nodes have no k-points") are real pw.x text from aiida-quantumespresso's parser
# fixtures: see the README in each of those folders for the source and what was tried.
CASES["ni2_ppcg_zhegvd"] = (
    cfg(kspacing=None, kpts=[1, 1, 1], system=NI_SMEAR, electrons={"diagonalization": "ppcg"}),
    {"Ni": "Ni.pbe-nd-rrkjus.UPF"},
    NI2,
    {},
    "diagonalization",
)
CASES["si_more_bands_than_pws"] = (
    cfg(kspacing=None, kpts=[1, 1, 1], system={"ecutwfc": 4, "nbnd": 40}),
    {"Si": "Si.pz-vbc.UPF"},
    SI,
    {},
    "input_error",
)
_MPI = ("mpirun", *(("--allow-run-as-root",) if os.geteuid() == 0 else ()), "--oversubscribe")
CASES["h2_ndiag_too_few_bands"] = (
    cfg(kspacing=None, kpts=[1, 1, 1], system={"ecutwfc": 10}),
    {"H": "H.pz-vbc.UPF"},
    Atoms("H2", positions=[[0, 0, 0], [0.75, 0, 0]], cell=[3, 3, 0.9], pbc=True),
    {"argv": (*_MPI, "-np", "8", "pw.x")},
    "parallelization",
)
# Parallel options that do not fit (issue 14.4), on the 2-atom Si cell at one k-point:
# two MPI processes, pw.x 6.7's own checks.
for _name, _opts, _cls in (
    ("si_nk4_pools_out_of_range", ("-nk", "4"), "parallelization"),
    ("si_nb4_band_groups_out_of_range", ("-nb", "4"), "parallelization"),
    ("si_nt4_task_groups", ("-nt", "4"), "parallelization"),
    # more pools than k-points: an error in pw.x 6.4 (aiida's npools_too_high fixture),
    # a 'suboptimal parallelization' message in 6.7, which converges with an idle pool
    ("si_nk2_idle_pool_converged", ("-nk", "2"), "converged"),
):
    CASES[_name] = (
        cfg(kspacing=None, kpts=[1, 1, 1]),
        {"Si": "Si.pz-vbc.UPF"},
        SI,
        {"argv": (*_MPI, "-np", "2", "pw.x", *_opts)},
        _cls,
    )
# pw.x's own max_seconds stop (a few SCF steps in), not our hard timeout
CASES["ni2_max_seconds"][0]["input_data"]["control"]["max_seconds"] = 2.0
_ = {}


#: Cases pw.x is run on directly (inputs the oracle never writes: it runs ``scf`` only).
#: The Berry-phase ``G_par`` error (aiida's ``failed_g_par`` fixture) needs an ``nscf``
#: run with ``lberry`` after an scf: the k-point string along z is (0,0,0)..(0,0,1)
#: 2pi/a, not a reciprocal lattice vector of fcc Si.
_SI_PW = """&control
 calculation='{calc}', pseudo_dir='{pseudo}', outdir='.' {extra}
/
&system
 ibrav=2, celldm(1)=10.26, nat=2, ntyp=1, ecutwfc=12, nosym=.true.
/
&electrons
/
ATOMIC_SPECIES
Si 28.086 Si.pz-vbc.UPF
ATOMIC_POSITIONS crystal
Si 0 0 0
Si 0.25 0.25 0.25
K_POINTS {kpoints}
"""
DIRECT: dict[str, tuple[list[str], str]] = {
    "si_berry_g_par": (
        [
            _SI_PW.format(calc="scf", pseudo=P, extra="", kpoints="automatic\n2 2 2 0 0 0"),
            _SI_PW.format(
                calc="nscf",
                pseudo=P,
                extra=", lberry=.true., gdir=3, nppstr=3",
                kpoints="tpiba\n3\n0 0 0 1\n0 0 0.5 1\n0 0 1 1",
            ),
        ],
        "input_error",
    ),
}


def make_direct(name: str) -> str:
    """Run pw.x on each input in turn (same outdir); keep the last run's files."""
    from mlip_autopipec.oracle import diagnose
    from mlip_autopipec.process import run_process

    inputs, expected = DIRECT[name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for text in inputs:
            (work / "espresso.pwi").write_text(text)
            proc = run_process(
                ["pw.x", "-in", "espresso.pwi"],
                work,
                stdout=work / "espresso.pwo",
                stderr=work / "espresso.err",
                timeout=120,
            )
        out = HERE / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in ("espresso.pwi", "espresso.pwo", "espresso.err", "CRASH"):
            if (work / f).is_file():
                shutil.copy2(work / f, out / f)
        diag = diagnose(
            proc.returncode,
            (work / "espresso.pwo").read_text(errors="replace"),
            (work / "espresso.err").read_text(errors="replace"),
        )
        meta = {
            "returncode": proc.returncode,
            "timed_out": False,
            "expected_class": expected,
            "message": diag.message,
            "energy": None,
            "source": "pw.x 6.7 run directly (tests/data/make_pwx_outputs.py DIRECT)",
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return f"{name}: {diag.failure_class} ({diag.message}) expected {expected}"


def make(name: str) -> str:
    if name in DIRECT:
        return make_direct(name)
    oracle_cfg, pps, atoms, overrides, expected = CASES[name]
    oracle = EspressoOracle(oracle_cfg, {el: P / f for el, f in pps.items()})
    with tempfile.TemporaryDirectory() as tmp:
        req = oracle.next_request(name, atoms, [], Path(tmp))
        assert req is not None
        req = dataclasses.replace(req, **overrides)
        res = run_attempt(req)
        out = HERE / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in ("espresso.pwi", "espresso.pwo", "espresso.err", "CRASH"):
            if (req.attempt_dir / f).is_file():
                shutil.copy2(req.attempt_dir / f, out / f)
        meta = {
            "returncode": res.returncode,
            "timed_out": res.failure_class == "walltime" and "timeout" in res.message,
            "expected_class": expected,
            "message": res.message,
            "energy": res.energy,
        }
        if "argv" in overrides:
            meta["argv"] = list(overrides["argv"])
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return f"{name}: {res.failure_class} ({res.message}) expected {expected}"


if __name__ == "__main__":
    for case in sys.argv[1:] or [*CASES, *DIRECT]:
        print(make(case))
