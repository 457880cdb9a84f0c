"""Benchmark: `ltkd tables` and `ltkd status` over a study with 10,000 tracked runs.

Builds a fixture MLflow store (SQLite in a temporary folder): the CIFAR-100-LT main study with its
seeds extended until it plans >= N trials, one FINISHED run per trial carrying what a real sweep
logs (params, tags, final metrics, and a per-epoch history of the accuracies and the loss), plus,
for every 40th trial, an older FAILED attempt (error and attempts tags, a partial history) that
the readers must pass over. The rows are written straight into MLflow's own schema (created by
MLflow itself), since creating 10,000 runs through the client would take longer than everything
measured here.

Then it times, in this process:
- reference: `mlflow.search_runs` of the experiment (every run, as a pandas frame): the obvious way
  to read a study's runs;
- `Tracker.runs` (whole runs through MlflowClient.search_runs: what `ltkd status` read before);
- `Tracker.run_states` (what `ltkd status` reads now: the state of each trial's run, no params);
- `Tracker.final_metrics_by_hash` (what `ltkd tables` reads: the newest FINISHED run per config_hash
  and its final metrics only);
and end to end, as a user runs them, in fresh processes (best of --repeat): `ltkd tables STUDY
--format md` and `ltkd status STUDY`. With --baseline REF (a git commit, e.g. HEAD), the same two
commands of that commit's source (extracted with `git archive`, run with this venv) are timed on the
same store, for before/after figures measured in one run.
Prints seconds, runs/s and ratios against the reference.

    .venv/bin/python bench/bench_tables.py [--runs 10000] [--epochs 30] [--repeat 3] [--baseline HEAD] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.study import expand, parse_study  # noqa: E402
from orchestrator.tracking import Tracker, trial_params  # noqa: E402

FINAL_KEYS = ("acc_all", "acc_head", "acc_medium", "acc_tail", "best_acc_all", "best_acc_head", "best_acc_medium",
              "best_acc_tail", "best_epoch", "loss", "lr", "loss_ce", "train_seconds",
              "pg_test_head", "pg_test_medium", "pg_test_tail", "pg_train_head", "pg_train_medium", "pg_train_tail")
HISTORY_KEYS = ("acc_all", "acc_head", "acc_medium", "acc_tail", "loss", "lr")
RETRY_EVERY = 40


def bench_study(min_runs: int) -> dict:
    data = yaml.safe_load((REPO / "studies" / "cifar100_lt_main.yaml").read_text())
    per_seed = len(expand(parse_study(data))) // len(data["seeds"])  # trials per seed
    data["seeds"] = list(range(-(-min_runs // per_seed)))
    data["name"] = "bench_tables"
    return data


def build_store(folder: Path, study_data: dict, epochs: int) -> tuple[str, int]:
    uri = f"sqlite:///{folder}/mlflow.db"
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(study_data["name"], create=True)
    trials = expand(parse_study(study_data))
    rng = random.Random(0)
    now = int(time.time() * 1000)
    runs, params, tags, latest, history = [], [], [], [], []
    for i, t in enumerate(trials):
        rid = uuid.uuid4().hex
        start = now + i * 10
        runs.append((rid, t.run_name, "UNKNOWN", "", "", "bench", "FINISHED", start, start + 5, "", "active",
                     f"{folder}/mlruns/{exp_id}/{rid}/artifacts", int(exp_id)))
        for k, v in trial_params(t).items():
            params.append((k, "none" if v is None else str(v), rid))
        run_tags = {"study": study_data["name"], "config_hash": t.config_hash, "role": t.role, "row": t.row,
                    "git_commit": "bench", "mlflow.runName": t.run_name}
        if t.teacher_hash:
            run_tags["teacher_hash"] = t.teacher_hash
        tags += [(k, v, rid) for k, v in run_tags.items()]
        final = {k: rng.uniform(0, 100) for k in FINAL_KEYS}
        for k, v in final.items():
            latest.append((k, v, start + 5, epochs, 0, rid))
        for step in range(1, epochs + 1):
            for k in HISTORY_KEYS:
                history.append((k, final[k] if step == epochs else rng.uniform(0, 100), start + step, rid, step, 0))
        if i % RETRY_EVERY == 0:  # an earlier attempt that failed after 3 epochs: older, so not the trial's state
            old = uuid.uuid4().hex
            runs.append((old, t.run_name, "UNKNOWN", "", "", "bench", "FAILED", start - 5, start - 1, "", "active",
                         f"{folder}/mlruns/{exp_id}/{old}/artifacts", int(exp_id)))
            tags += [(k, v, old) for k, v in {**run_tags, "attempts": "2", "error": "FloatingPointError: loss is nan"}.items()]
            for step in range(1, 4):
                for k in HISTORY_KEYS:
                    history.append((k, rng.uniform(0, 100), start - 5 + step, old, step, 0))
            latest += [(k, rng.uniform(0, 100), start - 2, 3, 0, old) for k in HISTORY_KEYS]
    db = sqlite3.connect(folder / "mlflow.db")
    with db:
        db.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                       "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        db.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", latest)
        db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)", history)
    db.close()
    return uri, len(trials), len(runs)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeat: int, cmd: list[str], env: dict, cwd: Path) -> float:
    """Fastest of `repeat` runs of a command in a fresh process (the machine's noise only adds)."""
    times = []
    for _ in range(repeat):
        seconds, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd))
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        times.append(seconds)
    return min(times)


