"""Every broken recipe in tests/recipes/bad fails with exit 2 at the location it announces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlip_autopipec.cli import main

BAD = Path(__file__).resolve().parents[1] / "recipes" / "bad"
RECIPES = sorted(BAD.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+):(\d+) ?(.*)$")


def test_enough_broken_recipes() -> None:
    assert len(RECIPES) >= 25


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_bad_recipe_is_located(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _EXPECT.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert m, f"{path.name}: first line must be '# expect: LINE:COL text'"
    line, col, text = m.groups()
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    prefix = f"{path}:{line}:{col}: error: "
    hits = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert hits, f"no error at {line}:{col}:\n{err}"
    assert any(text in ln for ln in hits), f"{text!r} not in:\n{err}"
    # GCC style, one diagnostic per line, sorted by position
    located = [ln for ln in err.splitlines() if re.match(r"^.+:\d+:\d+: (error|warning): ", ln)]
    assert located == [ln for ln in err.splitlines() if ln.strip()]
    positions = [tuple(map(int, re.match(r"^.+?:(\d+):(\d+):", ln).groups())) for ln in located]  # type: ignore[union-attr]
    assert positions == sorted(positions)
    assert "Traceback" not in err


def test_relative_path_is_printed_as_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(BAD.parent)
    rc = main(["validate", "bad/typo_kspacing.yaml"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("bad/typo_kspacing.yaml:6:3: error: unknown key")


def test_every_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "many.yaml"
    recipe.write_text(
        "structures:\n"
        "  - bulk: {element: Si, crystal: diamnd, a: -1}\n"
        "oracle:\n"
        "  pseudopotentials: {Si: Si.pbe-nl-rrkjus_psl.1.0.0.UPF}\n"
        "  kspacing: x\n"
        "  input_data:\n"
        "    electrons: {mixing_betta: 0.3}\n"
        "trainer: {cutof: 5}\n"
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    for where in ("2:34", "2:45", "5:13", "7:17", "8:11"):
        assert f"{recipe}:{where}: error: " in err, err
