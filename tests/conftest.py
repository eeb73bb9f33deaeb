"""Set-up of the whole test session."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Give the session SIGINT as a terminal does.

    A suite started from a background job (``cmd &`` in a script, ``nohup``) inherits SIGINT
    ignored, and so does every process it starts: the Ctrl-C tests then see no
    KeyboardInterrupt (measured: three failures). Ignoring it stays the tool's behaviour in
    such a job, as POSIX means it (Ctrl-C at the terminal is not the background job's).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
