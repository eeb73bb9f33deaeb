"""Good recipes load with every default filled in; semantic checks that need real files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from mlip_autopipec.cli import main
from mlip_autopipec.errors import RecipeError
from mlip_autopipec.recipe import check_recipe, load_recipe, resolve_pseudopotentials

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "si_quickstart.yaml"
DATA = Path(__file__).resolve().parent / "data"
SI_PP = "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
SYSTEM_PSEUDO = Path("/usr/share/espresso/pseudo")
needs_system_pseudo = pytest.mark.skipif(
    not (SYSTEM_PSEUDO / SI_PP).is_file(),
    reason="Debian quantum-espresso-data pseudopotentials not installed",
)


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@needs_system_pseudo
def test_quickstart_validates(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["validate", "recipes/si_quickstart.yaml"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == "recipes/si_quickstart.yaml: ok"
    assert out.err == ""


@needs_system_pseudo
def test_quickstart_defaults() -> None:
    r = load_recipe(QUICKSTART)
    assert r.name == "si-quickstart"
    assert r.path == QUICKSTART and r.base_dir == QUICKSTART.parent
    o = r.oracle
    assert o["engine"] == "espresso" and o["command"] == "pw.x"
    assert o["kspacing"] == 0.15 and "kpts" not in o
    assert o["input_data"]["system"] == {"ecutwfc": 30, "ecutrho": 240.0}
    assert o["input_data"]["electrons"]["conv_thr"] == 1e-8
    assert o["input_data"]["control"]["tprnfor"] is True
    assert o["input_data"]["control"]["tstress"] is True
    assert o["retry"] == {"max_attempts": 6, "ladders": {}}
    t = r.trainer
    assert t["elements"] == ["Si"]
    assert t["physics_baseline"] == {"type": "none"}
    # the quickstart fits to convergence: the schema default ceiling (issue 11.4)
    assert (t["backend"], t["cutoff"], t["max_epochs"]) == ("pyace", 5.0, 1000)
    assert r.execution["engine"] == "local" and r.execution["workers"] is None


@needs_system_pseudo
def test_minimal_recipe_and_name_from_file(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        f"structures: [{{bulk: {{element: Si, crystal: diamond, a: 5.43}}}}]\n"
        f"oracle: {{pseudopotentials: {{Si: {SI_PP}}}}}\n",
        name="my si run.yaml",
    )
    r = load_recipe(p)
    assert r.name == "my-si-run"
    assert r.oracle["kspacing"] == 0.25
    assert r.oracle["input_data"]["system"]["ecutwfc"] == 30
    assert r.trainer["elements"] == ["Si"]


@needs_system_pseudo
def test_kpts_suppresses_default_kspacing(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        f"oracle: {{pseudopotentials: {{Si: {SI_PP}}}, kpts: [4, 4, 4]}}\n",
    )
    o = load_recipe(p).oracle
    assert o["kpts"] == [4, 4, 4] and "kspacing" not in o


@needs_system_pseudo
def test_forces_and_stress_are_forced_on(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        f"oracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n"
        "  input_data: {control: {tprnfor: false}, system: {ecutwfc: 50, ecutrho: 400}}\n",
    )
    warnings = [d for d in check_recipe(p) if d.severity == "warning"]
    assert any("tprnfor is always true" in d.message and d.line == 4 for d in warnings)
    o = load_recipe(p).oracle
    assert o["input_data"]["control"]["tprnfor"] is True
    assert o["input_data"]["system"] == {"ecutwfc": 50, "ecutrho": 400}


@needs_system_pseudo
def test_relative_paths_resolve_against_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "project"
    (sub / "data").mkdir(parents=True)
    (sub / "pp").mkdir()
    shutil.copy(DATA / "si2.extxyz", sub / "data")
    shutil.copy(SYSTEM_PSEUDO / SI_PP, sub / "pp" / "Si.local.UPF")
    _write(
        sub,
        "structures:\n  - file: data/si2.extxyz\n    index: '-1'\n"
        "oracle: {pseudo_dir: pp, pseudopotentials: {Si: Si.local.UPF}}\n",
    )
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    r = load_recipe(Path("project/r.yaml"))
    assert r.structures[0]["file"] == str(sub / "data" / "si2.extxyz")
    assert r.oracle["pseudo_dir"] == str(sub / "pp")
    assert resolve_pseudopotentials(r, None) == {"Si": sub / "pp" / "Si.local.UPF"}


@needs_system_pseudo
def test_espresso_pseudo_env_and_gz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pp = tmp_path / "pseudo"
    pp.mkdir()
    with (SYSTEM_PSEUDO / SI_PP).open("rb") as src, gzip.open(pp / "Si.mine.UPF.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    monkeypatch.setenv("ESPRESSO_PSEUDO", str(pp))
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        "oracle: {pseudopotentials: {Si: Si.mine.UPF}}\n",
    )
    r = load_recipe(p)
    assert resolve_pseudopotentials(r, None) == {"Si": pp / "Si.mine.UPF.gz"}
    cache = tmp_path / "run" / "pseudo"
    resolved = resolve_pseudopotentials(r, cache)
    assert resolved == {"Si": cache / "Si.mine.UPF"}
    assert resolved["Si"].read_bytes() == (SYSTEM_PSEUDO / SI_PP).read_bytes()


@needs_system_pseudo
def test_pseudopotential_removed_after_validation(tmp_path: Path) -> None:
    local = tmp_path / "Si.tmp.UPF"
    shutil.copy(SYSTEM_PSEUDO / SI_PP, local)
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        "oracle: {pseudopotentials: {Si: ./Si.tmp.UPF}}\n",
    )
    r = load_recipe(p)
    local.unlink()
    with pytest.raises(RecipeError, match="Si.tmp.UPF"):
        resolve_pseudopotentials(r, tmp_path / "cache")


def test_truncated_pseudopotential(tmp_path: Path) -> None:
    (tmp_path / "Si.bad.UPF").write_text("this is not a pseudopotential\n")
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        "oracle: {pseudopotentials: {Si: ./Si.bad.UPF}}\n",
    )
    errors = [str(d) for d in check_recipe(p) if d.severity == "error"]
    assert len(errors) == 1 and "does not look like a UPF" in errors[0]
    assert errors[0].startswith(f"{p}:2:33: error:")


@needs_system_pseudo
def test_overlapping_atoms_warn_not_fail(tmp_path: Path, capsys) -> None:
    shutil.copy(DATA / "si_overlap.extxyz", tmp_path)
    p = _write(
        tmp_path,
        "structures:\n  - file: si_overlap.extxyz\n"
        f"oracle: {{pseudopotentials: {{Si: {SI_PP}}}, min_distance: 0.5}}\n",
    )
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"{p}:2:11: warning: frame 0 of 'si_overlap.extxyz' has atoms 0.20 Å apart" in out
    assert out.splitlines()[-1] == f"{p}: ok"


@needs_system_pseudo
def test_multi_element_file_and_magnetic_moments(tmp_path: Path) -> None:
    shutil.copy(DATA / "fe_afm.extxyz", tmp_path)
    p = _write(
        tmp_path,
        "structures:\n  - file: fe_afm.extxyz\n    format: extxyz\n"
        "oracle: {pseudopotentials: {Fe: Fe.pbe-nd-rrkjus.UPF}}\n",
    )
    r = load_recipe(p)
    assert r.trainer["elements"] == ["Fe"]


@needs_system_pseudo
def test_ladder_override(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "structures: [{bulk: {element: Si, crystal: diamond, a: 5.43}}]\n"
        f"oracle:\n  pseudopotentials: {{Si: {SI_PP}}}\n"
        "  retry:\n    max_attempts: 3\n    ladders:\n"
        "      scf_not_converged:\n"
        "        - {set: {electrons.mixing_beta: 0.3}, note: gentler mixing}\n"
        "        - {scale: {electrons.electron_maxstep: 2}, restart: charge_density}\n"
        "      crashed: []\n",
    )
    retry = load_recipe(p).oracle["retry"]
    assert retry["max_attempts"] == 3
    assert retry["ladders"]["crashed"] == []
    assert retry["ladders"]["scf_not_converged"][1]["restart"] == "charge_density"


def test_check_recipe_never_raises_on_garbage_types(tmp_path: Path) -> None:
    p = _write(tmp_path, "structures: 5\noracle: [1]\ntrainer: x\nexecution: {parsl: 3}\n")
    diags = check_recipe(p)
    assert {(d.line, d.column) for d in diags} >= {(1, 13), (2, 9), (3, 10), (4, 20)}
