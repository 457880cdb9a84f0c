"""SweepProgress: the exact lines a batch log gets, the counts, the measured ETA, the live view."""

import io
import re
import time

import pytest
from rich.console import Console

from orchestrator.execution.progress import SweepProgress

TEACHER = "teacher resnet32 g100 s0"
STUDENT = "student resnet8 g100 s0"
KD0 = "kd resnet32>resnet8 g100 s0"
KD1 = "kd resnet32>resnet8 g100 s1"


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def utc(monkeypatch):
    # Plain lines print the time of day of an outage: pin the zone so the expected text is fixed.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def lines_of(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_plain_mode_prints_one_line_per_trial_event(utc):
    clock, out = FakeClock(), io.StringIO()
    wall = lambda: 9 * 3600 + clock.t  # noqa: E731 - clock 0 is 09:00:00 UTC
    pending = {"t": (TEACHER, 10), "s": (STUDENT, 10), "k0": (KD0, 10), "k1": (KD1, 10)}
    p = SweepProgress(4, out=out, summary_every=300, clock=clock, wall_clock=wall, pending=pending)

    p.trial_started("t", TEACHER, 10)
    p.trial_started("s", STUDENT, 10)
    for epoch in range(1, 5):
        clock.t = 10.0 * epoch
        evaluated = {"acc_all": 30.0 + epoch, "acc_tail": 5.0 + epoch} if epoch % 2 == 0 else {}
        p.trial_epoch("t", epoch, {"loss": 1.0, **evaluated})
        p.trial_epoch("s", epoch, {"loss": 1.0, **evaluated})
    assert lines_of(out) == [f"        started  {TEACHER}", f"        started  {STUDENT}"]  # epochs print nothing

    clock.t = 299.0
    p.trial_epoch("no-such-trial", 1, {})  # ignored, and the summary is not due yet
    assert len(lines_of(out)) == 2
    clock.t = 300.0
    p.trial_epoch("no-such-trial", 1, {})  # the first call after the interval writes the summary
    # ETA: 2 running x 6 epochs left x 10 s + 2 pending kd x 10 epochs x 10 s (overall mean) = 320 s, over 2 at once
    assert lines_of(out)[2] == "[summary] 0/4 done, 2 running, 2 pending, 0 failed, 0 skipped; ETA 2m 40s"
    clock.t = 301.0
    p.note("a note")  # the next summary is due 300 s after the last one, not now

    clock.t = 310.0
    p.trial_retry("t", 2, 3, "worker died: node lost")
    clock.t = 320.0
    p.trial_started("t", TEACHER, 10, attempt=2)

    clock.t = 330.0
    p.tracking_state(20.0, 1234, down_since=325.0, error="ConnectionRefusedError: [Errno 111] refused\ntraceback...")
    clock.t = 340.0
    p.tracking_state(40.0, 1300, down_since=325.0)  # still down: nothing new to say
    clock.t = 385.0
    p.tracking_state(30.0, 1500, down_since=None)  # back; catching up is no lag news
    p.tracking_state(25.0, 1000, down_since=None)
    clock.t = 386.0
    p.tracking_state(2.0, 0, down_since=None)
    clock.t = 390.0
    p.tracking_state(12.4, 80, down_since=None)
    p.tracking_state(15.0, 90, down_since=None)  # told once per crossing

    clock.t = 400.0
    p.trial_done("s", "FINISHED", "all  71.2  tail  40.3  (400.0 s)")
    p.trial_done("s", "FINISHED", "again")  # a duplicate is not counted twice
    p.trial_done("t", "FAILED", "RuntimeError: CUDA error")
    p.trial_skipped(KD0, "its teacher did not finish")
    p.trial_skipped(KD1, "its teacher did not finish")

    clock.t = 601.0
    p.note("sweep over")
    p.close()
    p.close()

    assert lines_of(out)[3:] == [
        "a note",
        f"        retry    {TEACHER}: worker died: node lost; attempt 2/3, resuming from its last saved epoch",
        f"        started  {TEACHER} (attempt 2/3)",
        "tracking: server unreachable since 09:05:25 (1,234 events kept on disk; retrying): "
        "ConnectionRefusedError: [Errno 111] refused",
        "tracking: server reachable again after 1m 00s; writing 1,500 events kept on disk",
        "tracking: writes lag 12 s behind the trials (80 events waiting)",
        "[1/4] FINISHED " + STUDENT.ljust(44) + " all  71.2  tail  40.3  (400.0 s)",
        "[2/4] FAILED   " + TEACHER.ljust(44) + " RuntimeError: CUDA error",
        "[3/4] SKIPPED  " + KD0.ljust(44) + " its teacher did not finish",
        "[4/4] SKIPPED  " + KD1.ljust(44) + " its teacher did not finish",
        "sweep over",
        "[summary] 1/4 done, 0 running, 0 pending, 1 failed, 2 skipped; ETA 0 s",
    ]
    assert p.counts() == {"done": 1, "running": 0, "pending": 0, "failed": 1, "skipped": 2}


