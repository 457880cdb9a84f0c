"""What a running sweep shows: a live view on a terminal, plain lines in a batch job's log.

The sweep driver calls a `SweepProgress` from Ray Tune callbacks, in its own thread, so every call
only updates counters and at most writes a line: no network, no waiting. On a terminal a rich Live
view (header of counts and ETA, a table of the running trials, the tracking writer's trouble if any)
redraws itself at most 4 times a second; trial outcomes also go above it as permanent lines. Off a
terminal every trial event is one flushed line, and a summary line follows every `summary_every`
seconds, written by whichever call comes first once that time has passed (no background thread).

A search's view is the same, under its own name ("search: ..."), with the search's validation metric
in the accuracy columns (`columns`) and what it maximises in the header (`goal`); pruned trials count
as done, and the header says how many of them were pruned. A trial that has not reported its first
epoch reads "starting", and every running trial shows how long its attempt has run, so the minute
a trial may spend loading its data and teacher does not look like a hang.

The ETA is measured, not guessed: each trial's seconds per epoch come from the clock between its
epoch events; trials not yet measured borrow the mean of trials of the same kind (the run name's
first word: teacher, student, kd, ltkd, ...).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.errors import first_line
from orchestrator.tracking import FINISHED, PRUNED, SKIPPED

LAG_WARN_S = 10.0  # writer lag that is worth telling: an epoch's batch normally lands within a second
LAG_REARM_S = LAG_WARN_S / 2  # re-arm the lag line only well below the threshold, so a lag near it cannot flap

_RUNNING = "running"
_PENDING = "pending"
_CLOSED = "closed"  # done, failed or skipped: no more work


# ---------------------------------------------------------------------------------------------
# Line formats: both modes print the same permanent lines, and tests grep them.


def _done_line(n: int, total: int, status: str, name: str, detail: str) -> str:
    return f"[{n:>{len(str(total))}}/{total}] {status:8s} {name:44s} {detail}"


def _started_line(name: str, attempt: int, max_attempts: int | None) -> str:
    if attempt <= 1:
        return f"        started  {name}"
    of = f"/{max_attempts}" if max_attempts else ""
    return f"        started  {name} (attempt {attempt}{of})"


def _retry_line(name: str, attempt: int, max_attempts: int, reason: str) -> str:
    return f"        retry    {name}: {reason}; attempt {attempt}/{max_attempts}, resuming from its last saved epoch"


def _duration(seconds: float) -> str:
    """42 s, 3m 05s, 1h 23m, 2d 04h: two units at most, as wide as a glance needs."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class _Trial:
    name: str
    epochs: int
    state: str = _PENDING
    attempt: int = 1
    max_attempts: int | None = None
    restarting: bool = False  # its worker died; Ray has not started the next attempt yet
    epoch: int = 0
    shown: dict[str, float] = field(default_factory=dict)  # the latest value of each of the view's columns
    started_at: float | None = None  # clock at the start of its current attempt
    measured_s: float = 0.0
    measured_epochs: int = 0
    # (clock, epoch) of its latest epoch event in this attempt. None at each (re)start: the first epoch
    # of an attempt carries data loading, restore and warm-up, which are not the speed of an epoch.
    last_epoch_at: tuple[float, int] | None = None

    @property
    def kind(self) -> str:
        words = self.name.split(maxsplit=1)
        return words[0].lower() if words else ""

    @property
    def sec_per_epoch(self) -> float | None:
        return self.measured_s / self.measured_epochs if self.measured_epochs else None


