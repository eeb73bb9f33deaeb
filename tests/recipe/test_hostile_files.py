"""Structure files a recipe names: never echoed, never read unbounded, never blocking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlip_autopipec.recipe import check_recipe, load_recipe

SI_PP = "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
pytestmark = pytest.mark.skipif(
    not (Path("/usr/share/espresso/pseudo") / SI_PP).is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)
MARK = "SECRETMARK7731"
FORMATS = ["extxyz", "xyz", "cif", "vasp", "espresso-in", "espresso-out", "lammps-data", None]
_CONTENTS = {
    "passwd": f"root:x:0:0:{MARK}:/root:/bin/bash\ndaemon:x:1:1:{MARK}:/usr/sbin:/bin/sh\n",
    "environ": f"HOME=/root\0TOKEN={MARK}\0PATH=/bin\0",
    "bad.extxyz": (
        f'2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nSi 0 0 0\n{MARK} 1 x 3\n'
    ),
    "bad.cif": f"data_{MARK}\n_cell_length_a {MARK}\nloop_\n_atom_site_label\n{MARK}\n",
    "POSCAR": f"{MARK}\n1.0\n5 0 0\n0 5 0\n0 0 {MARK}\nSi\n1\nDirect\n0 0 0\n",
    "binary.bin": "\x00\x01" + MARK + "\xff\xfe" * 10,
}


def _recipe(tmp_path: Path, entry: str, extra: str = "") -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"structures:\n  - {entry}\noracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n{extra}")
    return p


def _validate(recipe: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", "validate", str(recipe)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("name", sorted(_CONTENTS))
@pytest.mark.parametrize("fmt", FORMATS, ids=[str(f) for f in FORMATS])
def test_parse_errors_never_show_the_file(tmp_path: Path, name: str, fmt: str | None) -> None:
    (tmp_path / name).write_bytes(_CONTENTS[name].encode("latin-1"))
    entry = f"{{file: {name}, format: {fmt or 'null'}}}"
    diags = check_recipe(_recipe(tmp_path, entry))
    text = "\n".join(str(d) for d in diags)
    assert MARK not in text
    errors = [d for d in diags if d.severity == "error"]
    assert errors and all(d.line == 2 for d in errors), text
    assert all(name in d.message or "frame" in d.message for d in errors), text


def test_system_files_through_the_cli(tmp_path: Path) -> None:
    for target in ("/etc/passwd", "/proc/self/environ"):
        for fmt in ("extxyz", "null"):
            p = _recipe(tmp_path, f"{{file: {target}, format: {fmt}}}")
            r = _validate(p, env={"AUTOPIPEC_TEST_SECRET": MARK})
            assert r.returncode == 2, r.stderr
            assert MARK not in r.stdout + r.stderr
            assert "Traceback" not in r.stderr
            if target == "/etc/passwd":
                assert "root:" not in r.stdout + r.stderr
            assert f"{p}:2:" in r.stderr


def test_recipe_that_is_a_system_file_is_not_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{MARK}\n")
    r = _validate(secret)
    assert r.returncode == 2 and MARK not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda d: Path("/dev/zero"), "is a device, not a regular file"),
        (lambda d: Path("/dev/urandom"), "is a device, not a regular file"),
        (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "is a FIFO, not a regular file"),
        (lambda d: (d / "dir").mkdir() or d / "dir", "is a directory"),
        (lambda d: d / "nothing.xyz", "not found"),
    ],
    ids=["dev-zero", "dev-urandom", "fifo", "directory", "missing"],
)
def test_special_files_are_refused_without_reading(tmp_path: Path, make, text: str) -> None:
    target = make(tmp_path)
    p = _recipe(tmp_path, f"{{file: {target}, format: extxyz}}")
    r = _validate(p)  # a read of the FIFO would block until the timeout
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}:2:" in r.stderr and text in r.stderr, r.stderr


def test_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.extxyz").symlink_to("/dev/zero")
    errors = [str(d) for d in check_recipe(_recipe(tmp_path, "{file: zero.extxyz}"))]
    assert any("is a device" in e for e in errors), errors


def test_file_size_bound_and_how_to_raise_it(tmp_path: Path) -> None:
    big = tmp_path / "big.extxyz"
    with big.open("wb") as fh:  # sparse: no disk space used, never read
        fh.truncate(250_000_000)
    errors = [str(d) for d in check_recipe(_recipe(tmp_path, "{file: big.extxyz}"))]
    assert any("250.0 MB, above limits.max_file_mb (200 MB)" in e for e in errors), errors
    small = tmp_path / "si.extxyz"
    small.write_text(
        '2\nLattice="0 2.7 2.7 2.7 0 2.7 2.7 2.7 0" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
        "Si 0 0 0\nSi 1.36 1.36 1.36\n"
    )
    p = _recipe(tmp_path, "{file: si.extxyz}", "limits: {max_file_mb: 0.0001}\n")
    assert any("limits.max_file_mb (0.0001 MB)" in d.message for d in check_recipe(p))
    p = _recipe(tmp_path, "{file: si.extxyz}", "limits: {max_file_mb: 1}\n")
    assert load_recipe(p).data["limits"] == {
        "max_file_mb": 1,
        "max_atoms": 5000,
        "max_total_atoms": 1000000,
    }


def test_huge_supercell_is_refused_before_it_is_built(tmp_path: Path) -> None:
    entry = (
        "{bulk: {element: Si, crystal: diamond, a: 5.43, "
        "supercell: [[100, 0, 0], [0, 100, 0], [0, 0, 100]]}}"
    )
    p = _recipe(tmp_path, entry)
    r = _validate(p)  # building 2 million atoms would take minutes and gigabytes
    assert r.returncode == 2
    assert "this cell has 2000000 atoms, above limits.max_atoms (5000)" in r.stderr
    assert f"{p}:2:" in r.stderr
    p = _recipe(tmp_path, entry.replace("100", "400"))
    assert _validate(p).returncode == 2  # the schema bounds the matrix entries


def test_atom_bounds_can_be_raised(tmp_path: Path) -> None:
    entry = "{bulk: {element: Si, crystal: diamond, a: 5.43, cubic: true, supercell: [10, 10, 10]}}"
    errors = [d.message for d in check_recipe(_recipe(tmp_path, entry)) if d.severity == "error"]
    assert any("8000 atoms, above limits.max_atoms (5000)" in m for m in errors), errors
    p = _recipe(tmp_path, entry, "limits: {max_atoms: 8000}\n")
    assert [d for d in check_recipe(p) if d.severity == "error"] == []


def test_total_atoms_bound(tmp_path: Path) -> None:
    entry = (
        "{bulk: {element: Si, crystal: diamond, a: 5.43}, "
        "strain: {min: -0.01, max: 0.01, count: 1000}, rattle: {stdev: 0.01, count: 1000}}"
    )
    p = _recipe(tmp_path, entry)
    errors = [str(d) for d in check_recipe(p) if d.severity == "error"]
    assert any(
        e.startswith(f"{p}:1:1: error: the structures have 2004002 atoms in all")
        and "limits.max_total_atoms (1000000)" in e
        for e in errors
    ), errors


def test_frame_atoms_bound(tmp_path: Path) -> None:
    f = tmp_path / "si.extxyz"
    f.write_text(
        '2\nLattice="0 2.7 2.7 2.7 0 2.7 2.7 2.7 0" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
        "Si 0 0 0\nSi 1.36 1.36 1.36\n"
    )
    p = _recipe(tmp_path, "{file: si.extxyz}", "limits: {max_atoms: 1}\n")
    errors = [d.message for d in check_recipe(p) if d.severity == "error"]
    assert any(
        "frame 0 of 'si.extxyz' has 2 atoms, above limits.max_atoms (1)" in m for m in errors
    )


def test_a_fifo_as_the_recipe_never_blocks(tmp_path: Path) -> None:
    """validate on a FIFO without a writer: 'empty recipe' at once, not a hang in open();
    with a writer (what ``<(cat recipe)`` is) it validates what the writer sends."""
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    r = subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", "validate", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2 and "empty recipe" in r.stderr and "Traceback" not in r.stderr
    shipped = Path(__file__).resolve().parents[2] / "recipes" / "si_quickstart.yaml"
    r = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m mlip_autopipec validate <(cat "{shipped}")'],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ok")
