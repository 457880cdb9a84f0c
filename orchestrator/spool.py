"""A durable queue of tracking writes between a sweep and its store, drained by background threads.

Why: one MLflow call takes 5 to 50 ms (more across a network), and Ray Tune runs its callbacks on
the sweep's event loop, so a sweep that wrote synchronously would crawl at the speed of its tracker
and die with it. Here the driver appends each event to an on-disk spool and returns at once; writer
threads drain the spool into the store, batching the epochs of a run into one call, and retry with
backoff while the store is unreachable. A sweep that dies leaves its spool behind; the next sweep of
the study replays it before it plans, so nothing it had queued is lost.

Layout: one append-only JSON-lines file per run (`<key>.jsonl`), so a run's events keep their order
and runs are drained in parallel; `<key>.ack` holds how many bytes of it the store has taken;
`<key>.run` the MLflow run id once the run exists; `files/<key>/` copies of artifact folders. A
replayed event is harmless: a metric carries the time it was queued at, and MLflow's SQL store keeps
one row per (key, step, time, value); params, tags, artifacts and a run's end are idempotent.

Besides metrics, tags and artifacts, a run's events name work for the store to do: link the run to its
teacher's run, log its dataset input, draw its per-class plot, save its checkpoint as an MLflow model.
That work runs in the writer's threads, never in the sweep's; one the store cannot do (a ValueError
from it) is one warning and is skipped.

The store is reached through an object with the `Tracker` methods used below (orchestrator.tracking);
this module imports no MLflow.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# MLflow's log_batch limits per call.
MAX_METRICS_PER_CALL = 1000
MAX_TAGS_PER_CALL = 100
READ_CHUNK = 4000  # events read from a run's file per pass: bounds the writer's memory
BACKOFF_S = (1, 2, 4, 8, 15, 30)


@dataclass
class WriterState:
    pending_events: int  # queued, not yet taken by the store
    lag_s: float  # age of the oldest queued event (0 when drained)
    down_since: float | None  # wall time of the first failure of the current outage, None when up
    error: str  # the last failure, one line


class _Run:
    """One run's spool file and how far the store has taken it."""

    def __init__(self, folder: str, key: str):
        self.key = key
        self.path = os.path.join(folder, key + ".jsonl")
        self.ack_path = os.path.join(folder, key + ".ack")
        self.run_path = os.path.join(folder, key + ".run")
        self.lock = threading.Lock()
        self.handle = None
        self.size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self.acked = int(_read(self.ack_path) or 0)
        self.run_id = _read(self.run_path) or None
        self.appended = 0  # events appended in this process (for the pending count)
        self.taken = 0  # of those, taken by the store
        self.oldest: float | None = time.time() if self.acked < self.size else None
        # A run created by another process may exist without its id here (killed between the
        # create and the write of `.run`): look it up by its spool key before creating it again.
        self.uncertain_create = self.run_id is None and self.size > 0
        self.ended = False

    def append(self, line: bytes) -> None:
        with self.lock:
            if self.handle is None:
                self.handle = open(self.path, "ab")
            self.handle.write(line)
            self.handle.flush()  # in the kernel's cache: survives a killed driver
            self.size += len(line)
            self.appended += 1
            if self.oldest is None:
                self.oldest = time.time()

    def read(self, limit: int) -> list[tuple[dict, int]]:
        """Up to `limit` (event, end offset) pairs after the acknowledged offset; whole lines only."""
        with self.lock:
            start, end = self.acked, self.size
        if start >= end:
            return []
        out = []
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            while len(out) < limit and offset < end:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                out.append((json.loads(line), offset))
        return out

    def ack(self, offset: int, events: int, next_queued: float | None = None) -> None:
        """The store has taken the file up to `offset`; `next_queued`: when the next event was queued."""
        with self.lock:
            self.acked = offset
            self.taken += events
            more = offset < self.size
        if more and next_queued is None:
            next_queued = self._queued_at(offset)  # appended while the call ran: read when
        with self.lock:
            self.oldest = (next_queued or time.time()) if self.acked < self.size else None
        _write(self.ack_path, str(offset))

    def _queued_at(self, offset: int) -> float | None:
        with open(self.path, "rb") as f:
            f.seek(offset)
            line = f.readline()
        try:
            return float(json.loads(line)["q"]) if line.endswith(b"\n") else None
        except (ValueError, KeyError):
            return None

    def set_run_id(self, run_id: str) -> None:
        self.run_id = run_id
        self.uncertain_create = False
        _write(self.run_path, run_id)

    @property
    def drained(self) -> bool:
        return self.acked >= self.size

    def close(self) -> None:
        with self.lock:
            if self.handle is not None:
                self.handle.close()
                self.handle = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class SpooledWriter:
    """Queue run events on disk and write them to the store from `workers` background threads.

    Every method that queues returns without touching the network. `key` names a run within the
    spool (opaque; `new_run` and `adopt_run` hand one out). A run's events are written in the order
    they were queued; different runs are written in parallel.
    """

    def __init__(self, store, folder: str, workers: int = 4, is_transient: Callable[[BaseException], bool] | None = None,
                 on_warning: Callable[[str], None] | None = None):
        self.store = store
        self.folder = folder
        os.makedirs(os.path.join(folder, "files"), exist_ok=True)
        self.is_transient = is_transient or (lambda exc: True)
        self.on_warning = on_warning or (lambda line: None)
        self._runs: dict[str, _Run] = {}
        self._ids: dict[str, str] = {}  # key -> MLflow run id, kept after a run's spool files go
        self._lock = threading.Lock()
        # One queue of runs with unwritten events, oldest first, shared by the threads; a run is
        # drained by one thread at a time (its events stay in order), so a slow call holds up only it.
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._inflight: set[str] = set()
        self._stopped = threading.Event()  # backoff sleeps wake only for close(), not for new events
        self._wake = threading.Condition(self._lock)
        self._busy = 0
        self._stopping = False
        self.down_since: float | None = None
        self.error = ""
        self.replayed = 0  # runs found unfinished in the spool when it was opened
        for name in sorted(os.listdir(folder)):
            if name.endswith(".jsonl"):
                run = self._run(name[: -len(".jsonl")])
                if not run.drained:
                    self.replayed += 1
                    self._schedule(run.key)
                else:
                    self._forget(run)
        self._threads = [threading.Thread(target=self._work, name=f"ltkd-tracking-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    # -- queueing (the sweep's thread) --------------------------------------------------------------
    def new_run(self, experiment_id: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        key = os.urandom(8).hex()
        self._append(key, {"op": "start", "experiment_id": experiment_id, "name": run_name, "params": params,
                           "tags": {**tags, "spool_key": key}})
        return key

    def adopt_run(self, run_id: str, tags: dict[str, str]) -> str:
        """Continue an existing run (a trial resumed after its sweep stopped): mark it running again."""
        key = "run-" + run_id
        with self._lock:
            run = self._run(key)
        if run.run_id is None:
            run.set_run_id(run_id)
        self._ids[key] = run_id
        self._append(key, {"op": "reopen", "tags": tags})
        return key

    def log_metrics(self, key: str, metrics: dict[str, float], step: int) -> None:
        self._append(key, {"op": "metrics", "step": int(step), "t": int(time.time() * 1000),
                           "metrics": {k: float(v) for k, v in metrics.items()}})

    def set_tags(self, key: str, tags: dict[str, Any]) -> None:
        self._append(key, {"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_json(self, key: str, data: Any, artifact_file: str) -> None:
        self._append(key, {"op": "json", "data": data, "file": artifact_file})

    def log_dir(self, key: str, local_dir: str, artifact_path: str, model_path: str | None = None) -> None:
        """Copy the folder into the spool now (its source may be deleted before the store is back).
        `model_path`: also log the checkpoint it holds as a model there (`store.log_model`)."""
        copy = os.path.join(self.folder, "files", key, f"{os.urandom(4).hex()}-{os.path.basename(artifact_path)}")
        shutil.copytree(local_dir, copy)
        self._append(key, {"op": "dir", "src": os.path.relpath(copy, self.folder), "path": artifact_path})
        if model_path:
            self._append(key, {"op": "model", "src": os.path.relpath(copy, self.folder), "path": model_path})

    def log_input(self, key: str, dataset: dict[str, Any]) -> None:
        """The run's training data (`store.log_input`)."""
        self._append(key, {"op": "input", "dataset": dataset})

    def log_per_class_plot(self, key: str, per_class: list[float], class_counts: list[int], title: str, artifact_file: str) -> None:
        """Drawn by the writer's thread (`store.log_per_class_plot`), not the sweep's."""
        self._append(key, {"op": "plot", "per_class": per_class, "class_counts": class_counts, "title": title, "file": artifact_file})

    def link_teacher(self, key: str, experiment_id: str, teacher_key: str | None, teacher_hash: str, teacher_name: str) -> None:
        """Link the run to its teacher's run: the teacher's spool key when this sweep runs it (its
        MLflow id is known once written), else the store finds the run by `teacher_hash`."""
        self._append(key, {"op": "link", "experiment_id": experiment_id, "teacher_key": teacher_key, "teacher_hash": teacher_hash,
                           "teacher_name": teacher_name})

    def end_run(self, key: str, status: str) -> None:
        self._append(key, {"op": "end", "status": status, "t": int(time.time() * 1000)})

    def run_id(self, key: str) -> str | None:
        """The MLflow run id of a key, once the store has created the run."""
        run = self._runs.get(key)
        return self._ids.get(key) or (run.run_id if run else None)

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> WriterState:
        now = time.time()
        with self._lock:
            runs = list(self._runs.values())
        pending = sum(max(0, r.appended - r.taken) for r in runs) + sum(1 for r in runs if r.appended == 0 and not r.drained)
        oldest = [r.oldest for r in runs if r.oldest is not None and not r.drained]
        return WriterState(pending, now - min(oldest) if oldest else 0.0, self.down_since, self.error)

    def drained(self) -> bool:
        with self._lock:
            return all(r.drained for r in self._runs.values()) and not self._queued and self._busy == 0

    def flush(self, timeout: float | None = None, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait until every queued event is in the store; False on timeout or when `give_up()` says so."""
        deadline = None if timeout is None else time.time() + timeout
        while not self.drained():
            if (deadline is not None and time.time() > deadline) or (give_up is not None and give_up()):
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop the threads (what is not written stays in the spool for the next sweep)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        self._stopped.set()
        for t in self._threads:
            t.join(timeout=60)
        for run in list(self._runs.values()):
            run.close()

    # -- internals ------------------------------------------------------------------------------------
    def _run(self, key: str) -> _Run:
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(self.folder, key)
        return run

    def _append(self, key: str, event: dict) -> None:
        event["q"] = time.time()
        line = (json.dumps(event, separators=(",", ":"), allow_nan=True) + "\n").encode()
        with self._lock:
            run = self._run(key)
        run.append(line)
        self._schedule(key)

    def _schedule(self, key: str, front: bool = False) -> None:
        with self._lock:
            if key in self._queued:
                return
            if key in self._inflight:
                return  # its thread looks again when its call returns
            self._queued.add(key)
            self._queue.appendleft(key) if front else self._queue.append(key)
            self._wake.notify()

    def _forget(self, run: _Run) -> None:
        """A run that ended and is fully written: its spool files go."""
        run.close()
        with self._lock:
            self._runs.pop(run.key, None)
        for path in (run.path, run.ack_path, run.run_path):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        shutil.rmtree(os.path.join(self.folder, "files", run.key), ignore_errors=True)

    def _work(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait(timeout=1.0)
                if self._stopping:
                    return
                key = self._queue.popleft()
                self._queued.discard(key)
                self._inflight.add(key)
                self._busy += 1
                run = self._runs.get(key)
            retry_after = 0.0
            try:
                if run is not None:
                    self._drain(run)
                    failures = 0
                    if self.down_since is not None:
                        self.down_since, self.error = None, ""
            except Exception as exc:  # noqa: BLE001 - sorted below: transient (retry) or a run the store refuses
                if self.is_transient(exc):
                    failures += 1
                    self.error = _one_line(exc)
                    if self.down_since is None:
                        self.down_since = time.time()
                    retry_after = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                else:
                    self.on_warning(f"tracking: the store refused run {key} ({_one_line(exc)}); its queued events are dropped")
                    run.ack(run.size, 0)
                    run.ended = True
            with self._lock:
                self._busy -= 1
                self._inflight.discard(key)
            if run is None:
                continue
            if retry_after:
                self._schedule(key, front=True)
                self._stopped.wait(retry_after)
            elif not run.drained:
                self._schedule(key)
            elif run.ended:
                self._forget(run)

    def _drain(self, run: _Run) -> None:
        """Write one chunk of the run's events, acknowledging each call as it succeeds."""
        events = run.read(READ_CHUNK)
        i = 0
        while i < len(events):
            event, offset = events[i]
            op = event["op"]
            if op in ("metrics", "tags"):
                j, metrics, tags = i, [], {}
                while j < len(events) and events[j][0]["op"] in ("metrics", "tags"):
                    e = events[j][0]
                    more = len(e.get("metrics", ())) if e["op"] == "metrics" else len(e["tags"])
                    if (metrics or tags) and (len(metrics) + more > MAX_METRICS_PER_CALL or len(tags) + more > MAX_TAGS_PER_CALL):
                        break
                    if e["op"] == "metrics":
                        metrics += [(k, v, e["t"], e["step"]) for k, v in e["metrics"].items()]
                    else:
                        tags.update(e["tags"])
                    j += 1
                self._call(run, lambda: self.store.write_batch(run.run_id, metrics, tags))
                run.ack(events[j - 1][1], j - i, events[j][0]["q"] if j < len(events) else None)
                i = j
                continue
            if op == "start":
                self._create(run, event)
            elif op == "reopen":
                self._call(run, lambda: self.store.reopen_run(run.run_id, event["tags"]))
            elif op == "json":
                self._call(run, lambda: self.store.log_json(run.run_id, event["data"], event["file"]))
            elif op == "dir":
                self._call(run, lambda: self.store.log_dir(run.run_id, os.path.join(self.folder, event["src"]), event["path"]))
            elif op == "model":
                self._call(run, lambda: self.store.log_model(run.run_id, os.path.join(self.folder, event["src"]), event["path"]))
            elif op == "input":
                self._call(run, lambda: self.store.log_input(run.run_id, event["dataset"]))
            elif op == "plot":
                self._call(run, lambda: self.store.log_per_class_plot(run.run_id, event["per_class"], event["class_counts"],
                                                                      event["title"], event["file"]))
            elif op == "link":
                teacher_run = self.run_id(event["teacher_key"]) if event.get("teacher_key") else None
                self._call(run, lambda: self.store.link_teacher(run.run_id, event["experiment_id"], teacher_run, event["teacher_hash"],
                                                                event["teacher_name"]))
            elif op == "end":
                self._call(run, lambda: self.store.end_run(run.run_id, event["status"], event["t"]))
                run.ended = True
            run.ack(offset, 1, events[i + 1][0]["q"] if i + 1 < len(events) else None)
            i += 1
        if events and not run.ended and events[-1][0]["op"] == "end":
            run.ended = True

    def _create(self, run: _Run, event: dict) -> None:
        if run.run_id is not None:
            return
        if run.uncertain_create:
            found = self.store.find_run_by_tag(event["experiment_id"], "spool_key", run.key)
            if found:  # created by a process that died before it wrote `.run`: maybe without its params
                self.store.log_params(found, event["params"])
                run.set_run_id(found)
                self._ids[run.key] = found
                return
        run.uncertain_create = True  # from here until `.run` is written, a create may have happened
        # Started when queued: a run written late (a replayed spool) keeps its real start, and its
        # duration in the UI is not negative.
        run.set_run_id(self.store.create_run(event["experiment_id"], event["name"], event["params"], event["tags"],
                                             start_time=int(event["q"] * 1000)))
        self._ids[run.key] = run.run_id

    def _call(self, run: _Run, fn: Callable[[], Any]) -> None:
        """One store call; a permanent refusal (the store rejects the event itself) is reported and
        the event skipped, so one bad value never blocks a run's queue."""
        if run.run_id is None:
            self.on_warning(f"tracking: run {run.key} has no MLflow run (its start was lost); event skipped")
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            if self.is_transient(exc):
                raise
            self.on_warning(f"tracking: the store refused an event of run {run.run_id}: {_one_line(exc)}")
