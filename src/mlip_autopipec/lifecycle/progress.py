"""Progress display: one live line on a terminal, plain log lines otherwise (CI, batch jobs).

On a terminal the line is tqdm's meter (``tqdm.format_meter``: elapsed, rate, ETA, a bar that
takes what width is left), fitted to the terminal's current width (tqdm's own screen-size
probe) so it never wraps: a wrapped line cannot be redrawn in place and leaves stale copies.
The counts shrink to shorter forms in narrow terminals; the time fields are never cut.
Off a terminal, every event is a line and the counts are logged every ``log_interval``.

During a fit, :func:`fit_progress` turns pacemaker's log lines into :class:`FitStep` s and
:meth:`Progress.fit_update` shows them the same way.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm
from tqdm.utils import _screen_shape_wrapper, disp_len

from mlip_autopipec.lifecycle.machine import STATES

#: Width assumed when the stream cannot say (a TTY flag forced on a file or a pipe).
DEFAULT_WIDTH = 120
#: Columns left for the bar at least; below that the counts take a shorter form.
_MIN_BAR = 6
#: The time fields come before the bar: when space runs out the bar shrinks, never the ETA.
_METER = "{desc} {n_fmt}/{total_fmt} {elapsed} ETA {remaining} {rate_fmt} |{bar}|"
_METER_NO_BAR = "{desc} {n_fmt}/{total_fmt} {elapsed} ETA {remaining} {rate_fmt} ||"


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _done(counts: dict[str, int]) -> int:
    return counts.get("labelled", 0) + counts.get("failed", 0) + counts.get("trained", 0)


def count_forms(counts: dict[str, int], attempts: int) -> list[str]:
    """The counts, from the full form (every state) to the shortest (what is left)."""
    full = " | ".join([*(f"{s} {counts.get(s, 0)}" for s in STATES), f"attempts {attempts}"])
    running = counts.get("running", 0) + counts.get("scf_retry", 0)
    ok = counts.get("labelled", 0) + counts.get("trained", 0)
    failed, pending = counts.get("failed", 0), counts.get("pending", 0)
    compact = (
        f"labelled {ok} | failed {failed} | running {running} | pending {pending} "
        f"| attempts {attempts}"
    )
    short = f"ok {ok} fail {failed} run {running} todo {pending}"
    return [full, compact, short, f"fail {failed}", ""]


def fit_line(width: int, forms: Iterable[str], meter: Callable[[str, int], str]) -> str:
    """The longest form whose meter leaves room for a bar in ``width`` columns."""
    forms = list(forms)
    for desc in forms:
        if disp_len(meter(desc, 0)) + _MIN_BAR <= width:
            return meter(desc, width)
    return meter(forms[-1], width)[:width]


@dataclass(frozen=True)
class FitStep:
    """One iteration line of a pacemaker log."""

    iteration: int
    loss: float
    rmse_energy_mev_per_atom: float | None = None
    rmse_forces_mev_per_ang: float | None = None


_FIT_LINE = re.compile(
    r"(?:Iteration\s+#|Initial state:\s*#)(?P<it>\d+)\s+\(\d+ evals\):\s+Loss:\s*(?P<loss>\S+)"
    r"(?:\s*\|\s*RMSE Energy(?:\(low\))?:\s*(?P<e>[-+\d.eE]+|nan))?"
    r"(?:.*?Forces(?:\(low\))?:\s*(?P<f>[-+\d.eE]+|nan))?"
)


def fit_progress(line: str) -> FitStep | None:
    """Parse one line of pacemaker's log (``log.txt`` / its stdout); None if not an iteration.

    pacemaker (pyace 0.4) prints ``Iteration   #12   (1072 evals):     Loss: 1.0057e-01 |
    RMSE Energy(low): 146.39 (146.39) meV/at | Forces(low): 308.34 (308.34) meV/A ...`` once
    per optimizer iteration (``Initial state:#0`` before the first).
    """
    m = _FIT_LINE.search(line)
    if m is None:
        return None
    try:
        loss = float(m["loss"])
    except ValueError:
        return None

    def number(text: str | None) -> float | None:
        return float(text) if text is not None else None

    return FitStep(int(m["it"]), loss, number(m["e"]), number(m["f"]))


@dataclass(frozen=True)
class FitLog:
    """What a pacemaker log says about one fit."""

    steps: tuple[FitStep, ...]
    #: scipy's ``Optimization result(success=...)``; None when the log has none (cut short)
    converged: bool | None
    message: str | None


_RESULT = re.compile(r"Optimization result\(success=(?P<ok>True|False).*?message=(?P<msg>[^,]*)")


def parse_fit_log(text: str) -> FitLog:
    """Every iteration (the last line wins for a repeated number) and the optimizer's verdict.

    Several fit cycles or ladder steps restart the numbering; their steps are kept in order.
    """
    steps: list[FitStep] = []
    converged: bool | None = None
    message: str | None = None
    for line in text.splitlines():
        step = fit_progress(line)
        if step is not None:
            if steps and steps[-1].iteration == step.iteration:
                steps[-1] = step
            else:
                steps.append(step)
            continue
        m = _RESULT.search(line)
        if m is not None:
            converged = m["ok"] == "True"
            message = m["msg"].strip()
    return FitLog(tuple(steps), converged, message)


class Progress:
    """Counts per state, attempts, elapsed time, rate and ETA.

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
        width: int | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", bool)())
        self.refresh = refresh
        self.log_interval = log_interval
        self._width = width
        self._screen = _screen_shape_wrapper()
        self._start = time.monotonic()
        self._last = 0.0
        self._done_at_start = 0
        self._line_shown = False
        self._fit_start: float | None = None
        #: the last pacemaker iteration shown (None before the first)
        self.fit_shown: FitStep | None = None

    @staticmethod
    def summary(counts: dict[str, int], attempts: int, eta: float | None) -> str:
        """``labelled 3 | failed 0 | ... | attempts 5 | ETA 1m10s`` (the log-line form)."""
        parts = [f"{s} {counts.get(s, 0)}" for s in STATES]
        parts.append(f"attempts {attempts}")
        parts.append(f"ETA {_fmt_seconds(eta)}" if eta is not None else "ETA -")
        return " | ".join(parts)

    def width(self) -> int:
        """Columns of the terminal now (it may have been resized since the last redraw)."""
        if self._width is not None:
            return self._width
        size = None
        if self._screen is not None:
            try:
                size = self._screen(self.stream)
            except (OSError, ValueError):
                size = None
        cols = size[0] if size else None
        return int(cols) if cols else DEFAULT_WIDTH

    def start(self, counts: dict[str, int]) -> None:
        """Call once before labelling starts (the ETA counts only this run's work)."""
        self._start = time.monotonic()
        self._done_at_start = _done(counts)
        self.event(
            f"labelling: {sum(counts.values())} structures, {counts.get('pending', 0)} to do"
        )

    def _eta(self, counts: dict[str, int]) -> float | None:
        finished_now = _done(counts) - self._done_at_start
        remaining = sum(counts.values()) - _done(counts)
        if finished_now <= 0:
            return None
        return (time.monotonic() - self._start) / finished_now * remaining

    def live_line(self, counts: dict[str, int], attempts: int, width: int) -> str:
        """The terminal line for ``width`` columns: counts, bar, elapsed<ETA, rate."""
        total = max(sum(counts.values()), 1)
        elapsed = time.monotonic() - self._start

        def meter(desc: str, ncols: int) -> str:
            return tqdm.format_meter(
                _done(counts),
                total,
                elapsed,
                ncols=ncols or None,
                prefix=desc,
                unit="cell",
                initial=self._done_at_start,
                bar_format=_METER if ncols else _METER_NO_BAR,
                ascii=" #",
            ).lstrip()

        return fit_line(width, count_forms(counts, attempts), meter)

    def _draw(self, line: str) -> None:
        self.stream.write("\r\x1b[K" + line)
        self._line_shown = True

    def update(self, counts: dict[str, int], attempts: int, *, force: bool = False) -> None:
        """Redraw (TTY) or log (every ``log_interval``) the summary."""
        now = time.monotonic()
        interval = self.refresh if self.tty else self.log_interval
        if not force and now - self._last < interval:
            return
        self._last = now
        if self.tty:
            # one column spare: a line exactly as wide as the terminal wraps on some
            self._draw(self.live_line(counts, attempts, self.width() - 1))
        else:
            self.stream.write(self.summary(counts, attempts, self._eta(counts)) + "\n")
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

    # -- fitting --------------------------------------------------------------------------
    def fit_update(
        self, step: FitStep, max_iterations: int | None = None, *, force: bool = False
    ) -> None:
        """Show one pacemaker iteration: a live line on a TTY, a log line every
        ``log_interval`` otherwise (and always for the first iteration, or with ``force``)."""
        now = time.monotonic()
        if self._fit_start is None:
            self._fit_start = now
            self._last = -math.inf
        interval = self.refresh if self.tty else self.log_interval
        if not force and now - self._last < interval:
            return
        self._last = now
        self.fit_shown = step
        errors = []
        if step.rmse_energy_mev_per_atom is not None and math.isfinite(
            step.rmse_energy_mev_per_atom
        ):
            errors.append(f"E {step.rmse_energy_mev_per_atom:.1f} meV/atom")
        if step.rmse_forces_mev_per_ang is not None and math.isfinite(step.rmse_forces_mev_per_ang):
            errors.append(f"F {step.rmse_forces_mev_per_ang:.1f} meV/Å")
        if not self.tty:
            of = f"/{max_iterations}" if max_iterations else ""
            text = " | ".join([f"fit: iteration {step.iteration}{of}", f"loss {step.loss:.4g}"])
            self.stream.write(" | ".join([text, *errors]) + "\n")
            self.stream.flush()
            return
        elapsed = now - self._fit_start
        loss = f"loss {step.loss:.3g}"
        forms = [" ".join(["fit", loss, *errors]), f"fit {loss}", "fit", ""]

        def meter(desc: str, ncols: int) -> str:
            return tqdm.format_meter(
                step.iteration,
                max_iterations,
                elapsed,
                ncols=ncols or None,
                prefix=desc,
                unit="it",
                bar_format=(_METER if ncols else _METER_NO_BAR)
                if max_iterations
                else "{desc} iteration {n_fmt} {elapsed} {rate_fmt}",
                ascii=" #",
            ).lstrip()

        self._draw(fit_line(self.width() - 1, forms, meter))
        self.stream.flush()

    def fit_finish(self, message: str) -> None:
        """Keep the fit's last live line and add ``message`` below it."""
        self.fit_end()
        self.event(message)

    def fit_end(self) -> None:
        """The fit is over: keep its last live line (what follows starts on a new line)."""
        self._fit_start = None
        if self.tty and self._line_shown:
            self.stream.write("\n")
            self.stream.flush()
            self._line_shown = False


class FitLogFollower:
    """Follow a growing pacemaker log in a thread and show its iterations as progress.

    The trainer wraps its pacemaker call in it (pacemaker writes its log as it goes)::

        with FitLogFollower(workdir / "log.txt", progress, max_iterations=maxiter):
            run_process([... "pacemaker", "input.yaml"], workdir, ...)

    Reads only what was appended since the last poll; a missing file is waited for.
    """

    def __init__(
        self,
        log: Path | str,
        progress: Progress,
        *,
        max_iterations: int | None = None,
        poll: float = 0.5,
    ):
        self.log = Path(log)
        self.progress = progress
        self.max_iterations = max_iterations
        self.poll = poll
        self.last: FitStep | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fit-log", daemon=True)
        self._offset = 0
        self._partial = ""

    def _read_new(self) -> None:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            step = fit_progress(line)
            if step is not None:
                self.last = step
                self.progress.fit_update(step, self.max_iterations)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll):
            self._read_new()

    def __enter__(self) -> FitLogFollower:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._read_new()
        if self._partial:
            self._partial += "\n"
            self._read_new()
        if self.last is not None and self.progress.fit_shown != self.last:
            # the last iteration is always shown, whatever the log interval
            self.progress.fit_update(self.last, self.max_iterations, force=True)
        self.progress.fit_end()


