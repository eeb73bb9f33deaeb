"""The live progress line in a real terminal (tmux) at 70 and 200 columns, the plain log form,
and pacemaker's iteration lines as fit progress."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.lifecycle.progress import FitStep, Progress, fit_progress, parse_fit_log

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "tests" / "data" / "trainer" / "pacemaker_pyace_0.4.0rc1.log"

CHILD = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from mlip_autopipec.lifecycle.progress import Progress, FitStep
    here = Path(sys.argv[1])
    p = Progress(refresh=0.0)  # stderr is the tmux pane: a TTY of the pane's width
    counts = {"pending": 12, "running": 0, "scf_retry": 0, "labelled": 0, "failed": 0,
              "trained": 0}
    p.start(counts)
    for k in range(1, 13):
        counts["pending"] -= 1
        counts["labelled"] += 1
        time.sleep(0.05)
        p.update(counts, k, force=True)
        if k == 4:
            p.event("structure 4: quarantined: overlapping_atoms")
        if k == 6:
            (here / "mid").touch()
            while not (here / "go").exists():
                time.sleep(0.02)
    p.finish(counts, 12)
    for it in range(1, 6):
        time.sleep(0.02)
        p.fit_update(FitStep(it, 1.0 / it, 100.0 / it, 200.0 / it), 5)
    p.fit_finish("fit done")
    (here / "done").touch()
    time.sleep(30)
    """
)

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing")


def _wait(path: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"the child never wrote {path.name}")
        time.sleep(0.05)


def _pane(tmux: list[str]) -> list[str]:
    out = subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.rstrip("\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _pane_when(tmux: list[str], ready: str, timeout: float = 10.0) -> list[str]:
    """The pane once its last line contains ``ready`` (tmux redraws asynchronously)."""
    end = time.monotonic() + timeout
    while True:
        lines = _pane(tmux)
        if (lines and ready in lines[-1]) or time.monotonic() > end:
            return lines
        time.sleep(0.05)


@needs_tmux
@pytest.mark.parametrize("width", [70, 200])
def test_live_line_in_tmux(tmp_path: Path, width: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    socket = f"autopipec-test-{os.getpid()}-{width}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TERM": "xterm"}
    command = f"{sys.executable} {script} {tmp_path}"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "t", "-x", str(width), "-y", "30", command],
        check=True,
        env=env,
    )
    try:
        _wait(tmp_path / "mid")
        mid = _pane_when(tmux, " 6/12 ")
        (tmp_path / "go").touch()
        _wait(tmp_path / "done")
        final = _pane_when(tmux, "fit done")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)
    # mid-run: the event stays above one live line that fits the width and shows the ETA
    assert mid[:2] == [
        "labelling: 12 structures, 12 to do",
        "structure 4: quarantined: overlapping_atoms",
    ]
    assert len(mid) == 3, mid  # no stale copies of the live line
    live = mid[2]
    assert len(live) < width and " 6/12 " in live and "ETA 00:0" in live, live
    assert ("pending 6 | running 0" in live) == (width == 200)
    # at the end: the same two events, one final summary, one fit line; nothing stale
    assert final[:2] == mid[:2] and len(final) == 5, final
    assert " 12/12 " in final[2] and "ETA 00:00" in final[2]
    assert final[3].startswith("fit") and " 5/5 " in final[3] and len(final[3]) < width
    assert final[4] == "fit done"


def test_plain_output_is_one_line_per_event() -> None:
    out = io.StringIO()
    p = Progress(out, tty=False, log_interval=0.0)
    counts = {"pending": 2, "labelled": 0}
    p.start(counts)
    p.event("structure 1: labelled (attempt 1, E = -1.0 eV)", routine=True)
    p.update({"pending": 1, "labelled": 1}, 1)
    p.finish({"pending": 0, "labelled": 2}, 2)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0] == "labelling: 2 structures, 2 to do"
    assert lines[1] == "structure 1: labelled (attempt 1, E = -1.0 eV)"
    assert lines[2].startswith("pending 1 | running 0 | scf_retry 0 | labelled 1 |")
    assert lines[-1].startswith("pending 0 |") and "ETA 0s" in lines[-1]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(20, 300),
    done=st.integers(0, 5000),
    left=st.integers(0, 5000),
    failed=st.integers(0, 50),
    attempts=st.integers(0, 100000),
)
def test_live_line_never_exceeds_the_width(
    width: int, done: int, left: int, failed: int, attempts: int
) -> None:
    p = Progress(io.StringIO(), tty=True, width=width)
    counts = {"pending": left, "running": 1, "labelled": done, "failed": failed}
    line = p.live_line(counts, attempts, width - 1)
    assert len(line) <= width - 1
    if width >= 50:  # the time fields survive down to narrow terminals
        assert "ETA" in line


def test_fit_progress_reads_pacemaker_lines() -> None:
    text = LOG.read_text()
    steps = [s for s in map(fit_progress, text.splitlines()) if s is not None]
    assert steps[0] == FitStep(0, 2.9773, 135.44, 1814.88)
    assert steps[-1] == FitStep(29, 1.5688e-02, 89.82, 105.62)
    assert [s.iteration for s in steps] == [0, *range(1, 10), *range(11, 20), *range(21, 30)]
    assert fit_progress("2026 I - Loading input.yaml...") is None
    log = parse_fit_log(text)
    assert (
        log.converged is False and log.message == "Maximum number of iterations has been exceeded."
    )
    assert len(log.steps) == len(steps)
    assert parse_fit_log("cut short\n").converged is None


def test_fit_update_plain(tmp_path: Path) -> None:
    out = io.StringIO()
    p = Progress(out, tty=False, log_interval=3600)
    p.fit_update(FitStep(1, 0.5, 10.0, 20.0), 100)
    p.fit_update(FitStep(2, 0.4, 9.0, 19.0), 100)  # within the log interval: not logged
    assert out.getvalue() == "fit: iteration 1/100 | loss 0.5 | E 10.0 meV/atom | F 20.0 meV/Å\n"


def test_fit_log_follower_streams_a_growing_log(tmp_path: Path) -> None:
    from mlip_autopipec.lifecycle.progress import FitLogFollower

    lines = LOG.read_text().splitlines(keepends=True)
    log = tmp_path / "log.txt"
    out = io.StringIO()
    progress = Progress(out, tty=False, log_interval=0.0)
    with FitLogFollower(log, progress, max_iterations=30, poll=0.01) as follower:
        time.sleep(0.05)  # the log does not exist yet: waited for
        with open(log, "w") as fh:
            for k, line in enumerate(lines):
                fh.write(line)
                if k % 20 == 0:
                    fh.flush()
                    time.sleep(0.02)
    shown = [line for line in out.getvalue().splitlines() if line.startswith("fit: iteration")]
    assert shown[0].startswith("fit: iteration 0/30 | loss 2.977")
    assert shown[-1].startswith("fit: iteration 29/30 | loss 0.01569")
    assert follower.last == FitStep(29, 1.5688e-02, 89.82, 105.62)
