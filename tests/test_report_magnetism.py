"""The report's magnetic moments: per-site moments of a real spin-polarised pw.x label.

One antiferromagnetic 2-atom cubic bcc Fe cell at low settings (~10 s of pw.x).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest

from cli_runner import run_cli
from mlip_autopipec.lifecycle.store import Store

needs_pwx = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed")

FE_AFM = """\
name: fe-afm
structures:
  - bulk: {element: Fe, crystal: bcc, a: 2.83, cubic: true}
    magmoms: [2.2, -2.2]
oracle:
  pseudopotentials: {Fe: Fe.pbe-nd-rrkjus.UPF}
  kspacing: 0.3
  magnetism: {default_moments: {Fe: 2.2}}
  input_data:
    system: {ecutwfc: 20, ecutrho: 160, occupations: smearing, smearing: mv, degauss: 0.02}
    electrons: {mixing_beta: 0.3, conv_thr: 1.0e-6}
execution:
  workers: 1
"""


@needs_pwx
def test_report_shows_per_site_moments_of_the_labels(tmp_path: Path) -> None:
    (tmp_path / "fe.yaml").write_text(FE_AFM)
    done = run_cli("run", "fe.yaml", "--run-dir", "run", "--stage", "label", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Store.open(tmp_path / "run", create=False) as store:
        stored = store.label_magmoms()
    (m1, m2) = stored[1]
    assert m1 > 1.5 and m2 < -1.5 and m1 == pytest.approx(-m2, abs=0.05)  # AFM

    data = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    (fe,) = data["structures"]
    assert fe["magmoms"] == stored[1] and fe["symbols"] == ["Fe", "Fe"]
    assert abs(fe["total_magmom"]) < 0.1  # the total alone hides the moments
    page = html.unescape((tmp_path / "run" / "report" / "index.html").read_text())
    assert "per-site moments (μB)" in page
    assert f"Fe1 {m1:+.2f}, Fe2 {m2:+.2f}" in page
    assert f"{abs(m1) + abs(m2):.2f}" in page  # Σ|m|
