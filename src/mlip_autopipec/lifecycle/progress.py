"""Progress display: one live line on a terminal, plain log lines otherwise (CI, batch jobs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from mlip_autopipec.lifecycle.machine import STATES


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Progress:
    """Counts per state, attempts and ETA.

    On a TTY the summary line is redrawn in place (at most every ``refresh`` seconds) and
    events (failures, labels) are printed above it; otherwise every event is a log line and
    the summary is printed every ``log_interval`` seconds.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        refresh: float = 0.2,
        log_interval: float = 60.0,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", bool)())
        self.refresh = refresh
        self.log_interval = log_interval
        self._start = time.monotonic()
        self._last = 0.0
        self._done_at_start = 0
        self._line_shown = False

    @staticmethod
    def summary(counts: dict[str, int], attempts: int, eta: float | None) -> str:
        """``labelled 3 | failed 0 | ... | attempts 5 | ETA 1m10s``."""
        parts = [f"{s} {counts.get(s, 0)}" for s in STATES]
        parts.append(f"attempts {attempts}")
        parts.append(f"ETA {_fmt_seconds(eta)}" if eta is not None else "ETA -")
        return " | ".join(parts)

    def start(self, counts: dict[str, int]) -> None:
        """Call once before labelling starts (the ETA counts only this run's work)."""
        self._start = time.monotonic()
        self._done_at_start = counts.get("labelled", 0) + counts.get("failed", 0)
        self._done_at_start += counts.get("trained", 0)
        self.event(
            f"labelling: {sum(counts.values())} structures, {counts.get('pending', 0)} to do"
        )

    def _eta(self, counts: dict[str, int]) -> float | None:
        done = counts.get("labelled", 0) + counts.get("failed", 0) + counts.get("trained", 0)
        finished_now = done - self._done_at_start
        remaining = sum(counts.values()) - done
        if finished_now <= 0:
            return None
        return (time.monotonic() - self._start) / finished_now * remaining

    def update(self, counts: dict[str, int], attempts: int, *, force: bool = False) -> None:
        """Redraw (TTY) or log (every ``log_interval``) the summary."""
        now = time.monotonic()
        interval = self.refresh if self.tty else self.log_interval
        if not force and now - self._last < interval:
            return
        self._last = now
        line = self.summary(counts, attempts, self._eta(counts))
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._line_shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def event(self, message: str, *, routine: bool = False) -> None:
        """One line that stays (a structure quarantined, a resume note).

        ``routine`` events (a structure labelled) are log lines off a terminal only; on a
        terminal the live counts already show them.
        """
        if routine and self.tty:
            return
        if self.tty and self._line_shown:
            self.stream.write("\r\x1b[K")
            self._line_shown = False
        self.stream.write(message + "\n")
        self.stream.flush()
        self._last = 0.0 if self.tty else self._last

    def finish(self, counts: dict[str, int], attempts: int) -> None:
        """Final summary line."""
        self.update(counts, attempts, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self._line_shown = False
