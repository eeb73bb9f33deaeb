"""One runner per run directory; stale locks are taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mlip_autopipec.errors import RunLockedError
from mlip_autopipec.lifecycle.lock import LOCK_NAME, RunLock, read_lock_info


def test_second_runner_is_refused_with_the_pid(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.held
        info = read_lock_info(tmp_path)
        assert info is not None and info["pid"] == __import__("os").getpid()
        with pytest.raises(RunLockedError, match=r"run directory locked by PID \d+"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    # released: a new runner gets it
    with RunLock(tmp_path):
        pass


def test_lock_held_by_another_process(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mlip_autopipec.lifecycle.lock import RunLock; "
            f"l = RunLock({str(tmp_path)!r}).acquire(); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(RunLockedError, match=f"locked by PID {holder.pid}") as err:
            RunLock(tmp_path).acquire()
        assert err.value.exit_code == 2
        holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
        holder.wait()
        assert (tmp_path / LOCK_NAME).exists()
        # stale lock from a dead process: taken over
        with RunLock(tmp_path):
            assert read_lock_info(tmp_path)["pid"] != holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_file_from_dead_pid_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": 999999, "hostname": "gone", "started": "yesterday"})
    )
    start = time.monotonic()
    with RunLock(tmp_path) as lock:
        assert lock.held
    assert time.monotonic() - start < 1.0
