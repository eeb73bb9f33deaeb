"""``autopipec report`` on real runs (real pw.x, real pacemaker) and in a real browser.

A tiny run is built once per session: six two-atom Si cells whose first SCF is cut at three
iterations so that every one needs the recipe's ladder step (a real rescue), plus one cell
with atoms 0.3 Å apart that preflight quarantines; then a 5-epoch ACE fit. Each test works on
its own copy of the run directory.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from ase import Atoms
from ase.io import write

from mlip_autopipec.cli import main
from mlip_autopipec.errors import UsageError
from mlip_autopipec.lifecycle.status import status_json
from mlip_autopipec.lifecycle.store import Store
from mlip_autopipec.report import FIGURES, write_report
from mlip_autopipec.trainer.calculator import load_fit
from mlip_autopipec.trainer.fit import resolve_command

sys.path.insert(0, str(Path(__file__).parent))

import report_screenshot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
#: A note with markup in it: the page must show it as text.
NOTE = "more SCF iterations <from the saved density> & go"

RECIPE = """\
name: report-tiny
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: {strains}}}
{rattle}{extra}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: 0.3
  input_data:
    system: {{ecutwfc: 12}}
    electrons: {{electron_maxstep: 3}}
  retry:
    ladders:
      scf_not_converged:
        - set: {{electrons.electron_maxstep: 50}}
          restart: charge_density
          note: "{note}"
trainer:
  max_epochs: 5
  max_basis_size: 5
  # Two test cells: pacemaker 0.4's own validation plots crash on a single 2-atom test cell.
  test_fraction: 0.34
execution:
  workers: 2
"""


def _pacemaker_available() -> bool:
    return Path(resolve_command("pacemaker")[0]).is_file() or bool(shutil.which("pacemaker"))


needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or Si.pz-vbc.UPF missing"
)
needs_pacemaker = pytest.mark.skipif(not _pacemaker_available(), reason="pacemaker missing")
needs_chromium = pytest.mark.skipif(
    report_screenshot.find_chromium() is None,
    reason="no headless chromium (Debian: apt-get install chromium; CI: bootstrap.sh)",
)


def _make_recipe(folder: Path, *, strains: int, rattle: bool, overlapping: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    extra = ""
    if overlapping:
        close = Atoms("Si2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True)
        write(folder / "close.extxyz", close)
        extra = "  - file: close.extxyz\n"
    rattle_line = "    rattle: {stdev: 0.05, count: 1, seed: 0}\n" if rattle else ""
    text = RECIPE.format(strains=strains, rattle=rattle_line, extra=extra.rstrip("\n"), note=NOTE)
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: 6 labelled after a ladder rescue + fitted, 1 quarantined."""
    if shutil.which("pw.x") is None or not PSEUDO.is_file():
        pytest.skip("pw.x or Si.pz-vbc.UPF missing")
    if not _pacemaker_available():
        pytest.skip("pacemaker missing")
    folder = tmp_path_factory.mktemp("report-run")
    recipe = _make_recipe(folder, strains=3, rattle=True, overlapping=True)
    run_dir = folder / "run"
    # 1: finished, but one structure is quarantined.
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 1
    return run_dir