def test_done_line_matches_the_sweeps_format_with_a_right_aligned_counter():
    clock, out = FakeClock(), io.StringIO()
    p = SweepProgress(12, out=out, clock=clock)
    p.trial_started("a", "ltkd (beta=2) resnet8 g100 s0", 5)
    p.trial_done("a", "KILLED", "stopped")
    assert lines_of(out)[-1] == "[ 1/12] KILLED   " + "ltkd (beta=2) resnet8 g100 s0".ljust(44) + " stopped"
    assert p.counts() == {"done": 0, "running": 0, "pending": 11, "failed": 1, "skipped": 0}


def run_epochs(p: SweepProgress, clock: FakeClock, keys: list[str], epochs: range, seconds_each: float) -> None:
    for epoch in epochs:
        for key in keys:
            p.trial_epoch(key, epoch, {"loss": 0.5})
        clock.t += seconds_each


def test_eta_counts_running_and_pending_work_over_the_concurrency_seen():
    clock = FakeClock(100.0)
    pending = {"a": ("kd r32>r8 s0", 10), "b": ("kd r32>r8 s1", 10), "c": ("kd r32>r8 s2", 10)}
    p = SweepProgress(3, out=io.StringIO(), clock=clock, pending=pending)
    p.trial_started("a", "kd r32>r8 s0", 10)
    p.trial_started("b", "kd r32>r8 s1", 10)
    assert p.eta_seconds() is None
    run_epochs(p, clock, ["a", "b"], range(1, 2), 2.0)
    assert p.eta_seconds() is None  # the first epoch of an attempt carries start-up: not measured

    run_epochs(p, clock, ["a", "b"], range(2, 6), 2.0)
    # 2 s/epoch; running: 5 + 5 epochs left; pending c: 10 epochs at the kd mean; 2 ran at once
    assert p.eta_seconds() == pytest.approx((10 + 10 + 20) / 2)

    # A retry's dead time and the restart's first epoch do not count as epoch time.
    p.trial_retry("a", 2, 3, "worker died")
    clock.t += 500.0
    p.trial_started("a", "kd r32>r8 s0", 10, attempt=2)
    clock.t += 60.0
    p.trial_epoch("a", 4, {})  # resumed from its epoch-4 checkpoint
    clock.t += 2.0
    p.trial_epoch("a", 5, {})
    # a: 5 left at 2 s; b: 5 left at 2 s; c: 10 at 2 s
    assert p.eta_seconds() == pytest.approx(20.0)

    # The divisor is the most trials seen running at once, not those running right now.
    p.trial_done("b", "FINISHED", "ok")
    assert p.eta_seconds() == pytest.approx((10 + 20) / 2)


def test_a_retry_alone_restarts_the_epoch_timing():
    # Whether or not the sweep reports the new attempt's start, the dead time is no epoch time.
    clock = FakeClock()
    p = SweepProgress(1, out=io.StringIO(), clock=clock)
    p.trial_started("a", "kd a", 10)
    run_epochs(p, clock, ["a"], range(1, 6), 2.0)
    p.trial_retry("a", 2, 3, "worker died")
    clock.t += 500.0
    p.trial_epoch("a", 5, {})  # resumed from an every-epoch checkpoint: the same epoch number again
    clock.t += 2.0
    p.trial_epoch("a", 6, {})
    assert p.eta_seconds() == pytest.approx(4 * 2.0)


