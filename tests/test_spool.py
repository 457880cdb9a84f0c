"""The spooled tracking writer against a real `mlflow server`: bursts from many runs arrive complete
and in order, a run ends only after its metrics, and a driver killed mid-burst loses nothing and
duplicates nothing when the spool is replayed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking import SpooledWriter
from orchestrator.tracking import Tracker, is_transient_failure

pytestmark = pytest.mark.integration

KEYS = ("loss", "lr", "acc_all", "acc_head", "acc_medium", "acc_tail")


def _burst(writer: SpooledWriter, experiment_id: str, runs: int, epochs: int) -> list[str]:
    keys = [writer.new_run(experiment_id, f"run {i}", {"i": str(i)}, {"config_hash": f"h{i:04d}"}) for i in range(runs)]
    for epoch in range(1, epochs + 1):  # interleaved, as concurrent trials report
        for i, key in enumerate(keys):
            writer.log_metrics(key, {k: i + epoch / 1000 for k in KEYS}, epoch)
    for key in keys:
        writer.end_run(key, "FINISHED")
    return keys


def _check_complete(client: MlflowClient, experiment_id: str, runs: int, epochs: int) -> None:
    found = client.search_runs([experiment_id], max_results=1000)
    assert len(found) == runs  # no run created twice
    for run in found:
        assert run.info.status == "FINISHED"
        i = int(run.data.params["i"])
        for k in KEYS:
            history = client.get_metric_history(run.info.run_id, k)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (run.info.run_name, k)
            assert {m.step: m.value for m in history} == {s: pytest.approx(i + s / 1000) for s in range(1, epochs + 1)}


def test_burst_from_many_runs_arrives_complete_and_ends_after_its_metrics(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("spool_burst")
    writer = SpooledWriter(Tracker(mlflow_server), str(tmp_path / "spool"), workers=4, is_transient=is_transient_failure)
    runs, epochs = 24, 40
    started = time.perf_counter()
    _burst(writer, exp, runs, epochs)
    queued_in = time.perf_counter() - started
    assert queued_in < 5.0, f"queueing {runs * epochs} reports took {queued_in:.2f} s: it must not wait on the store"
    assert writer.state().pending_events > 0
    # While it drains: a run seen FINISHED already holds every epoch (its end was queued after them).
    seen_finished = set()
    while not writer.drained():
        for run in client.search_runs([exp], "attributes.status = 'FINISHED'", max_results=1000):
            if run.info.run_id not in seen_finished:
                assert len(client.get_metric_history(run.info.run_id, "acc_tail")) == epochs
                seen_finished.add(run.info.run_id)
        time.sleep(0.05)
    writer.close()
    _check_complete(client, exp, runs, epochs)
    assert not [p for p in (tmp_path / "spool").iterdir() if p.suffix in (".jsonl", ".ack", ".run")]  # spool emptied


DRIVER = textwrap.dedent("""
    import sys, time
    from orchestrator.tracking import SpooledWriter
    from orchestrator.tracking import Tracker, is_transient_failure
    sys.path.insert(0, {tests!r})
    from test_spool import _burst
    writer = SpooledWriter(Tracker({uri!r}), {spool!r}, workers=2, is_transient=is_transient_failure)
    _burst(writer, {exp!r}, {runs}, {epochs})
    print("queued", flush=True)
    time.sleep(600)