@pytest.fixture(scope="session")
def labels_only_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few cells labelled with ``--stage label``: no potential."""
    if shutil.which("pw.x") is None or not PSEUDO.is_file():
        pytest.skip("pw.x or Si.pz-vbc.UPF missing")
    folder = tmp_path_factory.mktemp("report-labels")
    recipe = _make_recipe(folder, strains=2, rattle=False, overlapping=False)
    run_dir = folder / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--stage", "label"]) == 0
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run_dir, dest, symlinks=True)
    shutil.rmtree(dest / "report", ignore_errors=True)
    return dest


def _embedded_pngs(index: Path) -> list[bytes]:
    text = index.read_text()
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    ]


def _strict(token: str) -> None:
    raise AssertionError(f"report.json is not strict JSON: {token}")


def _load_report(run_dir: Path) -> dict[str, Any]:
    text = (run_dir / "report" / "report.json").read_text()
    data: dict[str, Any] = json.loads(text, parse_constant=_strict)
    return data


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_run_writes_report(tiny_run: Path) -> None:
    """``autopipec run`` itself ends with the report."""
    assert (tiny_run / "report" / "index.html").is_file()
    assert (tiny_run / "report" / "report.json").is_file()


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_report_numbers_equal_the_store(tiny_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(tiny_run, tmp_path)
    index = write_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    data = _load_report(run_dir)
    status = status_json(run_dir)

    assert data["counts"] == status["counts"]
    assert data["counts"]["trained"] == 6 and data["counts"]["failed"] == 1
    assert data["status_potential"] == status["potential"]
    with Store.open(run_dir, create=False) as store:
        rows = store.structure_rows()
        latest = store.latest_potential()
        total_attempts = store.total_attempts()
        attempts = {r["id"]: store.attempts_of(r["id"]) for r in rows}
    assert latest is not None
    assert data["potential"]["metrics"] == latest["metrics"]
    assert (data["potential"]["n_train"], data["potential"]["n_test"]) == (4, 2)

    by_id = {s["id"]: s for s in data["structures"]}
    assert sorted(by_id) == [r["id"] for r in rows]
    for r in rows:
        s = by_id[r["id"]]
        assert (s["state"], s["attempts"], s["source"]) == (r["state"], r["attempts"], r["source"])
        if r["energy_ev"] is None:
            assert s["energy_ev"] is None and s["energy_ev_per_atom"] is None
        else:
            assert s["energy_ev"] == r["energy_ev"]
            assert s["energy_ev_per_atom"] == pytest.approx(r["energy_ev"] / r["natoms"])
    (failed,) = [s for s in data["structures"] if s["state"] == "failed"]
    assert failed["failure_class"] == "overlapping_atoms"
    assert "0.300 Å apart" in failed["failure_message"]

    # Parity data: the fit's own split, and RMSEs equal to what the fit recorded.
    fit = load_fit(run_dir)
    parity = data["parity"]
    assert sorted(parity["train"]["ids"]) == sorted(fit.train_ids)
    assert sorted(parity["test"]["ids"]) == sorted(fit.test_ids)
    for split in ("train", "test"):
        p = parity[split]
        assert len(p["forces_dft_ev_per_ang"]) == 3 * sum(p["natoms"])
        assert p["rmse_energy_mev_per_atom"] == pytest.approx(
            latest["metrics"]["rmse_energy_mev_per_atom"][split], rel=1e-6
        )
        assert p["rmse_forces_mev_per_ang"] == pytest.approx(
            latest["metrics"]["rmse_forces_mev_per_ang"][split], rel=1e-6
        )
        # DFT side of the parity plot = the stored labels, per atom.
        for sid, e in zip(p["ids"], p["energy_dft_ev_per_atom"], strict=True):
            assert e == pytest.approx(by_id[int(sid)]["energy_ev_per_atom"], abs=1e-9)

    # Ladder statistics from the attempts table.
    ladder = data["ladder"]
    assert ladder["total_attempts"] == total_attempts == 12
    assert ladder["attempts_per_structure"] == {"0": 1, "2": 6}
    assert ladder["quarantine_by_class"] == {"overlapping_atoms": 1}
    assert ladder["rescued_by_step"] == {NOTE: 6}
    assert ladder["failure_classes_met"] == {"scf_not_converged": 6}
    assert sorted(r["id"] for r in ladder["rescued"]) == sorted(
        sid for sid, a in attempts.items() if len(a) > 1
    )
    for r in ladder["rescued"]:
        assert r["failure_classes"] == ["scf_not_converged"]
        assert r["params_diff"]["electrons.electron_maxstep"] == 50

    # Every figure drawn, a PNG on disk, and embedded byte for byte in the page.
    assert set(data["figures"]) == set(FIGURES)
    pngs = []
    for name, fig in data["figures"].items():
        assert fig["file"] == name and fig["reason"] is None
        raw = (run_dir / "report" / name).read_bytes()
        assert raw.startswith(PNG_MAGIC)
        pngs.append(raw)
    assert sorted(_embedded_pngs(index)) == sorted(pngs)

    # Text from the run is escaped, never markup.
    text = index.read_text()
    assert "&lt;from the saved density&gt; &amp; go" in text
    assert "<from the saved density>" not in text
    # No stray temporary files from the atomic writes.
    assert not [p for p in (run_dir / "report").iterdir() if p.name.endswith(".tmp")]


@needs_pwx
@pytest.mark.pwx
def test_labels_only_run_still_reports(labels_only_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = _copy(labels_only_run, tmp_path)
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report" / "index.html")
    data = _load_report(run_dir)
    assert data["potential"] is None and data["parity"] == {}
    assert data["counts"] == status_json(run_dir)["counts"]
    assert data["counts"]["labelled"] == len(data["structures"]) >= 2
    assert "no potential has been fitted yet" in data["parity_unavailable"]
    for name in ("energy_parity.png", "force_parity.png", "error_histograms.png"):
        assert data["figures"][name]["file"] is None
        assert "no potential has been fitted yet" in data["figures"][name]["reason"]
        assert not (run_dir / "report" / name).exists()
    assert (run_dir / "report" / "attempts.png").read_bytes().startswith(PNG_MAGIC)
    text = (run_dir / "report" / "index.html").read_text()
    assert "Not drawn: no potential has been fitted yet" in text
    assert "Not drawn: no structure was quarantined." in text
    # The same recipe cuts the first SCF short, so the ladder figures exist without a fit.
    drawn = sorted(n for n, f in data["figures"].items() if f["file"])
    assert drawn == ["attempts.png", "rescues.png"]
    assert len(_embedded_pngs(run_dir / "report" / "index.html")) == len(drawn)


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_fit_without_prediction_tables_still_reports(tiny_run: Path, tmp_path: Path) -> None:
    """A potential whose fit folder lost pacemaker's predictions: parity figures explain why."""
    run_dir = _copy(tiny_run, tmp_path)
    fit = load_fit(run_dir)
    for name in ("train_pred.pckl.gzip", "test_pred.pckl.gzip"):
        (fit.workdir / name).unlink()
    write_report(run_dir)
    data = _load_report(run_dir)
    assert data["potential"] is not None and data["parity"] == {}
    reason = data["figures"]["energy_parity.png"]["reason"]
    assert "no pacemaker prediction tables" in reason and str(fit.workdir) in reason
    assert data["figures"]["quarantine.png"]["file"] == "quarantine.png"
    assert html.escape(reason) in (run_dir / "report" / "index.html").read_text()


