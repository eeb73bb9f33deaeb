"""The CLI's exit codes, end to end, with the real pw.x where a run is involved.

0 done, 1 finished with failures, 2 bad recipe/arguments/locked, 130/143 interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from cli_runner import run_cli
from mlip_autopipec.cli import main
from mlip_autopipec.lifecycle.lock import RunLock

needs_pwx = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed")

COMMANDS = ["validate", "schema", "run", "status", "report", "export"]

# Cheap but real: LDA norm-conserving Si at 12 Ry, a 2x2x2 grid; a fraction of a second each.
SMALL_RECIPE = """\
name: cli-small
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: {count}}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: 0.4
  input_data:
    system: {{ecutwfc: 12}}
execution:
  workers: 1
"""


def _recipe(tmp_path: Path, count: int = 3, extra: str = "") -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_RECIPE.format(count=count) + extra)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: autopipec " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["run"], ["status"], ["export", "x", "--format", "csv"]],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_zero_workers_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(_recipe(tmp_path)), "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_run_with_a_bad_recipe_exits_2_with_located_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL_RECIPE.format(count=2).replace("kspacing: 0.4", "kspacing: fast"))
    assert main(["run", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:7:13: error:" in err
    assert not (tmp_path / "run").exists()


def test_status_of_a_missing_run_dir_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2


@needs_pwx
def test_locked_run_directory_exits_2(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "run", str(recipe), "--run-dir", str(run_dir), "--stage", "label", cwd=tmp_path
        ).returncode
        == 0
    )
    with RunLock(run_dir):
        proc = run_cli("run", str(recipe), "--run-dir", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"locked by PID {os.getpid()}" in proc.stderr


@needs_pwx
def test_quarantined_structure_gives_exit_1_and_keeps_the_rest(tmp_path: Path) -> None:
    good = bulk("Si", "diamond", a=5.43)
    overlapping = good.copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.2, 0.0, 0.0]
    write(tmp_path / "frames.extxyz", [good, overlapping])
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(
        SMALL_RECIPE.format(count=2).replace(
            "structures:\n", "structures:\n  - file: frames.extxyz\n"
        )
    )
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(recipe), "--run-dir", str(run_dir), "--stage", "label", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    status = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    failed = [s for s in status["structures"] if s["state"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["failure"].startswith("overlapping_atoms: atoms 0 (Si) and 1 (Si) are 0.200")
    assert failed[0]["attempts"] == 0  # preflight: pw.x never ran on it
    assert status["counts"]["labelled"] == 3


def _wait_for_labels(run_dir: Path, n: int, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if (run_dir / "autopipec.sqlite").is_file():
            status = run_cli("status", str(run_dir), "--json", cwd=run_dir.parent)
            if status.returncode == 0 and json.loads(status.stdout)["counts"]["labelled"] >= n:
                return
        time.sleep(0.2)
    raise AssertionError(f"no {n} labels within {timeout} s")


@needs_pwx
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_exits_128_plus_signal_and_resumes(
    tmp_path: Path, signum: int, code: int
) -> None:
    recipe = _recipe(tmp_path, count=8)
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "mlip_autopipec",
        "run",
        str(recipe),
        "--run-dir",
        str(run_dir),
        "--stage",
        "label",
    ]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_for_labels(run_dir, 2, proc, timeout=120)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    interrupted = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert interrupted["counts"]["running"] == 0 and interrupted["counts"]["scf_retry"] == 0
    done_before = {
        s["id"]: s["energy_ev"] for s in interrupted["structures"] if s["state"] == "labelled"
    }
    assert 2 <= len(done_before) < 9

    resumed = run_cli(
        "run", str(recipe), "--run-dir", str(run_dir), "--stage", "label", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert final["counts"]["labelled"] == len(final["structures"]) == 9  # base cell + 8 strains
    energies = {s["id"]: s["energy_ev"] for s in final["structures"]}
    # finished labels were kept as they were, not recomputed (one attempt each)
    for sid, energy in done_before.items():
        assert energies[sid] == energy
    assert all(s["attempts"] == 1 for s in final["structures"] if s["id"] in done_before)


def test_dry_run_writes_every_first_input_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, count=3)
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # strains -0.02, 0, +0.02: the base cell is the 0 strain, not a fourth structure
    assert "nothing was run" in out and "structures: 3 (6 atoms)" in out
    inputs = sorted((run_dir / "dry-run").glob("structure-*/attempt-01/espresso.pwi"))
    assert len(inputs) == 3
    assert "ecutwfc" in inputs[0].read_text() and "K_POINTS automatic" in inputs[0].read_text()
    assert not list(run_dir.rglob("espresso.pwo"))
    assert not (run_dir / "autopipec.sqlite").exists()
    summary = json.loads((run_dir / "dry-run" / "summary.json").read_text())
    assert summary["estimated_pwx_calls"]["first_attempts"] == 3
    assert (run_dir / "dry-run" / "trainer" / "input.yaml").is_file()


@needs_pwx
def test_export_gives_the_stored_labels(tmp_path: Path) -> None:
    import pandas as pd
    from ase.io import read

    recipe = _recipe(tmp_path, count=3)
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "run", str(recipe), "--run-dir", str(run_dir), "--stage", "label", cwd=tmp_path
        ).returncode
        == 0
    )
    status = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    energies = sorted(s["energy_ev"] for s in status["structures"])

    xyz = run_cli("export", str(run_dir), "--format", "extxyz", cwd=tmp_path)
    assert xyz.returncode == 0, xyz.stderr
    frames = read(xyz.stdout.strip(), index=":")
    assert sorted(f.get_potential_energy() for f in frames) == pytest.approx(energies, abs=1e-9)
    assert all(f.get_forces().shape == (2, 3) for f in frames)

    pkl = run_cli(
        "export",
        str(run_dir),
        "--format",
        "pacemaker",
        "-o",
        str(tmp_path / "d.pkl.gz"),
        cwd=tmp_path,
    )
    assert pkl.returncode == 0, pkl.stderr
    df = pd.read_pickle(tmp_path / "d.pkl.gz", compression="gzip")
    assert sorted(df["energy"]) == pytest.approx(energies, abs=1e-9)
    assert {"ase_atoms", "energy", "forces", "energy_corrected"} <= set(df.columns)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("export", str(empty), cwd=tmp_path).returncode == 2


@needs_pwx
def test_internal_error_requeues_what_was_in_flight_and_exits_3(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, count=4)
    run_dir = tmp_path / "run"
    fake = Path(__file__).parent / "fakes" / "buggy_cli.py"
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label", "--workers", "2"]
    # the second next_request raises while the first structure's attempt is in flight
    proc = subprocess.run(
        [sys.executable, str(fake), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AUTOPIPEC_BUG_AT": "2"},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "internal error" in line]
    log = run_dir / "autopipec.log"
    assert lines == [
        "autopipec: internal error: RuntimeError: injected bug second line (this is a bug; "
        f"please report it with {log}; structures in flight were requeued: rerun to resume)"
    ]
    assert "Traceback" in log.read_text() and "injected bug" in log.read_text()
    status = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert status["counts"]["running"] == status["counts"]["scf_retry"] == 0
    assert status["counts"]["pending"] == 5
    with sqlite3.connect(run_dir / "autopipec.sqlite") as conn:
        notes = conn.execute(
            "SELECT structure_id, note FROM transitions WHERE trigger = 'requeue'"
        ).fetchall()
    assert notes == [(1, "internal error: RuntimeError")]

    resumed = run_cli(*argv, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert final["counts"]["labelled"] == 5
    assert all(s["attempts"] == 1 for s in final["structures"])


@needs_pwx
def test_a_pseudopotential_that_vanishes_mid_run_stops_it_without_quarantine(
    tmp_path: Path,
) -> None:
    pseudo_dir = tmp_path / "pseudo"
    pseudo_dir.mkdir()
    shutil.copy("/usr/share/espresso/pseudo/Si.pz-vbc.UPF", pseudo_dir)
    fake = Path(__file__).parent / "fakes" / "pw_lose_pseudo.py"
    command = json.dumps([sys.executable, str(fake), str(pseudo_dir), "3", "pw.x"])
    recipe = _recipe(tmp_path, count=4)
    recipe.write_text(
        recipe.read_text().replace(
            "  kspacing: 0.4\n",
            f"  kspacing: 0.4\n  pseudo_dir: {pseudo_dir}\n  command: {command}\n",
        )
    )
    run_dir = tmp_path / "run"
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label"]
    proc = run_cli(*argv, cwd=tmp_path)  # the third pw.x call finds no pseudopotential
    assert proc.returncode == 2, proc.stderr
    assert f"{pseudo_dir / 'Si.pz-vbc.UPF'}: existed when the run started and is gone" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    status = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert status["counts"]["failed"] == 0 and status["counts"]["running"] == 0
    done = {s["id"]: s["energy_ev"] for s in status["structures"] if s["state"] == "labelled"}
    assert len(done) == 2

    pseudo_dir.mkdir()
    shutil.copy("/usr/share/espresso/pseudo/Si.pz-vbc.UPF", pseudo_dir)
    resumed = run_cli(*argv, "--retry-failed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "--retry-failed: 0 quarantined structure(s) back to pending" in resumed.stderr
    final = json.loads(run_cli("status", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert final["counts"]["labelled"] == 5
    assert all(
        s["energy_ev"] == done[s["id"]] and s["attempts"] == 1
        for s in final["structures"]
        if s["id"] in done
    )