""")


def test_driver_killed_mid_burst_replays_the_spool_without_duplicates(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("spool_killed")
    spool = tmp_path / "spool"
    runs, epochs = 40, 60
    code = DRIVER.format(tests=str(Path(__file__).parent), uri=mlflow_server, spool=str(spool), exp=exp, runs=runs, epochs=epochs)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert proc.stdout.readline().strip() == "queued"
        deadline = time.time() + 60
        while not client.search_runs([exp], max_results=1) and time.time() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    written = client.search_runs([exp], max_results=1000)
    pending = [p for p in spool.glob("*.jsonl") if int((p.with_suffix(".ack")).read_text() if p.with_suffix(".ack").exists() else 0) < p.stat().st_size]
    assert written and pending, "the driver must die with part of the burst written and part still queued"
    assert not all(r.info.status == "FINISHED" for r in written) or len(written) < runs

    writer = SpooledWriter(Tracker(mlflow_server), str(spool), workers=4, is_transient=is_transient_failure)
    assert writer.replayed == len(pending)
    assert writer.flush(timeout=120)
    writer.close()
    _check_complete(client, exp, runs, epochs)


class SlowStore:
    """A store whose every call takes 0.2 s: the spool's own accounting under steady load (the
    real-store tests above cover what reaches MLflow)."""

    def __init__(self):
        self.steps: list[int] = []

    def create_run(self, experiment_id, name, params, tags, start_time=None):
        return "run0"

    def write_batch(self, run_id, metrics, tags):
        time.sleep(0.2)
        self.steps += [m[3] for m in metrics]

    def end_run(self, run_id, status, end_time):
        pass


def test_reported_lag_is_the_age_of_the_oldest_unwritten_event(tmp_path):
    store = SlowStore()
    writer = SpooledWriter(store, str(tmp_path / "spool"), workers=2)
    key = writer.new_run("0", "r", {}, {})
    lags = []
    for step in range(1, 61):  # 20 reports/s for 3 s, each call 0.2 s: a few events always wait
        writer.log_metrics(key, {"loss": 1.0}, step)
        time.sleep(0.05)
        lags.append(writer.state().lag_s)
    writer.end_run(key, "FINISHED")
    assert writer.flush(timeout=10)
    writer.close()
    assert sorted(set(store.steps)) == list(range(1, 61)) and len(store.steps) == 60
    # bounded by about one call plus the events queued during it, not growing with the run's age
    assert max(lags[20:]) < 1.5, lags
    assert writer.state().lag_s == 0.0


class RecordingStore:
    """Records each call; its model call fails the way a bad checkpoint would (a ValueError)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.ids = iter(f"run{i}" for i in range(100))

    def create_run(self, experiment_id, name, params, tags, start_time=None):
        run_id = next(self.ids)
        self.calls.append(("create", run_id, name))
        return run_id

    def __getattr__(self, name):
        def call(run_id, *args):
            if name == "log_model":
                raise ValueError("cannot save the final weights as an MLflow model (bad checkpoint)")
            self.calls.append((name, run_id, *args[:3]))
        return call


def test_teacher_link_dataset_plot_and_model_go_through_the_spool_in_order(tmp_path):
    """What a finished trial queues beyond metrics reaches the store from the writer's threads, in
    the run's order; the teacher's run id is resolved from its spool key; a model the store cannot
    save is one warning, and the run still ends."""
    store, warnings = RecordingStore(), []
    writer = SpooledWriter(store, str(tmp_path / "spool"), workers=2, is_transient=lambda exc: False, on_warning=warnings.append)
    teacher = writer.new_run("0", "Teacher w16 γ50 s0", {}, {})
    assert writer.flush(timeout=10)
    student = writer.new_run("0", "LTKD w16>w4 γ50 s0", {}, {})
    writer.link_teacher(student, "0", teacher, "abc", "Teacher w16 γ50 s0")
    writer.log_per_class_plot(student, [90.0, 10.0], [100, 2], "title", "per_class_accuracy.png")
    writer.log_input(student, {"name": "digits-LT γ50", "digest": "d"})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"x")
    writer.log_dir(student, str(ckpt), "checkpoint", model_path="model")
    writer.end_run(student, "FINISHED")
    assert writer.flush(timeout=10)
    writer.close()
    ops = [c[0] for c in store.calls if c[1] == "run1"]
    assert ops == ["create", "link_teacher", "log_per_class_plot", "log_input", "log_dir", "end_run"], store.calls
    assert ("link_teacher", "run1", "0", "run0", "abc") in store.calls  # the teacher's run, found by its spool key
    assert len(warnings) == 1 and "cannot save the final weights" in warnings[0]
