"""The namelist whitelist against the real pw.x: every variable it lets through, written with
a value of its type and index, is read by pw.x's namelist reader (no 'bad line in namelist');
every variable it refuses as QE 6.8+ is refused by pw.x. Skips without pw.x."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlip_autopipec.recipe.namelists import NEWER_THAN_67, SECTIONS, VARIABLES, Var

PSEUDO = Path("/usr/share/espresso/pseudo")
pytestmark = pytest.mark.skipif(
    shutil.which("pw.x") is None or not (PSEUDO / "Si.pz-vbc.UPF").is_file(),
    reason="pw.x or the Debian pseudopotentials are not installed",
)
_SAMPLE: dict[type, str] = {bool: ".true.", int: "1", float: "0.5", str: "'none'"}
_REFUSED = ("bad line in namelist", "reading namelist")


def _key(name: str, var: Var) -> str:
    return name + (f"({','.join('1' * len(var.dims))})" if var.dims else "")


def _read_by_pwx(tmp: Path, section: str, assignment: str) -> bool:
    """Whether pw.x's namelist reader accepts ``assignment`` in ``section``."""
    lines: dict[str, list[str]] = {s: [] for s in SECTIONS}
    # &IONS and &CELL are only read for calculations that move atoms and cell
    lines["control"].append("calculation='vc-relax'" if section in ("ions", "cell") else "")
    lines["system"] += ["ibrav=1", "celldm(1)=10.0", "nat=1", "ntyp=1", "ecutwfc=20"]
    lines[section].append(assignment)
    text = "".join(f"&{s}\n" + "\n".join(lines[s]) + "\n/\n" for s in SECTIONS)
    text += "ATOMIC_SPECIES\nSi 28.0 Si.pz-vbc.UPF\nATOMIC_POSITIONS crystal\nSi 0 0 0\n"
    text += "K_POINTS gamma\n"
    (tmp / "in").write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ESPRESSO_PSEUDO": str(PSEUDO)}
    out = subprocess.run(
        ["pw.x", "-in", "in"], cwd=tmp, capture_output=True, text=True, timeout=120, env=env
    ).stdout
    return not any(marker in out for marker in _REFUSED)


def test_pwx_refuses_an_unknown_variable(tmp_path: Path) -> None:
    assert not _read_by_pwx(tmp_path, "system", "no_such_variable=1")
    assert _read_by_pwx(tmp_path, "electrons", "mixing_beta=0.3")


@pytest.mark.long
def test_every_whitelisted_variable_is_read_by_pwx(tmp_path: Path) -> None:
    refused = [
        f"{section}.{name}"
        for section in SECTIONS
        for name, var in VARIABLES[section].items()
        if not _read_by_pwx(tmp_path, section, f"{_key(name, var)}={_SAMPLE[var.type]}")
    ]
    assert refused == []


@pytest.mark.long
def test_variables_refused_as_newer_are_unknown_to_pwx(tmp_path: Path) -> None:
    read = [
        f"{section}.{name}"
        for section in SECTIONS
        for name in sorted(NEWER_THAN_67[section])
        if _read_by_pwx(tmp_path, section, f"{name}{'(1,1)' if name == 'hubbard_occ' else ''}=1")
    ]
    assert read == []
