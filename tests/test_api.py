"""The Python API: docs/api.md's example runs as written; the README recipe is the shipped one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

import mlip_autopipec as ap
from mlip_autopipec.errors import RecipeError, UsageError
from mlip_autopipec.recipe._yaml import load_yaml
from mlip_autopipec.trainer.fit import resolve_command

ROOT = Path(__file__).resolve().parents[1]
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")
needs_pwx = pytest.mark.skipif(
    shutil.which("pw.x") is None or not PSEUDO.is_file(), reason="pw.x or Si.pz-vbc.UPF missing"
)
needs_pacemaker = pytest.mark.skipif(
    not (Path(resolve_command("pacemaker")[0]).is_file() or shutil.which("pacemaker")),
    reason="pacemaker missing",
)


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def test_readme_recipe_is_the_shipped_quickstart(tmp_path: Path) -> None:
    (block, *_) = _blocks(ROOT / "README.md", "yaml")
    readme = tmp_path / "readme.yaml"
    readme.write_text(block)
    shipped = ROOT / "recipes" / "si_quickstart.yaml"
    assert load_yaml(readme, "README.md")[0] == load_yaml(shipped, str(shipped))[0]


@needs_pwx
@needs_pacemaker
@pytest.mark.pwx
@pytest.mark.pacemaker
@pytest.mark.slow
def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (example, *_) = _blocks(ROOT / "docs" / "api.md", "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_api_example"}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "10 labels" in out and "test RMSE:" in out and "ACE:" in out
    run = ap.open_run(tmp_path / "runs" / "si-api")
    assert run.status()["counts"]["trained"] == 10
    assert len(ap.labelled_structures(run.path)) == 10
    assert run.report().is_file()
    # rerunning resumes: no new pw.x attempt, no new fit
    attempts = sum(s["attempts"] for s in run.status()["structures"])
    fit_dirs = sorted((run.path / "trainer").glob("fit-*"))
    assert ap.run(namespace["recipe"], run_dir=run.path) == 0  # type: ignore[arg-type]
    assert sum(s["attempts"] for s in run.status()["structures"]) == attempts
    assert sorted((run.path / "trainer").glob("fit-*")) == fit_dirs


@needs_pwx
def test_dict_recipe_paths_are_relative_to_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write(data / "si.extxyz", bulk("Si", "diamond", a=5.43))
    recipe = {
        "name": "api-file",
        "structures": [{"file": "data/si.extxyz"}],
        "oracle": {
            "pseudopotentials": {"Si": "Si.pz-vbc.UPF"},
            "kpts": [1, 1, 1],
            "input_data": {"system": {"ecutwfc": 12}},
        },
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(RecipeError) as bad:  # relative to the working directory: not there
        ap.run(recipe, run_dir=tmp_path / "run0", stage="label")
    assert any("not found" in d.message for d in bad.value.diagnostics)
    assert ap.run(recipe, run_dir=tmp_path / "run", stage="label", base_dir=tmp_path) == 0
    (atoms,) = ap.open_run(tmp_path / "run").labelled()
    assert atoms.info["source"].endswith("si.extxyz@0")
    assert ap.open_run(tmp_path / "run").potential() is None  # labels only


def test_open_run_refuses_a_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a run directory"):
        ap.open_run(tmp_path)
    with pytest.raises(UsageError, match="a path or a dict"):
        ap.run(42)  # type: ignore[arg-type]


def test_bad_dict_recipe_raises_located_diagnostics(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as exc:
        ap.run({"structures": [{"bulk": {"element": "Si", "crystal": "diamnd", "a": 5.43}}],
                "oracle": {"pseudopotentials": {"Si": "Si.pz-vbc.UPF"}}},
               run_dir=tmp_path / "r")  # fmt: skip
    messages = [d.message for d in exc.value.diagnostics]
    assert any("did you mean 'diamond'" in m for m in messages), messages
    assert not (tmp_path / "r").exists()
