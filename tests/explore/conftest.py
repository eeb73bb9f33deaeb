"""Fixtures of the active-learning tests: one real reduced loop (pw.x + pacemaker)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from al_testlib import CI_RECIPE, real_tools_available  # noqa: E402


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reduced CI loop run once, uninterrupted: its run directory and exit code."""
    if not real_tools_available():
        pytest.skip("pw.x, the Si pseudopotential or pacemaker missing")
    from mlip_autopipec.pipeline import run

    run_dir = tmp_path_factory.mktemp("al-ci") / "run"
    said = io.StringIO()
    with contextlib.redirect_stderr(Tee(said, sys.stderr)):
        code = run(CI_RECIPE, run_dir=run_dir, workers=2)
    return {"run_dir": run_dir, "code": code, "output": said.getvalue()}


class Tee(io.TextIOBase):
    """Writes to both streams (the run's messages are kept and still shown)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()