def test_a_repeated_epoch_report_adds_no_epoch_and_keeps_its_time():
    clock = FakeClock()
    p = SweepProgress(1, out=io.StringIO(), clock=clock)
    p.trial_started("s", "student c", 10)
    for epoch in range(1, 6):
        p.trial_epoch("s", epoch, {"loss": 1.0})
        clock.t += 1.0
        p.trial_epoch("s", epoch, {"acc_all": 50.0})  # the same epoch again, e.g. its evaluation
        clock.t += 3.0
    # 4 s between distinct epochs: 5 epochs left at 4 s, one trial at a time
    assert p.eta_seconds() == pytest.approx(20.0)


def test_eta_uses_the_kind_mean_then_the_overall_mean_for_unmeasured_trials():
    clock = FakeClock()
    pending = {"k": ("kd b", 10), "s": ("student c", 10), "p": ("kd d", 10), "t": ("teacher e", 10)}
    p = SweepProgress(4, out=io.StringIO(), clock=clock, pending=pending)
    p.trial_started("k", "kd b", 10)
    p.trial_started("s", "student c", 10)
    for epoch in range(1, 6):  # kd at 2 s/epoch
        clock.t = 2.0 * epoch
        p.trial_epoch("k", epoch, {})
    for epoch in range(1, 6):  # student at 4 s/epoch
        clock.t = 4.0 * epoch
        p.trial_epoch("s", epoch, {})
    # running: kd 5 x 2 + student 5 x 4; pending kd d: 10 x kd mean 2; teacher e: 10 x overall mean 3
    assert p.eta_seconds() == pytest.approx((10 + 20 + 20 + 30) / 2)


def test_eta_without_a_pending_list_counts_unlisted_trials_as_average_ones():
    clock = FakeClock()
    p = SweepProgress(3, out=io.StringIO(), clock=clock)
    p.trial_started("a", "kd a", 10)
    p.trial_started("b", "kd b", 10)
    run_epochs(p, clock, ["a", "b"], range(1, 6), 2.0)
    assert p.eta_seconds() == pytest.approx((10 + 10 + 10 * 2) / 2)


def test_unknown_keys_and_a_closed_pipe_do_not_raise():
    class ClosedPipe(io.StringIO):
        writes = 0

        def write(self, s):
            ClosedPipe.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    clock = FakeClock()
    p = SweepProgress(2, out=ClosedPipe(), clock=clock, summary_every=1)
    p.trial_epoch("ghost", 3, {"acc_all": 1.0})
    p.trial_retry("ghost", 2, 3, "died")
    p.trial_done("ghost", "FAILED", "never started")
    p.trial_started("a", "kd a", 4)
    clock.t = 5.0
    p.trial_done("a", "FINISHED", "ok")
    p.trial_skipped("kd b", "its teacher did not finish")
    p.close()
    p.close()
    assert ClosedPipe.writes == 1  # once broken, it stops trying
    assert p.counts() == {"done": 1, "running": 0, "pending": 0, "failed": 0, "skipped": 1}


def test_live_view_shows_running_trials_and_a_red_line_while_tracking_is_down():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system="standard")
    clock = FakeClock(1000.0)
    p = SweepProgress(2, out=console, clock=clock, pending={"a": ("ltkd r32>r8 g100 s0", 10), "b": ("kd r32>r8 g100 s0", 10)})
    try:
        p.trial_started("a", "ltkd r32>r8 g100 s0", 10)
        p.trial_started("b", "kd r32>r8 g100 s0", 10)
        for epoch in range(1, 4):
            clock.t += 7.5
            p.trial_epoch("a", epoch, {"loss": 0.3, "acc_all": 44.0 + epoch, "acc_tail": 12.3})
        p.trial_done("b", "FINISHED", "all  70.0  tail  30.0  (12.0 s)")
        p.tracking_state(60.0, 1234, down_since=clock.t - 42)
    finally:
        p.close()
    p.close()
    text = buf.getvalue()

    assert "started  " not in text  # the table shows starts; only outcomes are permanent lines
    assert "[1/2] FINISHED " + "kd r32>r8 g100 s0".ljust(44) + " all  70.0  tail  30.0  (12.0 s)" in text
    final = text[text.rindex("sweep: "):]  # the last frame, left printed by close()
    assert "sweep: 1 done, 1 running, 0 pending, 0 failed, 0 skipped of 2" in final
    assert "ltkd r32>r8 g100 s0" in final
    assert "epoch 3/10" in final
    assert "47.0" in final and "12.3" in final and "7.5" in final  # acc_all, acc_tail, s/epoch
    assert "\x1b[31mtracking server unreachable for 42 s, 1,234 events kept on disk; retrying" in final


