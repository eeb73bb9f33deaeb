"""pacemaker's iterations and loss stream as progress during a real fit: one line per
shown iteration when stderr is piped, tqdm's live line on a terminal (a pty).

Three 2-atom Si cells are labelled with the real pw.x once per module; each test then runs
``autopipec run --stage train`` (a real 5-iteration pacemaker fit) on its own copy.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from cli_runner import run_cli
from mlip_autopipec.lifecycle.progress import parse_fit_log
from mlip_autopipec.trainer.fit import resolve_command

#: ~25 s per test on a busy 2-core machine (a real fit each), plus ~12 s of labelling
pytestmark = pytest.mark.slow

needs_tools = pytest.mark.skipif(
    shutil.which("pw.x") is None or shutil.which(resolve_command("pacemaker")[0]) is None,
    reason="pw.x or pacemaker not installed",
)

MAX_EPOCHS = 5
TRAIN_ARGS = ("run", "fit.yaml", "--run-dir", "run", "--stage", "train")
RECIPE = f"""\
name: fit-progress
structures:
  - bulk: {{element: Si, crystal: diamond, a: 5.43}}
    strain: {{min: -0.02, max: 0.02, count: 3}}
    rattle: {{stdev: 0.03, count: 1, seed: 1}}
oracle:
  pseudopotentials: {{Si: Si.pz-vbc.UPF}}
  kspacing: 0.4
  input_data:
    system: {{ecutwfc: 12}}
trainer: {{max_epochs: {MAX_EPOCHS}, max_basis_size: 4, cutoff: 4.0, test_fraction: 0}}
execution:
  workers: 1
"""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("fit-progress")
    (here / "fit.yaml").write_text(RECIPE)
    done = run_cli("run", "fit.yaml", "--run-dir", "run", "--stage", "label", cwd=here)
    assert done.returncode == 0, done.stderr
    return here


def _copy(labelled: Path, tmp_path: Path) -> Path:
    shutil.copy(labelled / "fit.yaml", tmp_path / "fit.yaml")
    shutil.copytree(labelled / "run", tmp_path / "run")
    return tmp_path


def _last_iteration(here: Path) -> int:
    """The last iteration pacemaker logged (MAX_EPOCHS unless BFGS stopped earlier)."""
    log = here / "run" / "trainer" / "fit-001" / "pacemaker.log"
    return parse_fit_log(log.read_text()).steps[-1].iteration


_PIPED = re.compile(r"^fit: iteration (\d+)/(\d+) \| loss (\S+) \| E \S+ meV/atom \| F \S+ meV/Å$")


@needs_tools
def test_fit_progress_is_one_line_per_iteration_when_piped(labelled: Path, tmp_path: Path) -> None:
    here = _copy(labelled, tmp_path)
    done = run_cli(*TRAIN_ARGS, cwd=here)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    shown = [m for line in lines if (m := _PIPED.match(line))]
    # the first iteration at once, then one a minute (Progress.log_interval), and the last
    last = _last_iteration(here)
    assert [int(m[1]) for m in shown][0] == 0 and int(shown[-1][1]) == last
    assert {int(m[2]) for m in shown} == {MAX_EPOCHS}
    assert all(float(m[3]) > 0 for m in shown)
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # no terminal codes in a log
    # the progress comes between the fit's start and its result
    start = next(i for i, line in enumerate(lines) if "fitting on" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("autopipec: potential "))
    assert start < lines.index(shown[0].string) < lines.index(shown[-1].string) < end


@needs_tools
def test_fit_progress_is_a_live_line_on_a_terminal(labelled: Path, tmp_path: Path) -> None:
    here = _copy(labelled, tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip_autopipec", *TRAIN_ARGS],
        cwd=here,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8", errors="replace")
    # every redraw clears the line first; each drawn line fits the 100-column terminal
    draws = [d.split("\r\n")[0] for d in text.split("\r\x1b[K")[1:]]
    fit_draws = [d for d in draws if d.startswith("fit")]
    assert fit_draws, text
    assert all(len(d) <= 99 for d in fit_draws)
    last = fit_draws[-1]
    # tqdm's meter: iteration/total, elapsed, ETA, rate and a bar
    assert re.search(rf"\b{_last_iteration(here)}/{MAX_EPOCHS}\b", last), last
    assert "loss" in last and "ETA" in last and re.search(r"(it/s|s/it)", last) and "|#" in last
    # the fit's last line is kept: the result starts on a line of its own
    assert re.search(r"\r\nautopipec: potential ", text), text[-2000:]