# -- active learning -----------------------------------------------------------------------
def _g(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else format(float(value), fmt)


def iteration_summary(
    row: dict[str, Any],
    budget: dict[str, Any] | None = None,
    *,
    refits_done: int | None = None,
    pwx_calls: int | None = None,
) -> str:
    """One line for one active-learning iteration (an ``al_iterations`` row): candidates,
    selected, labelled, held-out errors (of the exploring potential, and of the refit once
    it exists), γ statistics, MD survival, pw.x calls so far and what the budget leaves.

    ``budget``: the recipe's ``active_learning.budget`` (``pwx_calls``, ``iterations``,
    ``wall_seconds``; None or absent = unlimited); ``refits_done``: select-label-refit
    cycles finished (what the ``iterations`` budget counts); ``pwx_calls``: the total now
    (default: the row's, recorded when the iteration was checked).
    """
    budget = budget or {}
    parts = [
        f"iteration {row['iteration']}: {row.get('walkers', 0)} walkers, "
        f"{row.get('frames', 0)} frames, {row.get('candidates', 0)} candidates, "
        f"{row.get('selected', 0)} selected, {row.get('labelled', 0)} labelled"
    ]
    e, f = row.get("heldout_rmse_energy_mev_per_atom"), row.get("heldout_rmse_forces_mev_per_ang")
    if e is not None or f is not None:
        held = (
            f"held-out ({row.get('heldout_labelled', 0)}) E {_g(e, '.1f')} meV/atom, "
            f"F {_g(f, '.0f')} meV/Å"
        )
        re_e = row.get("refit_heldout_rmse_energy_mev_per_atom")
        re_f = row.get("refit_heldout_rmse_forces_mev_per_ang")
        if re_e is not None or re_f is not None:
            held += f" (refit: E {_g(re_e, '.1f')}, F {_g(re_f, '.0f')})"
        parts.append(held)
    if row.get("gamma_max") is not None:
        median, top = _g(row.get("gamma_median"), ".3g"), _g(row["gamma_max"], ".3g")
        parts.append(f"γ median {median}, max {top}")
    if row.get("survival_fs_mean") is not None:
        parts.append(
            f"MD survival mean {_g(row['survival_fs_mean'], '.0f')} fs, min "
            f"{_g(row.get('survival_fs_min'), '.0f')} fs, {row.get('walkers_halted', 0)} halted"
        )
    calls = pwx_calls if pwx_calls is not None else row.get("pwx_calls_total")
    if calls is not None:
        limit = budget.get("pwx_calls")
        if limit is not None:
            parts.append(f"pw.x calls {calls} of {limit} ({max(int(limit) - int(calls), 0)} left)")
        else:
            parts.append(f"pw.x calls {calls} (no pw.x budget)")
    limit = budget.get("iterations")
    if limit is not None and refits_done is not None:
        parts.append(f"iterations {refits_done} of {limit}")
    wall = row.get("wall_seconds_total")
    limit = budget.get("wall_seconds")
    if wall is not None and limit is not None:
        parts.append(f"wall {_fmt_seconds(float(wall))} of {_fmt_seconds(float(limit))}")
    if row.get("stop_reason"):
        parts.append(str(row["stop_reason"]))
    return "active learning " + " | ".join(parts)
