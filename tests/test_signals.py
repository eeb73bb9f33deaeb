"""The one signal-handling helper (mlip_autopipec.signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from mlip_autopipec.signals import STOP_SIGNALS, catch_signals


def test_records_in_order_runs_the_callback_and_restores_the_handlers() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    seen: list[int] = []
    with catch_signals(then=seen.append) as caught:
        assert caught.installed and not caught and caught.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert caught.received == [signal.SIGTERM, signal.SIGINT] == seen
    assert caught.signum == signal.SIGTERM  # the first decides the exit code
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_restores_the_handlers_after_an_exception() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with catch_signals((signal.SIGTERM,)):
            raise KeyError("boom")
    except KeyError:
        pass
    assert signal.getsignal(signal.SIGTERM) == before


def test_disabled_or_off_the_main_thread_installs_nothing() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with catch_signals(enabled=False) as caught:
        assert signal.getsignal(signal.SIGTERM) == before
    assert not caught.installed
    result: dict[str, object] = {}

    def in_thread() -> None:
        with catch_signals() as inner:
            result["installed"] = inner.installed
            result["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert result == {"installed": False, "handler": before}


def test_die_by_gives_the_signal_exit_status() -> None:
    code = (
        "import signal\nfrom mlip_autopipec.signals import catch_signals, die_by\n"
        "with catch_signals():\n    die_by(signal.SIGTERM)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert proc.returncode == -signal.SIGTERM