def test_missing_or_non_run_directory_exits_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    assert f"{missing}: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "Traceback" not in err
    with pytest.raises(UsageError):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report").exists()


@needs_chromium
@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_report_opens_in_headless_chromium(tiny_run: Path, tmp_path: Path) -> None:
    """Every figure decodes in a real browser, from the file alone (offline)."""
    run_dir = _copy(tiny_run, tmp_path)
    index = write_report(run_dir)
    # The page must not need its PNG neighbours: open a lone copy of it.
    lone = tmp_path / "lone" / "index.html"
    lone.parent.mkdir()
    shutil.copy(index, lone)
    shot = report_screenshot.screenshot(lone, tmp_path / "report.png")
    assert shot.read_bytes().startswith(PNG_MAGIC)
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one
    assert report_screenshot.loaded_images(lone) == (len(FIGURES), len(FIGURES))

    # The check can fail: a corrupted image is seen as not loaded.
    broken = tmp_path / "broken.html"
    broken.write_text(lone.read_text().replace("base64,iVBOR", "base64,XXXXX", 1))
    assert report_screenshot.loaded_images(broken) == (len(FIGURES) - 1, len(FIGURES))


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_report_answers_the_first_questions(tiny_run: Path, tmp_path: Path) -> None:
    """DFT settings, learning curve, E-V, grades, per-structure errors, timings, caveats."""
    import numpy as np

    from mlip_autopipec.trainer.calculator import load_calculator

    run_dir = _copy(tiny_run, tmp_path)
    index = write_report(run_dir)
    data = _load_report(run_dir)
    fit = load_fit(run_dir)
    with Store.open(run_dir, create=False) as store:
        rows = {r["id"]: r for r in store.structure_rows()}
        attempts = [a for sid in rows for a in store.attempts_of(sid)]
        labelled = {a.info["structure_id"]: a for a in store.labelled_atoms()}

    dft = data["dft"]
    assert (dft["ecutwfc"], dft["kspacing"]) == (12, 0.3)
    assert dft["pseudopotentials"] == {"Si": "Si.pz-vbc.UPF"}
    assert list(dft["pw_versions"].values()) == [6] and dft["kgrids"] == {"Si2 2x2x2": 6}

    curve = data["learning_curve"]
    assert curve["source"] and curve["iterations"][0] == 0 and len(curve["loss"]) >= 5
    assert all(v > 0 for v in curve["loss"]) and curve["converged"] is False  # 5 epochs

    (ev,) = data["ev_curves"]
    assert ev["family"] == "bulk[0] Si diamond" and ev["strains"] == [-0.02, 0.0, 0.02]
    calc = load_calculator(run_dir)
    for strain, e_dft, e_ace in zip(
        ev["strains"], ev["dft_ev_per_atom"], ev["ace_ev_per_atom"], strict=True
    ):
        (sid,) = [
            s for s, r in rows.items() if r["source"] == f"{ev['family']} strain={strain:+.3f}"
        ]
        assert e_dft == pytest.approx(rows[sid]["energy_ev"] / 2, abs=1e-9)
        atoms = labelled[sid].copy()
        atoms.calc = calc
        assert e_ace == pytest.approx(atoms.get_potential_energy() / 2, abs=1e-9)
    assert len(ev["dense_ace_ev_per_atom"]) == 25
    assert ev["dense_volume_per_atom"][0] == pytest.approx(ev["volume_per_atom"][0])

    gamma = data["gamma"]
    assert sorted(gamma["ids"]) == sorted(int(i) for i in (*fit.train_ids, *fit.test_ids))
    assert all(g >= 0 for g in gamma["max_gamma"])

    # per-structure force RMSEs combine to the split's RMSE
    for split in ("train", "test"):
        p = data["parity"][split]
        per = np.array(p["force_rmse_mev_per_ang_per_structure"])
        n = np.array(p["natoms"])
        assert np.sqrt(np.sum(n * per**2) / n.sum()) == pytest.approx(p["rmse_forces_mev_per_ang"])

    timings = data["timings"]
    assert timings["pwx_attempts"] == len(attempts) == 12
    assert timings["pwx_total_s"] == pytest.approx(sum(a["wall_time"] for a in attempts))
    assert timings["fit_s"] == pytest.approx(fit.wall_time)
    assert any("only 2 structures" in c for c in data["caveats"])

    text = index.read_text()
    for heading in ("DFT settings and provenance", "Energy-volume curves", "Extrapolation",
                    "Magnetic moments", "Timings"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in text
    assert "The test set has only 2 structures" in text
    assert "No magnetic moments recorded" in text  # Si, spin-unpolarised
    for name in ("learning_curve.png", "ev_curves.png", "structure_errors.png",
                 "gamma_histogram.png"):  # fmt: skip
        assert f'alt="{html.escape(FIGURES[name])}"' in text


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
def test_old_run_directory_without_the_new_data_still_reports(
    tiny_run: Path, tmp_path: Path
) -> None:
    """No log, no active set, no recipe.json: each new section says why it is empty."""
    run_dir = _copy(tiny_run, tmp_path)
    fit = load_fit(run_dir)
    fit.log.unlink()
    # a fit from before the trainer recorded its loss history in potential.json
    record_path = fit.workdir / "potential.json"
    record = json.loads(record_path.read_text())
    record.pop("loss_history", None)
    record_path.write_text(json.dumps(record))
    assert fit.asi is not None
    fit.asi.unlink()
    (run_dir / "recipe.json").unlink()
    write_report(run_dir)
    data = _load_report(run_dir)
    figures = data["figures"]
    assert "no loss history" in figures["learning_curve.png"]["reason"]
    assert "no active set" in figures["gamma_histogram.png"]["reason"]
    assert figures["ev_curves.png"]["file"] == "ev_curves.png"  # needs only labels + potential
    assert data["dft"]["pseudopotentials"] == {} and data["dft"]["pw_versions"]
    text = (run_dir / "report" / "index.html").read_text()
    assert "Not drawn: the fit has no active set" in text
