"""Junk that is not a recipe gives one clear located error, never a traceback or a hang."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from mlip_autopipec.cli import main
from mlip_autopipec.errors import RecipeError
from mlip_autopipec.recipe import check_recipe, load_recipe


def _peak_bytes_of_only_error(path: Path) -> tuple[str, int]:
    """The one error and the peak of Python allocations while checking: machine-independent,
    unlike a wall-clock limit, and what a file read or an alias expansion would raise."""
    tracemalloc.start()
    try:
        message = _only_error(path)
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _only_error(path: Path) -> str:
    diags = check_recipe(path)
    errors = [d for d in diags if d.severity == "error"]
    assert len(errors) == 1, diags
    return str(errors[0])


def test_binary_file(tmp_path: Path) -> None:
    p = tmp_path / "core.yaml"
    p.write_bytes(bytes(range(256)) * 8)
    assert _only_error(p) == f"{p}:1:1: error: binary file (contains NUL bytes), not a YAML recipe"


def test_latin1_file(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: x\n# \xe9t\xe9\n")
    assert _only_error(p).startswith(f"{p}:2:3: error: not UTF-8 text")


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n", "---\n", "null\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    assert "empty recipe" in _only_error(p)


def test_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}:1:1: error: is a directory, not a recipe file\n"


def test_missing_file(tmp_path: Path) -> None:
    assert _only_error(tmp_path / "nope.yaml").endswith("error: no such file")


def test_50_megabytes(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    with p.open("wb") as fh:  # sparse: the size check must not read it
        fh.truncate(50_000_000)
    message, peak = _peak_bytes_of_only_error(p)
    assert peak < 1_000_000  # measured 2 kB; reading it would allocate 50 MB
    assert "50.0 MB" in message and "limit" in message


def test_billion_laughs(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    message, peak = _peak_bytes_of_only_error(p)
    assert peak < 1_000_000  # measured 67 kB; expanding it builds 9**10 strings
    assert "YAML bomb" in message


def test_recursive_alias(tmp_path: Path) -> None:
    p = tmp_path / "loop.yaml"
    p.write_text("structures: &s [*s]\n")
    assert "recursive YAML alias" in _only_error(p)


def test_deep_nesting(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("structures: " + "[" * 3000 + "]" * 3000 + "\n")
    assert "nested too deeply" in _only_error(p)


def test_two_documents(tmp_path: Path) -> None:
    p = tmp_path / "two.yaml"
    p.write_text("name: a\n---\nname: b\n")
    assert ":2:1: error: YAML syntax" in _only_error(p)


@pytest.mark.parametrize("scalar", ["42", "just text", "[1, 2]"])
def test_top_level_not_a_mapping(tmp_path: Path, scalar: str) -> None:
    p = tmp_path / "scalar.yaml"
    p.write_text(scalar + "\n")
    assert "a recipe is a mapping" in _only_error(p)


def test_arbitrary_object_tag_is_refused_not_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    assert "YAML tag" in str(info.value)
    assert not marker.exists()


def test_deep_block_indentation(tmp_path: Path) -> None:
    p = tmp_path / "indent.yaml"
    p.write_text("".join(" " * i + f"k{i}:\n" for i in range(0, 1000, 2)))
    assert "indented too deeply" in _only_error(p)


def test_brackets_inside_strings_and_comments_are_not_nesting(tmp_path: Path) -> None:
    p = tmp_path / "brackets.yaml"
    p.write_text(f"name: '{'[' * 500}'  # {'{' * 500}\n")
    diags = check_recipe(p)
    assert all("nested" not in d.message for d in diags)