def test_live_view_hides_the_tracking_line_when_the_writer_keeps_up():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system="standard")
    clock = FakeClock()
    p = SweepProgress(1, out=console, clock=clock)
    try:
        p.trial_started("a", "student r8 g100 s0", 10)
        p.tracking_state(3.0, 12, down_since=None)
    finally:
        p.close()
    assert "tracking" not in buf.getvalue()

    buf2 = io.StringIO()
    p2 = SweepProgress(1, out=Console(file=buf2, force_terminal=True, width=140, color_system="standard"), clock=clock)
    try:
        p2.tracking_state(25.0, 300, down_since=None)
    finally:
        p2.close()
    assert "tracking lags 25 s behind the trials, 300 events waiting" in buf2.getvalue()


def test_live_is_chosen_only_for_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain = SweepProgress(1, out=io.StringIO())
    plain.trial_started("a", "kd a", 3)
    assert plain._live is None
    tty = Tty()
    live = SweepProgress(1, out=tty, clock=FakeClock())
    try:
        assert live._live is not None
    finally:
        live.close()


def test_a_searchs_live_view_names_it_shows_its_validation_metric_and_a_trial_starting():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    clock = FakeClock(500.0)
    p = SweepProgress(3, out=console, clock=clock, label="search", columns=("val_acc_all", "val_acc_tail"),
                      goal="maximising val_acc_tail (validation split)")
    try:
        p.trial_started("a", "search ltkd w32>w8 g10 #0", 16)
        p.trial_started("b", "search ltkd w32>w8 g10 #1", 16)
        clock.t += 23  # loading its data and teacher: no epoch yet
        p.trial_epoch("a", 1, {"loss": 0.9, "val_acc_all": 41.0, "val_acc_tail": 12.5, "acc_all": 99.0})
        p._live.refresh()
        starting = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # the frames, without cursor moves
        clock.t += 4
        p.trial_started("c", "search ltkd w32>w8 g10 #2", 16)
        p.trial_done("c", "PRUNED", "pruned by ASHA after epoch 2 (val_acc_tail 3.3 at epoch 2)")
    finally:
        p.close()
    text = buf.getvalue()
    frame = starting[starting.rindex("search: "):]
    header, columns, first, second = [line.rstrip() for line in frame.splitlines()[:4]]
    assert header == ("search: 0 done, 2 running, 1 pending, 0 failed, 0 skipped of 3  |  elapsed 23 s  |  ETA once an epoch is timed  |  "
                      "maximising val_acc_tail (validation split)")
    assert columns.split() == ["running", "trial", "attempt", "progress", "elapsed", "val_acc_all", "val_acc_tail", "s/epoch"]
    assert first.split()[-5:] == ["1/16", "23", "s", "41.0", "12.5"]  # the validation metric, not acc_all
    assert second.split()[-3:] == ["starting", "23", "s"]  # a sign of life before its first epoch ends
    final = text[text.rindex("search: "):]
    assert final.startswith("search: 1 done (1 pruned), 2 running, 0 pending, 0 failed, 0 skipped of 3  |  elapsed 27 s")
    assert "sweep" not in text


def test_plain_summary_counts_pruned_trials_among_the_done():
    clock, out = FakeClock(), io.StringIO()
    p = SweepProgress(2, out=out, summary_every=60, clock=clock)
    p.trial_started("a", "search ltkd w32>w8 g10 #0", 16)
    p.trial_done("a", "PRUNED", "pruned by ASHA after epoch 2 (val_acc_tail 3.3 at epoch 2)")
    clock.t = 60.0
    p.note("tick")
    assert lines_of(out)[-1] == "[summary] 1/2 done (1 pruned), 0 running, 1 pending, 0 failed, 0 skipped; ETA once an epoch is timed"
