"""The one place that installs handlers for the signals that stop a run (SIGINT, SIGTERM).

A handler only *records* the signal (and may run one short callback, e.g. stopping the
children with :func:`mlip_autopipec.process.terminate_all`); the code inside the ``with``
block polls what was caught and stops at a point where the store is consistent. The caller
then raises :class:`~mlip_autopipec.errors.Interrupted` (exit 130/143), or, in a Parsl
worker, dies from the signal with :func:`die_by` as it would have without us.

Handlers can only be installed from the main thread; elsewhere (a stage run from a worker
thread, a task already in a thread) :func:`catch_signals` installs nothing and the block
runs unchanged, with ``installed`` False.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

#: The signals that stop a run gracefully.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Caught:
    """What :func:`catch_signals` saw: every signal number, in order of arrival."""

    received: list[int] = field(default_factory=list)
    #: Whether the handlers were installed (False off the main thread or when disabled).
    installed: bool = False

    @property
    def signum(self) -> int | None:
        """The first signal caught (the one that decides the exit code), or None."""
        return self.received[0] if self.received else None

    def __bool__(self) -> bool:
        return bool(self.received)


@contextmanager
def catch_signals(
    signals: Sequence[int] = STOP_SIGNALS,
    *,
    then: Callable[[int], None] | None = None,
    enabled: bool = True,
) -> Iterator[Caught]:
    """Record ``signals`` while the block runs; restore the previous handlers on exit.

    ``then(signum)`` runs inside the handler after recording (keep it short and
    signal-safe: set flags, signal children). With ``enabled`` False, or off the main
    thread, nothing is installed and the yielded :class:`Caught` stays empty.
    """
    caught = Caught()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.received.append(signum)
        if then is not None:
            then(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    caught.installed = True
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def die_by(signum: int) -> None:
    """Die from ``signum`` with its default action (the exit status a parent expects)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
