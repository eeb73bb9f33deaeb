"""The box check of ``trainer.reference: isolated_atoms`` needs a second box within the cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlip_autopipec.cli import main

RECIPE = """\
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
trainer:
  reference: {reference}
  reference_box: 22
"""


@pytest.mark.parametrize("reference", ["isolated_atoms", "fit"])
def test_a_cap_below_the_check_box_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: str
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(reference=reference))
    code = main(["validate", str(recipe)])
    err = capsys.readouterr().err
    if reference == "fit":  # no isolated atoms, no box check
        assert code == 0, err
        return
    assert code == 2
    # located at the key the user wrote, with the figures
    assert f"{recipe}:7:" in err and "reference_box_max 24 Å leaves no box" in err, err
    assert "reference_box + reference_box_step = 26 Å" in err