def source_of(ref: str, folder: Path) -> Path:
    """The repository's source at commit `ref`, extracted (no checkout, nothing written to git)."""
    target = folder / f"source-{ref}"
    target.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=30, help="per-epoch history points per metric")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end commands: best of this many runs")
    ap.add_argument("--baseline", metavar="REF", help="also time the commands of this git commit's source (e.g. HEAD)")
    ap.add_argument("--keep", help="build the store in this folder and keep it")
    args = ap.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="ltkd-bench-tables-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        study_data = bench_study(args.runs)
        study_file = folder / "bench_tables.yaml"
        study_file.write_text(yaml.safe_dump(study_data, allow_unicode=True, sort_keys=False))
        build_s, (uri, n, n_runs) = timed(lambda: build_store(folder, study_data, args.epochs))
        print(f"fixture: {n} trials with a FINISHED run each ({len(study_data['seeds'])} seeds of cifar100_lt_main), "
              f"{n_runs - n} older FAILED attempts, {len(FINAL_KEYS)} final metrics and {len(HISTORY_KEYS)}x{args.epochs} "
              f"history points per FINISHED run; built in {build_s:.1f} s at {uri}")

        import mlflow

        mlflow.set_tracking_uri(uri)
        tracker = Tracker(uri)
        exp_id = tracker.experiment_id(study_data["name"])
        ref_s, frame = timed(lambda: mlflow.search_runs([exp_id], max_results=100_000))
        assert len(frame) == n_runs, len(frame)
        runs_s, recs = timed(lambda: tracker.runs(exp_id))
        assert len(recs) == n_runs
        states_s, states = timed(lambda: tracker.run_states(exp_id))
        assert len(states) == n and {s.status for s in states.values()} == {"FINISHED"}
        fast_s, fast = timed(lambda: tracker.final_metrics_by_hash(exp_id))
        assert len(fast) == n

        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        ltkd = [str(Path(sys.executable).parent / "ltkd")]
        tables_cmd, status_cmd = ["tables", str(study_file), "--format", "md"], ["status", str(study_file)]
        tables_s = best_of(args.repeat, ltkd + tables_cmd, env, folder)
        status_s = best_of(args.repeat, ltkd + status_cmd, env, folder)
        start_s, _ = timed(lambda: subprocess.run([sys.executable, "-c", "import orchestrator.cli, orchestrator.tables, mlflow, pandas"],
                                                  capture_output=True, env=env, cwd=REPO))
        baseline = {}
        if args.baseline:
            # `python -m orchestrator.cli` from the extracted folder runs that commit's code with this venv.
            old = source_of(args.baseline, folder)
            python_m = [sys.executable, "-m", "orchestrator.cli"]
            baseline["tables"] = best_of(args.repeat, python_m + tables_cmd, env, old)
            baseline["status"] = best_of(1, python_m + status_cmd, env, old)

        def line(label: str, seconds: float) -> str:
            return f"  {label:70s} {seconds:7.2f} s  {n_runs / seconds:9.0f} runs/s  {seconds / ref_s:6.2f}x reference"

        print(f"reading {n_runs} runs ({n} trials):")
        print(line("reference: mlflow.search_runs (pandas frame)", ref_s))
        print(line("Tracker.runs (whole runs: what `ltkd status` read before)", runs_s))
        print(line("Tracker.run_states (what `ltkd status` reads now)", states_s))
        print(line("Tracker.final_metrics_by_hash (what tables read)", fast_s))
        print(line(f"`ltkd tables --format md` end to end (fresh process, best of {args.repeat})", tables_s))
        print(line(f"`ltkd status` end to end (fresh process, best of {args.repeat})", status_s))
        print(f"  (of which starting Python and importing ltkd, mlflow, pandas: {start_s:.2f} s)")
        print(f"tables end to end / reference: {tables_s / ref_s:.2f}; table read / reference: {fast_s / ref_s:.3f} "
              f"({ref_s / fast_s:.0f}x faster)")
        print(f"status read: Tracker.run_states {states_s:.2f} s vs Tracker.runs {runs_s:.2f} s ({runs_s / states_s:.0f}x faster)")
        if baseline:
            print(f"end to end, {args.baseline} -> this working tree (same store, same machine):")
            for name, now in (("tables", tables_s), ("status", status_s)):
                print(f"  ltkd {name:7s} {baseline[name]:7.2f} s -> {now:5.2f} s  ({baseline[name] / now:.1f}x faster)")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
