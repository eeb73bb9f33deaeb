"""Run the real ``autopipec`` command (``python -m mlip_autopipec``) in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``autopipec ARGS`` in ``cwd`` with no stdin, as CI and batch jobs run it."""
    return subprocess.run(
        [sys.executable, "-m", "mlip_autopipec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