class SweepProgress:
    """Progress of one sweep, fed by the driver's Tune callbacks; see the module docstring.

    out: a text stream or a rich Console (None: sys.stdout at construction). live=None: a Live view
    when `out` is a terminal, plain lines otherwise. pending: key -> (run name, epochs) of the trials
    this sweep will run, so the ETA can count their work before they start (optional). clock must be
    monotonic seconds; wall_clock turns a clock value into the time of day printed in plain lines.
    label: what runs, the header's first word ("sweep", "search", "teachers"); columns: the metrics
    shown per running trial (a search's are val_acc_*); goal: said at the header's end (a search's
    metric, maximised).
    """

    def __init__(
        self,
        total: int,
        out: TextIO | Console | None = None,
        live: bool | None = None,
        summary_every: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        pending: dict[str, tuple[str, int]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        label: str = "sweep",
        columns: tuple[str, ...] = ("acc_all", "acc_tail"),
        goal: str = "",
    ) -> None:
        out = sys.stdout if out is None else out
        self.total = total
        self._label = label
        self._columns = columns
        self._goal = goal
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_at = clock()
        self._summary_every = summary_every
        self._next_summary_at = self._started_at + summary_every if summary_every > 0 else None
        # Live's refresh thread renders while the driver's thread updates; this lock is never held while
        # printing, since printing takes Live's lock and the refresh thread takes Live's lock first.
        self._lock = threading.Lock()

        self._trials: dict[str, _Trial] = {k: _Trial(name, int(epochs)) for k, (name, epochs) in (pending or {}).items()}
        self._pending_key_by_name = {t.name: k for k, t in self._trials.items()}
        self._running: dict[str, _Trial] = {}  # in the order they started: the table's rows
        self._max_running = 0
        self._finished = self._failed = self._skipped = 0
        self._pruned = 0  # of the finished: search trials that ASHA stopped

        self._lag_s = 0.0
        self._pending_events = 0
        self._down_since: float | None = None
        self._tracking_error = ""
        self._trouble = "server unreachable"  # what the current tracking outage is, in words
        self._lag_told = False

        self._closed = False
        self._out_broken = False
        self._live: Live | None = None
        self._console: Console | None = None
        self._file: TextIO = out.file if isinstance(out, Console) else out
        if live is None:
            live = self._is_terminal(out)
        if live:
            self._console = out if isinstance(out, Console) else _QuietOnBrokenPipeConsole(file=out)
            self._live = Live(get_renderable=self._render, console=self._console, refresh_per_second=4,
                              transient=False)
            self._live.start(refresh=True)

    @staticmethod
    def _is_terminal(out: TextIO | Console) -> bool:
        if isinstance(out, Console):
            return out.is_terminal and not out.is_dumb_terminal
        try:
            return bool(getattr(out, "isatty", lambda: False)())
        except ValueError:  # a closed stream
            return False

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # Events (public): each updates state under the lock, then writes its lines outside it.

    def trial_started(self, key: str, name: str, epochs: int, attempt: int = 1) -> None:
        self._handle(self._on_started, key, name, epochs, attempt)

    def trial_epoch(self, key: str, epoch: int, metrics: dict[str, float]) -> None:
        self._handle(self._on_epoch, key, epoch, metrics)

    def trial_retry(self, key: str, attempt: int, max_attempts: int, reason: str) -> None:
        self._handle(self._on_retry, key, attempt, max_attempts, reason)

    def trial_done(self, key: str, status: str, detail: str) -> None:
        self._handle(self._on_done, key, status, detail)

    def trial_skipped(self, name: str, reason: str) -> None:
        self._handle(self._on_skipped, name, reason)

    def tracking_state(self, lag_s: float, pending_events: int, down_since: float | None, error: str = "",
                       trouble: str = "server unreachable") -> None:
        """`trouble`: what the outage is, in words (the spool's `WriterState.trouble`)."""
        self._handle(self._on_tracking, lag_s, pending_events, down_since, error, trouble)

    def note(self, line: str) -> None:
        self._handle(lambda: [line])

    def close(self) -> None:
        """Stop the live view, which stays printed once in its final state; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            try:
                self._live.stop()
            except OSError:
                pass  # the terminal went away: nothing left to leave on it

    # -----------------------------------------------------------------------------------------
    # Read-only views for the final summary

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def eta_seconds(self) -> float | None:
        """Seconds of work left over the highest concurrency seen; None until an epoch was measured."""
        with self._lock:
            return self._eta()

    # -----------------------------------------------------------------------------------------
    # Handlers: called under the lock, return the permanent lines to write.

    def _handle(self, handler: Callable[..., list[str]], *args: object) -> None:
        with self._lock:
            lines = handler(*args)
            lines += self._due_summary()
        self._write(lines)

    def _on_started(self, key: str, name: str, epochs: int, attempt: int) -> list[str]:
        t = self._trials.get(key)
        if t is not None and t.state == _CLOSED:
            return []  # a late event for a trial already counted: counting it twice would be worse
        if t is None:
            t = self._trials[key] = _Trial(name, int(epochs))
        t.name, t.epochs, t.attempt = name, int(epochs), attempt
        t.state, t.restarting, t.last_epoch_at, t.started_at = _RUNNING, False, None, self._clock()
        self._pending_key_by_name.pop(name, None)
        self._running[key] = t
        self._max_running = max(self._max_running, len(self._running))
        return [] if self._live else [_started_line(name, attempt, t.max_attempts)]

    def _on_epoch(self, key: str, epoch: int, metrics: dict[str, float]) -> list[str]:
        t = self._running.get(key)
        if t is None:
            return []
        now = self._clock()
        if t.last_epoch_at is None or epoch < t.last_epoch_at[1]:
            t.last_epoch_at = (now, epoch)  # a (re)start, or a resume from an older checkpoint
        elif epoch > t.last_epoch_at[1]:
            since, last_epoch = t.last_epoch_at
            t.measured_s += now - since
            t.measured_epochs += epoch - last_epoch  # epochs reported in a jump share the time between
            t.last_epoch_at = (now, epoch)
        t.epoch = epoch
        t.shown.update({k: float(metrics[k]) for k in self._columns if k in metrics})
        return []

    def _on_retry(self, key: str, attempt: int, max_attempts: int, reason: str) -> list[str]:
        t = self._trials.get(key)
        if t is None or t.state == _CLOSED:
            return []
        t.attempt, t.max_attempts, t.restarting, t.last_epoch_at = attempt, max_attempts, True, None
        return [_retry_line(t.name, attempt, max_attempts, reason)]

    def _on_done(self, key: str, status: str, detail: str) -> list[str]:
        t = self._trials.get(key)
        if t is None or t.state == _CLOSED:
            return []
        t.state, t.restarting = _CLOSED, False
        self._running.pop(key, None)
        self._pending_key_by_name.pop(t.name, None)
        if status in (FINISHED, PRUNED):  # a search trial that ASHA stopped ended as searches end
            self._finished += 1
            self._pruned += status == PRUNED
        else:  # FAILED and KILLED alike: the trial has no result
            self._failed += 1
        return [_done_line(self._closed_events(), self.total, status, t.name, detail)]

    def _on_skipped(self, name: str, reason: str) -> list[str]:
        key = self._pending_key_by_name.pop(name, None)
        if key is not None:
            self._trials[key].state = _CLOSED
        self._skipped += 1
        return [_done_line(self._closed_events(), self.total, SKIPPED, name, reason)]

    def _on_tracking(self, lag_s: float, pending_events: int, down_since: float | None, error: str,
                     trouble: str = "server unreachable") -> list[str]:
        was_down_since = self._down_since
        if down_since is not None:
            self._trouble = trouble
        self._lag_s, self._pending_events, self._down_since = lag_s, pending_events, down_since
        self._tracking_error = first_line(error)
        why = f": {self._tracking_error}" if self._tracking_error else ""
        if down_since is not None:
            if was_down_since is not None:
                return []
            at = time.strftime("%H:%M:%S", time.localtime(self._wall_clock() - (self._clock() - down_since)))
            return [f"tracking: {self._trouble} since {at} ({pending_events:,} events kept on disk; retrying){why}"]
        if was_down_since is not None:
            # Catching up after an outage lags by design; tell lag only once it is past.
            self._lag_told = lag_s > LAG_WARN_S
            outage = _duration(self._clock() - was_down_since)
            again = "server reachable again" if self._trouble == "server unreachable" else "the store takes writes again"
            return [f"tracking: {again} after {outage}; writing {pending_events:,} events kept on disk"]
        if lag_s > LAG_WARN_S and not self._lag_told:
            self._lag_told = True
            return [f"tracking: writes lag {lag_s:.0f} s behind the trials ({pending_events:,} events waiting)"]
        if lag_s <= LAG_REARM_S:
            self._lag_told = False
        return []

    def _due_summary(self) -> list[str]:
        if self._live is not None or self._next_summary_at is None:
            return []
        now = self._clock()
        if now < self._next_summary_at:
            return []
        self._next_summary_at = now + self._summary_every
        c = self._counts()
        return [f"[summary] {c['done']}/{self.total} done{self._pruned_text()}, {c['running']} running, {c['pending']} pending, "
                f"{c['failed']} failed, {c['skipped']} skipped; ETA {self._eta_text()}"]

    # -----------------------------------------------------------------------------------------
    # Counts and ETA (under the lock)

    def _closed_events(self) -> int:
        return self._finished + self._failed + self._skipped

    def _counts(self) -> dict[str, int]:
        running = len(self._running)
        return {
            "done": self._finished,
            "running": running,
            "pending": max(0, self.total - self._closed_events() - running),
            "failed": self._failed,
            "skipped": self._skipped,
        }

    def _eta(self) -> float | None:
        rates_by_kind: dict[str, list[float]] = {}
        for t in self._trials.values():
            if t.sec_per_epoch is not None:
                rates_by_kind.setdefault(t.kind, []).append(t.sec_per_epoch)
        all_rates = [r for rates in rates_by_kind.values() for r in rates]
        if not all_rates:
            return None
        overall = sum(all_rates) / len(all_rates)

        def rate_of(t: _Trial) -> float:
            if t.sec_per_epoch is not None:
                return t.sec_per_epoch
            same_kind = rates_by_kind.get(t.kind)
            return sum(same_kind) / len(same_kind) if same_kind else overall

        work = sum(max(0, t.epochs - t.epoch) * rate_of(t) for t in self._running.values())
        known_pending = [t for t in self._trials.values() if t.state == _PENDING]
        work += sum(t.epochs * rate_of(t) for t in known_pending)
        # Trials the caller did not list in `pending`: as long as an average trial seen so far.
        unlisted = self._counts()["pending"] - len(known_pending)
        if unlisted > 0:
            mean_epochs = sum(t.epochs for t in self._trials.values()) / len(self._trials)
            work += unlisted * mean_epochs * overall
        return work / max(1, self._max_running)

    def _pruned_text(self) -> str:
        return f" ({self._pruned} pruned)" if self._pruned else ""

    def _eta_text(self) -> str:
        eta = self._eta()
        # No epoch timed yet (an attempt's first carries loading and warm-up): say when there will be an ETA.
        return "once an epoch is timed" if eta is None else _duration(eta)

    # -----------------------------------------------------------------------------------------
    # Output

    def _write(self, lines: list[str]) -> None:
        if not lines or self._out_broken:
            return
        try:
            if self._console is not None:
                for line in lines:  # above the live view; markup off, since names and errors hold brackets
                    self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
            else:
                self._file.write("".join(line + "\n" for line in lines))
                self._file.flush()
        except (OSError, ValueError):
            # A closed pipe or a vanished log must not end a sweep of days: stop writing, keep counting.
            self._out_broken = True

    def _render(self) -> RenderableType:
        with self._lock:
            now = self._clock()
            c = self._counts()
            header = Text(f"{self._label}: {c['done']} done{self._pruned_text()}, {c['running']} running, {c['pending']} pending, "
                          f"{c['failed']} failed, {c['skipped']} skipped of {self.total}  |  "
                          f"elapsed {_duration(now - self._started_at)}  |  ETA {self._eta_text()}"
                          + (f"  |  {self._goal}" if self._goal else ""))
            parts: list[RenderableType] = [header]
            if self._running:
                parts.append(self._running_table(now))
            tracking = self._tracking_text(now)
            if tracking is not None:
                parts.append(tracking)
            return Group(*parts)

    def _running_table(self, now: float) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("running trial", no_wrap=True, overflow="ellipsis")
        table.add_column("attempt", justify="right")
        table.add_column("progress", no_wrap=True)
        table.add_column("elapsed", justify="right")
        for key in self._columns:
            table.add_column(key, justify="right")
        table.add_column("s/epoch", justify="right")
        for t in self._running.values():
            attempt = "" if t.attempt <= 1 else f"{t.attempt}/{t.max_attempts}" if t.max_attempts else str(t.attempt)
            # Until its first epoch a trial loads its data (and teacher): "starting", not "epoch 0".
            progress = ("starting" if t.epoch == 0 else f"epoch {t.epoch}/{t.epochs}") + (", restarting" if t.restarting else "")
            table.add_row(
                t.name,
                attempt,
                progress,
                "" if t.started_at is None else _duration(now - t.started_at),
                *("" if key not in t.shown else f"{t.shown[key]:.1f}" for key in self._columns),
                "" if t.sec_per_epoch is None else f"{t.sec_per_epoch:.1f}",
            )
        return table

    def _tracking_text(self, now: float) -> Text | None:
        why = f" ({self._tracking_error})" if self._tracking_error else ""
        if self._down_since is not None:
            what = "tracking server unreachable" if self._trouble == "server unreachable" else f"tracking: {self._trouble}"
            return Text(f"{what} for {_duration(now - self._down_since)}, "
                        f"{self._pending_events:,} events kept on disk; retrying{why}", style="red")
        if self._lag_s > LAG_WARN_S:
            return Text(f"tracking lags {self._lag_s:.0f} s behind the trials, {self._pending_events:,} events waiting",
                        style="yellow")
        return None


class _QuietOnBrokenPipeConsole(Console):
    """Rich's default answer to a broken pipe is SystemExit after re-pointing stdout: not for a sweep."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
