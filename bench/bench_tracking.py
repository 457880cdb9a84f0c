"""Benchmark (issue 16): epoch reports written synchronously vs. through the spooled writer.

Starts a real `mlflow server` on loopback (lean form: no job runner, `--server-workers` processes)
over PostgreSQL when a PostgreSQL server and psycopg2 are both at hand, else over SQLite. Then it
offers the same load twice, each into a fresh experiment of that server:

  (a) the old path: `Tracker.log_metrics(run_id, metrics, step)` (one log_batch of 6 metrics) per
      report, called inline in the driver loop, as Ray Tune's callback did on its event loop;
  (b) the new path: `SpooledWriter.log_metrics` in the driver loop (an append to the on-disk spool),
      drained by `--workers` writer threads, then `flush()`.

The load: `--trials` runs, each reporting one epoch (loss, lr, acc_all, acc_head, acc_medium,
acc_tail) in turn, at `--rate` reports/s in total, for `--seconds`. A driver loop keeps the schedule
by sleeping; when a report call blocks, the loop falls behind and stays behind (Tune's callbacks
cannot skip an epoch). The loop stops at the end of the schedule or at `--seconds` (+1 s of grace)
of wall time, whichever comes first, so a path that cannot keep up leaves its remaining reports unsent.

Printed per path: offered rate; sustained rate (reports in the store / time until the last one is
in the store); lag (for (a): how far behind schedule the driver is; for (b): the age of the oldest
report not yet in the store, sampled every 0.5 s, measured here from what the store has taken, and
beside it the writer's own figure, `writer.state().lag_s`); the driver's stall (how long each
report call blocks the loop: p50, p99, max); CPU used; the store calls made. Then a correctness
check against the server (every step of every metric exactly once, on a sample of runs, and the
count of runs) and the ratios new/old. Targets (reported, not asserted): >= 500 reports/s
sustained, max lag < 5 s.

    .venv/bin/python bench/bench_tracking.py [--trials 200] [--rate 600] [--seconds 20] [--workers 4]
        [--server-workers 2] [--backend auto|sqlite|postgres]

PostgreSQL needs psycopg2 in this Python (the server runs with this interpreter and environment);
it is not a project dependency: to try it without touching the venv,
`pip install --target /tmp/pgdeps psycopg2-binary` and run with `PYTHONPATH=/tmp/pgdeps`.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.tracking import SpooledWriter  # noqa: E402
from orchestrator.tracking import EPOCH_METRICS, Tracker, is_transient_failure  # noqa: E402

TARGET_RATE = 500.0  # reports/s sustained
TARGET_LAG_S = 5.0
LAG_SAMPLE_S = 0.5
GRACE_S = 1.0  # past the schedule's end: a driver only jittering late still sends its last reports
VERIFY_SAMPLE = 10  # runs whose full metric history is read back


# -- the load -----------------------------------------------------------------------------------------

def epoch_report(trial: int, step: int) -> dict[str, float]:
    """The six epoch metrics, a pure function of (trial, step) so the check can recompute them."""
    base = trial + step / 1000
    return {key: base + i / 10 for i, key in enumerate(EPOCH_METRICS)}


@dataclass
class DriveResult:
    """What the driver loop saw: one entry per report call it made."""

    started: float  # perf_counter at schedule time 0
    stalls: list[float] = field(default_factory=list)  # seconds each report call blocked the loop
    sent: int = 0  # reports handed to the path
    max_behind: float = 0.0  # worst lateness of a report call against its slot in the schedule
    final_behind: float = 0.0  # lateness when the loop stopped (of the next report, if it did not finish)
    ended: float = 0.0  # perf_counter when the loop stopped


def drive(report: Callable[[int, int], None], trials: int, rate: float, seconds: float) -> DriveResult:
    """Offer report i (trial i % trials, step i // trials + 1) at time i / rate, as one thread.

    The loop sleeps until a report's slot, so a fast path shows the offered rate exactly and a slow
    one shows how far behind it falls. It stops at the end of the schedule or after `seconds` of
    wall time: a blocked driver does not get extra time to catch up."""
    total = int(round(rate * seconds))
    result = DriveResult(started=time.perf_counter())
    deadline = result.started + seconds + GRACE_S
    for i in range(total):
        due = result.started + i / rate
        now = time.perf_counter()
        if now >= deadline:
            result.final_behind = now - due
            break
        if now < due:
            time.sleep(due - now)
        else:
            result.max_behind = max(result.max_behind, now - due)
        call = time.perf_counter()
        report(i % trials, i // trials + 1)
        done = time.perf_counter()
        result.stalls.append(done - call)
        result.sent += 1
        result.final_behind = done - due
    result.max_behind = max(result.max_behind, result.final_behind)
    result.ended = time.perf_counter()
    return result


def expected_steps(trial: int, trials: int, sent: int) -> int:
    """How many epochs of `trial` the driver sent (reports go round the trials in order)."""
    return sent // trials + (1 if trial < sent % trials else 0)


# -- the store under test -----------------------------------------------------------------------------

class TimedStore:
    """A Tracker that records how long each write_batch takes and how many metrics it carries, so
    the report can say whether the server's per-call time or the batch size limits the writer; and
    the last step each run has in the store, for a lag measured independently of the writer."""

    def __init__(self, tracker: Tracker):
        self._tracker = tracker
        self._lock = threading.Lock()
        self.batch_seconds: list[float] = []
        self.batch_metrics: list[int] = []
        self.stored_step: dict[str, int] = {}  # run id -> last step written (a run's steps go in order)
        self.failures: list[str] = []  # failed write_batch calls (the writer retries them after a backoff)

    def write_batch(self, run_id, metrics, tags):
        start = time.perf_counter()
        try:
            self._tracker.write_batch(run_id, metrics, tags)
        except Exception as exc:
            with self._lock:
                self.failures.append(f"{type(exc).__name__}: {str(exc).strip()[:160]}")
            raise
        with self._lock:
            self.batch_seconds.append(time.perf_counter() - start)
            self.batch_metrics.append(len(metrics))
            if metrics:
                self.stored_step[run_id] = max(self.stored_step.get(run_id, 0), max(m[3] for m in metrics))

    def __getattr__(self, name):  # every other Tracker method, untimed
        return getattr(self._tracker, name)


def probe_keepalive(url: str, calls: int = 20) -> str:
    """Median GET /health on one kept-alive connection vs. a new connection each time.

    uvicorn with --workers > 1 (0.54 here) binds its listener with proto 0, so asyncio never sets
    TCP_NODELAY on accepted sockets: Nagle then waits for the client's delayed ACK (~40 ms on Linux)
    on each kept-alive request. MlflowClient keeps connections alive, so this is a per-call floor."""
    import requests

    def median(get) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            get(url + "/health").raise_for_status()
            times.append(time.perf_counter() - start)
        return pct(times, 50)

    with requests.Session() as session:
        kept = median(session.get)
    fresh = median(requests.get)
    return f"GET /health p50 {ms(kept)} on a kept-alive connection, {ms(fresh)} on a new one"


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the live processes in a process group, from /proc."""
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by this process and by the server between start() and stop(): whether
    the two cores were saturated or the calls were waiting."""

    def __init__(self, server_pgid: int | None):
        self.server_pgid = server_pgid

    def _now(self) -> tuple[float, float, float]:
        server = group_cpu_seconds(self.server_pgid) if self.server_pgid else 0.0
        return time.perf_counter(), time.process_time(), server

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> str:
        (w0, b0, s0), (w1, b1, s1) = self._start, self._now()
        wall = max(1e-9, w1 - w0)
        return (f"bench process {(b1 - b0) / wall:.2f} cores, mlflow server {(s1 - s0) / wall:.2f} cores "
                f"(of {os.cpu_count()}), over {wall:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server's bin folder with both initdb and pg_ctl, if any."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if Path(p).with_name("pg_ctl").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def choose_backend(wanted: str) -> tuple[str, str]:
    """('postgres' | 'sqlite', a line saying why)."""
    if wanted == "sqlite":
        return "sqlite", "sqlite (asked for)"
    pg = postgres_bin()
    has_driver = importlib.util.find_spec("psycopg2") is not None
    if pg and has_driver:
        return "postgres", f"postgres ({pg})"
    missing = "no PostgreSQL server binary under /usr/lib/postgresql/*/bin" if not pg else \
        f"PostgreSQL found ({pg}) but psycopg2 is not importable in this Python"
    if wanted == "postgres":
        raise SystemExit(f"--backend postgres: {missing}")
    return "sqlite", f"sqlite: FALLBACK, {missing}"


class Servers:
    """The processes and folders this benchmark starts; `close()` stops and removes them all."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ltkd-bench-tracking-"))
        self._stops: list[Callable[[], None]] = []
        self.mlflow_pgid: int | None = None

    def close(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def start_postgres(self) -> str:
        """A throwaway cluster in the temp folder on a free port; its URI."""
        pg = postgres_bin()
        data, sock = self.root / "pg", self.root / "pgsock"
        data.mkdir()
        sock.mkdir()
        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own system user
            import pwd

            user = "postgres"
            uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
            os.chmod(self.root, 0o755)
            for d in (data, sock):
                os.chown(d, uid, gid)
        port = free_port()
        log = open(self.root / "postgres.log", "w")
        self._stops.append(log.close)

        def run(*cmd: str) -> None:
            subprocess.run(cmd, user=user, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

        run(str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        ctl = [str(pg / "pg_ctl"), "-D", str(data)]
        run(*ctl, "-l", str(data / "server.log"), "-w", "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start")
        self._stops.append(lambda: run(*ctl, "-m", "immediate", "-w", "stop"))
        run(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        # The driver named: SQLAlchemy 2.1's bare postgresql:// means psycopg 3.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"

    def start_mlflow(self, backend_uri: str, workers: int) -> str:
        """The lean `mlflow server` (stack.md) on a free loopback port; its URL once /health answers."""
        port = free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.root / "mlflow-server.log", "w")
        self._stops.append(log.close)
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
             "--serve-artifacts", "--artifacts-destination", str(self.root / "mlartifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
            start_new_session=True,  # its worker processes form one group, stopped together below
        )
        self._stops.append(lambda: stop_group(proc))
        self.mlflow_pgid = proc.pid
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + (self.root / "mlflow-server.log").read_text()[-2000:])
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return url
            time.sleep(0.3)
        raise RuntimeError("mlflow server did not answer /health in 120 s")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and the worker processes it forked (its own process group, by its id)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the two paths ------------------------------------------------------------------------------------

@dataclass
class PathResult:
    name: str
    drive: DriveResult
    written: int  # reports in the store at the end
    last_written: float  # perf_counter when the last of them was in the store
    lag_max: float
    lag_at_end: float  # lag when the driver stopped offering load
    state_lag_max: float = 0.0  # (b) only: the writer's own figure, writer.state().lag_s
    state_lag_at_end: float = 0.0
    drain_s: float = 0.0  # (b) only: from the driver's stop until the store had everything
    stored_during_load: int = 0  # (b) only: reports in the store when the driver stopped
    store: TimedStore | None = None
    setup_s: float = 0.0
    cpu: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def sustained(self) -> float:
        return self.written / max(1e-9, self.last_written - self.drive.started)


def run_sync(url: str, experiment_id: str, trials: int, rate: float, seconds: float, cpu: CpuMeter) -> tuple[PathResult, list[str]]:
    """(a) One synchronous log_batch per report, inline in the driver loop."""
    tracker = Tracker(url)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:  # untimed setup: in parallel only to make the benchmark shorter
        run_ids = list(pool.map(lambda t: tracker.create_run(experiment_id, f"trial {t}", {"trial": t}, {"bench": "sync"}),
                                range(trials)))
    setup = time.perf_counter() - started
    cpu.start()
    result = drive(lambda t, step: tracker.log_metrics(run_ids[t], epoch_report(t, step), step), trials, rate, seconds)
    # The driver itself is the lag: every report is in the store when its call returns, and each
    # stall is one log_batch's round trip.
    return PathResult("sync", result, result.sent, result.ended, result.max_behind, result.final_behind,
                      setup_s=setup, cpu=cpu.stop()), run_ids


def run_spooled(url: str, experiment_id: str, trials: int, rate: float, seconds: float, workers: int,
                spool: str, cpu: CpuMeter) -> tuple[PathResult, list[str]]:
    """(b) SpooledWriter.log_metrics in the driver loop; writer threads drain; flush() at the end."""
    store = TimedStore(Tracker(url))
    warnings: list[str] = []
    writer = SpooledWriter(store, spool, workers=workers, is_transient=is_transient_failure, on_warning=warnings.append)
    try:
        # Runs are created through the writer, as the sweep does, but before the clock: the
        # benchmark is about epoch reports (a sweep creates runs at trial start, spread out).
        started = time.perf_counter()
        keys = [writer.new_run(experiment_id, f"trial {t}", {"trial": t}, {"bench": "spool"}) for t in range(trials)]
        writer.flush()
        setup = time.perf_counter() - started

        run_ids = [writer.run_id(k) for k in keys]
        queued: list[list[float]] = [[] for _ in range(trials)]  # per trial: when each step was queued

        def report(t: int, step: int) -> None:
            queued[t].append(time.time())
            writer.log_metrics(keys[t], epoch_report(t, step), step)

        def measured_lag() -> float:
            """Age of the oldest report not yet in the store, from what the store has taken."""
            now, oldest = time.time(), None
            for t in range(trials):
                stored = store.stored_step.get(run_ids[t], 0)
                if stored < len(queued[t]):
                    oldest = queued[t][stored] if oldest is None else min(oldest, queued[t][stored])
            return 0.0 if oldest is None else now - oldest

        lags: list[tuple[float, float]] = []  # (measured, writer.state().lag_s)
        stop = threading.Event()

        def sample_lag() -> None:
            while not stop.wait(LAG_SAMPLE_S):
                lags.append((measured_lag(), writer.state().lag_s))

        sampler = threading.Thread(target=sample_lag, name="bench-lag", daemon=True)
        sampler.start()
        cpu.start()
        result = drive(report, trials, rate, seconds)
        at_end = (measured_lag(), writer.state().lag_s)
        stored_during_load = sum(store.stored_step.values())
        writer.flush()  # polls every 50 ms: the drain time is known to that resolution
        drained = time.perf_counter()
        used = cpu.stop()
        stop.set()
        sampler.join()
        lags.append(at_end)
    finally:
        writer.close()
    return PathResult("spool", result, result.sent, drained, max(m for m, _ in lags), at_end[0],
                      state_lag_max=max(w for _, w in lags), state_lag_at_end=at_end[1], drain_s=drained - result.ended,
                      stored_during_load=stored_during_load,
                      store=store, setup_s=setup, cpu=used, warnings=warnings), run_ids


# -- checking what the server holds -------------------------------------------------------------------

def verify(url: str, experiment_id: str, run_ids: list[str], trials: int, sent: int) -> str:
    """Read back from the server: the experiment holds exactly one run per trial, and a sample of
    runs holds every step of every metric exactly once, with the value that was sent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    found, token = 0, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found += len(page)
        token = page.token
        if not token:
            break
    if found != trials:
        raise AssertionError(f"{found} runs in the experiment, expected {trials}")
    sample = sorted({round(i * (trials - 1) / max(1, VERIFY_SAMPLE - 1)) for i in range(VERIFY_SAMPLE)})
    for t in sample:
        steps = list(range(1, expected_steps(t, trials, sent) + 1))
        for key in EPOCH_METRICS:
            history = client.get_metric_history(run_ids[t], key)
            got = sorted(m.step for m in history)
            if got != steps:
                raise AssertionError(f"trial {t} {key}: {len(got)} points, steps {got[:5]}..., expected 1..{len(steps)} once each")
            bad = [m.step for m in history if abs(m.value - epoch_report(t, m.step)[key]) > 1e-9]
            if bad:
                raise AssertionError(f"trial {t} {key}: wrong values at steps {bad[:5]}")
    return (f"verified: {found} runs; {len(sample)} sampled runs x {len(EPOCH_METRICS)} metrics hold every step "
            f"exactly once with the value sent")


# -- printing -----------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def print_path(title: str, r: PathResult, rate: float, total: int) -> None:
    d = r.drive
    print(title)
    print(f"  setup            {r.setup_s:.1f} s to create the runs (not timed below)")
    print(f"  offered          {rate:.0f} reports/s ({total} reports of {len(EPOCH_METRICS)} metrics)")
    unsent = f"; {total - d.sent} never left the driver" if d.sent < total else ""
    print(f"  sustained        {r.sustained:.0f} reports/s ({r.written} in the store {r.last_written - d.started:.1f} s "
          f"after the first was due{unsent})")
    if r.name == "spool":
        print(f"  while loaded     {r.stored_during_load / (d.ended - d.started):.0f} reports/s into the store "
              f"({r.stored_during_load} by the time the last report was queued)")
    if r.name == "sync":
        print(f"  lag              max {r.lag_max:.2f} s, final {r.lag_at_end:.2f} s (driver behind schedule)")
    else:
        print(f"  lag              max {r.lag_max:.2f} s, final {r.lag_at_end:.2f} s (age of the oldest report not yet in "
              f"the store, sampled every {LAG_SAMPLE_S} s; final = when the last report was queued)")
        print(f"  state().lag_s    max {r.state_lag_max:.2f} s, final {r.state_lag_at_end:.2f} s (the writer's own figure)")
        print(f"  drain            {r.drain_s:.2f} s after the last report was queued; the driver was at most "
              f"{d.max_behind * 1000:.1f} ms behind schedule")
    print(f"  cpu              {r.cpu}")
    print(f"  driver stall     p50 {ms(pct(d.stalls, 50))}, p99 {ms(pct(d.stalls, 99))}, max {ms(max(d.stalls))} per report call")
    s = r.store
    if s and s.batch_seconds:
        print(f"  store calls      {len(s.batch_seconds)} log_batch, {sum(s.batch_metrics) / len(s.batch_metrics) / len(EPOCH_METRICS):.1f} "
              f"reports each on average, p50 {ms(pct(s.batch_seconds, 50))}, p99 {ms(pct(s.batch_seconds, 99))}, "
              f"max {ms(max(s.batch_seconds))} per call")
        if s.failures:
            print(f"  store failures   {len(s.failures)} log_batch failed and were retried after a backoff; last: {s.failures[-1]}")
    for line in r.warnings[:5]:
        print(f"  warning          {line}")


def print_verdict(old: PathResult, new: PathResult) -> None:
    print(f"new / old: sustained rate {new.sustained / max(1e-9, old.sustained):.1f}x; "
          f"p99 stall old / new {pct(old.drive.stalls, 99) / max(1e-9, pct(new.drive.stalls, 99)):.0f}x")
    for r in (old, new):
        short_rate = TARGET_RATE - r.sustained
        rate = "met" if short_rate <= 0 else f"missed by {short_rate:.0f} reports/s ({short_rate / TARGET_RATE:.0%})"
        lag = "met" if r.lag_max < TARGET_LAG_S else f"missed by {r.lag_max - TARGET_LAG_S:.1f} s"
        print(f"target {r.name:5}: >= {TARGET_RATE:.0f} reports/s sustained {rate}; max lag < {TARGET_LAG_S:.0f} s {lag}")


def print_machine() -> None:
    import mlflow

    # The load average says whether other processes competed for the cores during the measurement.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, mlflow {mlflow.__version__}; "
          f"load average {load} at start")


# -- main ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200, help="runs reporting in turn (default 200)")
    p.add_argument("--rate", type=float, default=600, help="epoch reports per second offered, in total (default 600)")
    p.add_argument("--seconds", type=float, default=20, help="length of the schedule (default 20)")
    p.add_argument("--workers", type=int, default=4, help="SpooledWriter threads (default 4)")
    p.add_argument("--server-workers", type=int, default=2, help="mlflow server processes (default 2)")
    p.add_argument("--backend", choices=("auto", "sqlite", "postgres"), default="auto")
    return p.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Ctrl-C and kill both unwind through `finally`, which stops the servers and removes the folders.
    signal.signal(signal.SIGTERM, _interrupt)
    print_machine()
    backend, why = choose_backend(args.backend)
    print(f"backend: {why}", flush=True)
    servers = Servers()
    try:
        started = time.perf_counter()
        store_uri = servers.start_postgres() if backend == "postgres" else f"sqlite:///{servers.root}/mlflow.db"
        url = servers.start_mlflow(store_uri, args.server_workers)
        print(f"server: mlflow server --workers {args.server_workers} at {url}, ready in {time.perf_counter() - started:.1f} s")
        print(f"server probe: {probe_keepalive(url)}")
        print(f"load: {args.trials} trials, {args.rate:.0f} reports/s for {args.seconds:.0f} s; spool writer threads: {args.workers}")
        print(flush=True)

        client = Tracker(url).client
        total = int(round(args.rate * args.seconds))
        stamp = os.urandom(3).hex()

        cpu = CpuMeter(servers.mlflow_pgid)
        exp = client.create_experiment(f"bench-sync-{stamp}")
        old, old_ids = run_sync(url, exp, args.trials, args.rate, args.seconds, cpu)
        print_path("(a) old: Tracker.log_metrics per report, inline in the driver loop", old, args.rate, total)
        print("  " + verify(url, exp, old_ids, args.trials, old.drive.sent))
        print(flush=True)

        exp = client.create_experiment(f"bench-spool-{stamp}")
        new, new_ids = run_spooled(url, exp, args.trials, args.rate, args.seconds, args.workers, str(servers.root / "spool"), cpu)
        print_path(f"(b) new: SpooledWriter ({args.workers} writer threads), flush() at the end", new, args.rate, total)
        print("  " + verify(url, exp, new_ids, args.trials, new.drive.sent))
        print()
        print_verdict(old, new)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        sys.exit(130)
    finally:
        servers.close()


if __name__ == "__main__":
    main()
