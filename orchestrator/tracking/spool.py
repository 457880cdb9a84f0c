"""A durable queue of tracking writes between a sweep and its store, drained by background threads.

Why: one MLflow call takes 5 to 50 ms (more across a network), and Ray Tune runs its callbacks on
the sweep's event loop, so a sweep that wrote synchronously would crawl at the speed of its tracker
and die with it. Here the driver appends each event to an on-disk spool and returns at once; writer
threads drain the spool into the store, batching the epochs of a run into one call, and retry with
backoff while the store cannot take writes. A sweep that dies leaves its spool behind; the next sweep
of the study replays it before it plans, so nothing it had queued is lost.

Layout: one append-only file per run (`<key>.jsonl`), so a run's events keep their order and runs are
drained in parallel; `<key>.ack` holds how many bytes of it the store has taken; `<key>.run` the
MLflow run id once the run exists; `files/<key>/` copies of artifact folders. A replayed event is
harmless: a metric carries the time it was queued at, and MLflow's SQL store keeps one row per (key,
step, time, value); params, tags, artifacts and a run's end are idempotent.

Records are framed like a write-ahead log: each line is `JSON<TAB>crc32\\n` (lines of the earlier,
unframed layout are read as plain JSON). A last line without its newline is what a crash mid-append
leaves: when a spool is opened it is cut off with one notice (its event never reached the store, and
the trial that queued it reports it again). A complete line that does not parse or whose checksum
differs is moved to `quarantine` (named in one notice) and skipped; the run's other events are
written. So a replay always ends.

Identity: a writer may be given the identity of its store (`store_identity`); each run's first event
carries it, and a run queued for another store is not written into this one (its file goes to the
quarantine folder, named in one notice).

Fencing: `fence` (the study's lease) is asked before every store call; once it raises `Fenced` the
writer writes nothing more, drops what is queued after (the sweep that took over continues those
runs), and leaves its spool files as they are for the successor to replay or remove.

Besides metrics, tags and artifacts, a run's events name work for the store to do: link the run to its
teacher's run, log its dataset input, draw its per-class plot, save its checkpoint as an MLflow model.
That work runs in the writer's threads, never in the sweep's; one the store cannot do (a ValueError
from it) is one warning and is skipped.

The store is reached through `RunStore`, the methods of `Tracker` this writer calls (the tests' fake
stores implement it too); this module imports no MLflow.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from orchestrator.errors import describe as describe_error

# MLflow's log_batch limits per call.
MAX_METRICS_PER_CALL = 1000
MAX_TAGS_PER_CALL = 100
READ_CHUNK = 4000  # events read from a run's file per pass: bounds the writer's memory
BACKOFF_S = (1, 2, 4, 8, 15, 30)
QUARANTINE = "quarantine"
# Ops after which the run's outcome is decided in the store: asked of the fence with `decisive=True`.
DECISIVE_OPS = ("start", "reopen", "end")


@runtime_checkable
class RunStore(Protocol):
    """What the writer needs of a tracking store (`Tracker` is the real one). The writer's threads call
    it, up to `workers` at once, each on its own runs: never two calls for one run at a time. A call
    raises on failure: `is_transient` decides whether it is retried, a ValueError skips the event."""

    def create_run(self, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
                   start_time: int | None = None) -> str: ...

    def reopen_run(self, run_id: str, tags: dict[str, str]) -> None: ...

    def find_run_by_tag(self, experiment_id: str, key: str, value: str) -> str | None: ...

    def log_params(self, run_id: str, params: dict[str, Any]) -> None: ...

    def write_batch(self, run_id: str, metrics: list[tuple[str, float, int, int]], tags: dict[str, str]) -> None: ...

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None: ...

    def log_dir(self, run_id: str, local_dir: str, artifact_path: str) -> None: ...

    def log_model(self, run_id: str, checkpoint_dir: str, artifact_path: str) -> None: ...

    def log_input(self, run_id: str, dataset: dict[str, Any]) -> None: ...

    def log_per_class_plot(self, run_id: str, per_class: list[float], class_counts: list[int], title: str,
                           artifact_file: str) -> None: ...

    def log_group_curves(self, run_id: str, metrics: list[str], title: str, artifact_file: str) -> None: ...

    def link_teacher(self, run_id: str, experiment_id: str, teacher_run: str | None, teacher_hash: str,
                     teacher_name: str) -> None: ...

    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None: ...


class Fenced(Exception):
    """This writer may no longer write to the store (its sweep lost the study's lease, or the store
    it was opened for is gone); the message says why, in one line."""


@dataclass
class WriterState:
    pending_events: int  # queued, not yet taken by the store
    lag_s: float  # age of the oldest queued event (0 when drained)
    down_since: float | None  # wall time of the first failure of the current outage, None when up
    error: str  # the last failure, one line
    trouble: str = "server unreachable"  # what the current outage is, in words (`describe`)


def frame(event: dict) -> bytes:
    """One spool record: compact JSON (never a raw tab in it), a tab, its CRC-32, a newline."""
    body = json.dumps(event, separators=(",", ":"), allow_nan=True).encode()
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode() + b"\n"


def unframe(line: bytes) -> dict:
    """The event of a whole record (ValueError when it is corrupt); an unframed line is plain JSON."""
    body = line.rstrip(b"\n")
    if b"\t" in body:
        body, crc = body.rsplit(b"\t", 1)
        if crc != f"{zlib.crc32(body):08x}".encode():
            raise ValueError("checksum mismatch")
    event = json.loads(body)
    if not isinstance(event, dict) or not isinstance(event.get("op"), str):
        raise ValueError("not a spool event")
    return event


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
        self.acked = min(int(_read(self.ack_path) or 0), self.size)
        self.run_id = _read(self.run_path) or None
        self.appended = 0  # events appended in this process (for the pending count)
        self.taken = 0  # of those, taken by the store
        self.oldest: float | None = time.time() if self.acked < self.size else None
        # A run created by another process may exist without its id here (killed between the
        # create and the write of `.run`): look it up by its spool key before creating it again.
        self.uncertain_create = self.run_id is None and self.size > 0
        self.ended = False

    def cut_torn_tail(self) -> int:
        """Drop a last record without its newline (a crash mid-append); returns the bytes dropped.
        Only for a file no live process appends to (a spool being opened)."""
        if self.size == 0:
            return 0
        with open(self.path, "rb") as f:
            f.seek(max(0, self.size - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return 0
        keep = self.size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else self._last_newline_end()
        os.truncate(self.path, keep)
        dropped, self.size = self.size - keep, keep
        self.acked = min(self.acked, self.size)
        if self.acked >= self.size:
            self.oldest = None
        return dropped

    def _last_newline_end(self) -> int:
        """Offset just after the last newline of a file whose last 64 KiB hold none."""
        end = 0
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                offset += len(line)
                if line.endswith(b"\n"):
                    end = offset
        return end

    def append(self, line: bytes) -> None:
        with self.lock:
            if self.handle is None:
                self.handle = open(self.path, "ab")
            try:
                self.handle.write(line)
                self.handle.flush()  # in the kernel's cache: survives a killed driver
            except OSError:
                # A partial write (a full disk) must not leave half a record for the next one to join.
                self.handle.close()
                self.handle = None
                try:
                    os.truncate(self.path, self.size)
                except OSError:
                    pass
                raise
            self.size += len(line)
            self.appended += 1
            if self.oldest is None:
                self.oldest = time.time()

    def read(self, limit: int) -> list[tuple[dict | None, int, bytes]]:
        """Up to `limit` (event, end offset, raw line) after the acknowledged offset; a corrupt record
        has event None. Only bytes below the size known to be whole records are read."""
        with self.lock:
            start, end = self.acked, self.size
        if start >= end:
            return []
        out = []
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            while len(out) < limit and offset < end:
                line = f.readline(end - offset)
                if not line:  # the file is shorter than it was (cut by someone else): stop here
                    break
                offset += len(line)
                try:
                    event = unframe(line) if line.endswith(b"\n") else None
                except ValueError:
                    event = None
                out.append((event, offset, line))
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
            return float(unframe(line)["q"]) if line.endswith(b"\n") else None
        except (ValueError, KeyError, TypeError):
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


def spooled_runs(folder: str) -> list[str]:
    """The keys of the runs a spool folder holds events of."""
    try:
        return sorted(n[: -len(".jsonl")] for n in os.listdir(folder) if n.endswith(".jsonl"))
    except FileNotFoundError:
        return []


class SpooledWriter:
    """Queue run events on disk and write them to the store from `workers` background threads.

    Every method that queues returns without touching the network. `key` names a run within the
    spool (opaque; `new_run` and `adopt_run` hand one out). A run's events are written in the order
    they were queued; different runs are written in parallel.

    `store_identity`: what the store is (`tracking.store_identity`), carried by each run's first event;
    runs queued for another store are not written. `fence(decisive)`: asked before every store call
    (`decisive` for creating, continuing and ending a run); raises `Fenced` when this writer may write
    no more. `describe(exc)`: a failure in words for the console ("server unreachable", "disk full");
    `is_fatal(exc)`: a failure no retry mends (the store's file was deleted): the writer stops as if
    fenced. `quarantine`: where corrupt records and runs of another store are moved. `may_queue()`:
    asked before each event is queued (False: the sweep was paused past its lease's expiry; the
    event is dropped rather than left for a later replay, and the writer is fenced).
    """

    def __init__(self, store: RunStore, folder: str, workers: int = 4, is_transient: Callable[[BaseException], bool] | None = None,
                 on_warning: Callable[[str], None] | None = None, store_identity: str | None = None,
                 fence: Callable[[bool], None] | None = None, describe: Callable[[BaseException], str] | None = None,
                 is_fatal: Callable[[BaseException], str | None] | None = None, quarantine: str | None = None,
                 may_queue: Callable[[], bool] | None = None):
        self.store = store
        self.folder = folder
        os.makedirs(os.path.join(folder, "files"), exist_ok=True)
        self.is_transient = is_transient or (lambda exc: True)
        self.on_warning = on_warning or (lambda line: None)
        self.store_identity = store_identity
        self.fence = fence or (lambda decisive: None)
        self.describe = describe or (lambda exc: "server unreachable")
        self.is_fatal = is_fatal or (lambda exc: None)
        self.quarantine = quarantine or os.path.join(folder, QUARANTINE)
        self.may_queue = may_queue or (lambda: True)
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
        self.trouble = "server unreachable"
        self.fenced: str | None = None  # why this writer writes no more (Fenced's line), None while it may
        self.replayed = 0  # runs found unfinished in the spool when it was opened
        for key in spooled_runs(folder):
            run = self._run(key)
            torn = run.cut_torn_tail()
            if torn:
                self.on_warning(f"tracking: the last record of {run.path} was torn ({torn} bytes: a crash mid-write); dropped, "
                                "the rest replays")
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
                           "tags": {**tags, "spool_key": key}, "store": self.store_identity})
        return key

    def adopt_run(self, run_id: str, tags: dict[str, str]) -> str:
        """Continue an existing run (a trial resumed after its sweep stopped): mark it running again."""
        key = "run-" + run_id
        with self._lock:
            run = self._run(key)
        if run.run_id is None and self.fenced is None:
            run.set_run_id(run_id)
        self._ids[key] = run_id
        self._append(key, {"op": "reopen", "tags": tags, "store": self.store_identity})
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
        if self.fenced is not None:
            return
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

    def log_group_curves(self, key: str, metrics: list[str], title: str, artifact_file: str) -> None:
        """Drawn by the writer's thread from the run's metric history, once the epochs queued before it are written."""
        self._append(key, {"op": "curves", "metrics": list(metrics), "title": title, "file": artifact_file})

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
    def down_longer_than(self, limit_s: float) -> bool:
        """Whether the store has taken no write for more than `limit_s` seconds (the sweep's outage clock)."""
        return self.down_since is not None and time.time() - self.down_since > limit_s

    def state(self) -> WriterState:
        now = time.time()
        with self._lock:
            runs = list(self._runs.values())
        pending = sum(max(0, r.appended - r.taken) for r in runs) + sum(1 for r in runs if r.appended == 0 and not r.drained)
        oldest = [r.oldest for r in runs if r.oldest is not None and not r.drained]
        return WriterState(pending, now - min(oldest) if oldest else 0.0, self.down_since, self.error, self.trouble)

    def drained(self) -> bool:
        with self._lock:
            return all(r.drained for r in self._runs.values()) and not self._queued and self._busy == 0

    def flush(self, timeout: float | None = None, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait until every queued event is in the store; False on timeout, when `give_up()` says so,
        or once the writer is fenced."""
        deadline = None if timeout is None else time.time() + timeout
        while not self.drained():
            if (self.fenced is not None or (deadline is not None and time.time() > deadline)
                    or (give_up is not None and give_up())):
                return False
            time.sleep(0.05)
        return True

    def forget_drained(self) -> None:
        """Remove the spool files of every run the store has taken in full (a replayed spool: its
        runs that did not end are continued by the sweep under new keys)."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.drained:
                self._forget(run)

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
        if self.fenced is not None:
            return  # the sweep that took over continues this run: nothing more is queued for it here
        if not self.may_queue():
            # Not queued for a later replay either: the sweep that took over writes this run.
            why = "this sweep was paused past its lease's expiry"
            try:
                self.fence(True)  # the fence's own words (the lease lost to whom), when it has them
            except Fenced as exc:
                why = str(exc)
            self._fence_off(why)
            return
        event["q"] = time.time()
        line = frame(event)
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

    def _fence_off(self, why: str) -> None:
        """Write nothing more: the threads stop taking runs, queueing becomes a no-op."""
        with self._lock:
            if self.fenced is None:
                self.fenced = why
            self._queue.clear()
            self._queued.clear()
            self._wake.notify_all()

    def _work(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait(timeout=1.0)
                if self._stopping or self.fenced is not None:
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
            except Fenced as exc:
                self._fence_off(str(exc))
            except Exception as exc:  # noqa: BLE001 - sorted below: fenced, fatal, transient (retry), or a run the store refuses
                fatal = None if self.fenced is not None else self.is_fatal(exc)
                if self.fenced is not None:
                    pass  # a call that was under way when the writer was fenced: its outcome no longer matters here
                elif fatal:
                    self._fence_off(fatal)
                elif self.is_transient(exc):
                    failures += 1
                    self.error = describe_error(exc)
                    self.trouble = self.describe(exc)
                    if self.down_since is None:
                        self.down_since = time.time()
                    retry_after = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                else:
                    self.on_warning(f"tracking: the store refused run {key} ({describe_error(exc)}); its queued events are dropped")
                    run.ack(run.size, 0)
                    run.ended = True
            with self._lock:
                self._busy -= 1
                self._inflight.discard(key)
            if run is None or self.fenced is not None:
                continue
            if retry_after:
                self._schedule(key, front=True)
                self._stopped.wait(retry_after)
            elif not run.drained:
                self._schedule(key)
            elif run.ended:
                self._forget(run)

    def _set_aside(self, run: _Run, raw: bytes, offset: int, why: str) -> None:
        """A record that cannot be written (corrupt): into the quarantine file, named in one notice."""
        os.makedirs(self.quarantine, exist_ok=True)
        path = os.path.join(self.quarantine, run.key + ".jsonl")
        with open(path, "ab") as f:
            f.write(raw if raw.endswith(b"\n") else raw + b"\n")
        self.on_warning(f"tracking: a corrupt record of run {run.key} (ending at byte {offset} of {run.path}: {why}) was moved "
                        f"to {path}; the run's other events are written")

    def _refuse_other_store(self, run: _Run, event: dict) -> None:
        """A run queued for another store: its file goes to the quarantine folder, nothing is written."""
        os.makedirs(self.quarantine, exist_ok=True)
        path = os.path.join(self.quarantine, f"{run.key}.other-store.jsonl")
        run.close()
        shutil.copyfile(run.path, path)
        self.on_warning(f"tracking: run {run.key} was queued for another store ({event.get('store')}), not this one "
                        f"({self.store_identity}); not written here, its events are in {path}")
        run.ack(run.size, 0)
        run.ended = True

    def _drain(self, run: _Run) -> None:
        """Write one chunk of the run's events, acknowledging each call as it succeeds."""
        events = run.read(READ_CHUNK)
        i = 0
        while i < len(events):
            event, offset, raw = events[i]
            next_q = events[i + 1][0].get("q") if i + 1 < len(events) and events[i + 1][0] else None
            if event is None:
                self._set_aside(run, raw, offset, "torn" if not raw.endswith(b"\n") else "not a whole, valid record")
                run.ack(offset, 1, next_q)
                i += 1
                continue
            op = event["op"]
            if op in ("metrics", "tags"):
                j, metrics, tags = i, [], {}
                while j < len(events) and events[j][0] is not None and events[j][0]["op"] in ("metrics", "tags"):
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
                run.ack(events[j - 1][1], j - i, events[j][0].get("q") if j < len(events) and events[j][0] else None)
                i = j
                continue
            if op in ("start", "reopen") and self.store_identity and event.get("store") and event["store"] != self.store_identity:
                self._refuse_other_store(run, event)
                return
            self.fence(op in DECISIVE_OPS)
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
            elif op == "curves":
                self._call(run, lambda: self.store.log_group_curves(run.run_id, event["metrics"], event["title"], event["file"]))
            elif op == "link":
                teacher_run = self.run_id(event["teacher_key"]) if event.get("teacher_key") else None
                self._call(run, lambda: self.store.link_teacher(run.run_id, event["experiment_id"], teacher_run, event["teacher_hash"],
                                                                event["teacher_name"]))
            elif op == "end":
                self._call(run, lambda: self.store.end_run(run.run_id, event["status"], event["t"]))
                run.ended = True
            run.ack(offset, 1, next_q)
            i += 1
        if events and not run.ended and events[-1][0] is not None and events[-1][0]["op"] == "end":
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
        self.fence(False)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            if self.is_transient(exc) or self.is_fatal(exc):
                raise
            self.on_warning(f"tracking: the store refused an event of run {run.run_id}: {describe_error(exc)}")
