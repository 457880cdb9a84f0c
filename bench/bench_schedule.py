"""Benchmark: the dependency-aware schedule against the former two-phase one, and the sweep's overhead.

1. A study whose teachers take unequal times (digits-LT at γ = 1 keeps every image, γ = 50 about a
   sixth) runs on 2 CPU slots twice from fresh stores, measured in the same run:
   - dependency-aware: one `ltkd sweep` (a student starts when its own teacher is done);
   - two-phase: the same trials with a barrier, as the sweep ran before: first a sweep of the study
     without its distillation methods (teachers and Student rows), then the full study (only the
     distillation trials are left). Its time is the sum of the two phases' makespans (each from its
     first trial start to its last trial end), so the second phase's Ray start-up is not counted
     against it.
2. Orchestration overhead on the smoke study: the makespan (first trial start to last trial end, as
   the runs in MLflow record them) against the ideal, the sum of the trials' own compute time
   (`train_seconds`) divided by the slots; and the sweep's wall time with what Ray start-up took.

Run: `.venv/bin/python bench/bench_schedule.py` (a few CPU minutes). Prints ratios; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

UNEQUAL = """
name: {name}
description: unequal teachers (γ 1 keeps all of digits, γ 50 a sixth)
dataset: {{name: digits, gammas: [1, 50]}}
pairs: [{{teacher: cnn_w32, student: cnn_w8}}]
methods: {methods}
student_baseline: true
seeds: [0, 1]
recipe: {{epochs: 20, batch_size: 64, lr: 0.05, milestones: [15]}}
teacher_recipe: {{epochs: 30}}
resources: {{cpu: 1}}
"""


def sweep(study: Path, uri: str, work: Path) -> float:
    """Run `ltkd sweep` as a user would; return its wall time."""
    env = {**os.environ, "HOME": str(work / "home"), "RAY_AUTH_MODE": "disabled"}
    (work / "home").mkdir(exist_ok=True)
    started = time.perf_counter()
    res = subprocess.run([str(BIN / "ltkd"), "sweep", str(study), "--tracking-uri", uri], cwd=work, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"ltkd sweep {study.name} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return wall


def runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.config_hash != ''", max_results=5000)


def makespan(found: list) -> float:
    return (max(r.info.end_time for r in found) - min(r.info.start_time for r in found)) / 1000


def compute(found: list) -> float:
    return sum(r.data.metrics["train_seconds"] for r in found)


def ray_startup(slots: int) -> float:
    """What starting a local Ray costs here (the sweep pays it once), measured in a fresh process."""
    code = ("import time, logging, os; os.environ['RAY_AUTH_MODE']='disabled'; import ray; t=time.perf_counter(); "
            f"ray.init(num_cpus={slots}, include_dashboard=False, logging_level=logging.ERROR); "
            "print(time.perf_counter()-t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def worker_startup() -> float:
    """What a fresh trial worker pays before its first trial: importing PyTorch and the trainer
    (once per slot per sweep, as actors are reused), measured in a fresh process."""
    code = ("import time; t=time.perf_counter(); import torch; import trainer.loop; torch.zeros(8).sum(); "
            "print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-smoke", action="store_true", help="only the unequal-teachers comparison")
    parser.add_argument("--only-smoke", action="store_true", help="only the smoke study's overhead")
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {slots} CPU cores, Python {platform.python_version()}; "
          f"slots = {slots} (1 CPU per trial)")
    with tempfile.TemporaryDirectory(prefix="ltkd-bench-schedule-") as tmp:
        work = Path(tmp)
        methods = "{kd: {alpha: 1.0, temperature: 4.0}, ltkd: {alpha: 1.0, beta: 1.0, temperature: 4.0, n_groups: 3}}"
        full = work / "unequal.yaml"
        full.write_text(textwrap.dedent(UNEQUAL.format(name="unequal", methods=methods)))
        no_distill = work / "unequal_phase1.yaml"
        no_distill.write_text(textwrap.dedent(UNEQUAL.format(name="unequal", methods="{}")))

        if args.only_smoke:
            return smoke_overhead(work, slots)
        uri_dep = f"sqlite:///{work}/dependency.db"
        wall_dep = sweep(full, uri_dep, work)
        dep = runs(uri_dep, "unequal")

        uri_two = f"sqlite:///{work}/two_phase.db"
        wall_p1 = sweep(no_distill, uri_two, work)
        phase1 = runs(uri_two, "unequal")
        wall_p2 = sweep(full, uri_two, work)
        phase2 = [r for r in runs(uri_two, "unequal") if r.info.run_id not in {p.info.run_id for p in phase1}]
        span_dep, span_two = makespan(dep), makespan(phase1) + makespan(phase2)
        print(f"\nunequal teachers ({len(dep)} trials: 2 teachers, 4 Student rows, 8 distillation; teacher γ1 "
              f"{[r.data.metrics['train_seconds'] for r in dep if r.info.run_name.startswith('teacher') and ' g1 ' in r.info.run_name][0]:.1f} s, "
              f"γ50 {[r.data.metrics['train_seconds'] for r in dep if r.info.run_name.startswith('teacher') and ' g50 ' in r.info.run_name][0]:.1f} s of compute)")
        print(f"  dependency-aware: makespan {span_dep:6.1f} s   (ltkd sweep wall {wall_dep:.1f} s)")
        print(f"  two-phase:        makespan {span_two:6.1f} s   (phase 1 {makespan(phase1):.1f} s + phase 2 {makespan(phase2):.1f} s; "
              f"wall {wall_p1:.1f} + {wall_p2:.1f} s)")
        print(f"  ratio two-phase / dependency-aware: {span_two / span_dep:.2f}x")

        if not args.skip_smoke:
            smoke_overhead(work, slots)


def smoke_overhead(work: Path, slots: int) -> None:
    uri_smoke = f"sqlite:///{work}/smoke.db"
    wall = sweep(REPO / "studies" / "smoke.yaml", uri_smoke, work)
    found = runs(uri_smoke, "smoke")
    ideal = compute(found) / slots
    span = makespan(found)
    startup = ray_startup(slots)
    worker = worker_startup()
    print(f"\nsmoke study ({len(found)} trials on {slots} slots)")
    print(f"  trials' own compute {compute(found):.1f} s -> ideal makespan {ideal:.1f} s; measured makespan {span:.1f} s")
    print(f"  orchestration overhead: {100 * (span / ideal - 1):+.1f} % (target: under 10 %); of it, a fresh worker's "
          f"start-up (PyTorch import, {worker:.1f} s, once per slot) is {100 * worker / ideal:.1f} points, "
          f"the rest {100 * ((span - worker) / ideal - 1):+.1f} %")
    print(f"  ltkd sweep wall {wall:.1f} s, of which local Ray start-up about {startup:.1f} s "
          f"(and Python/torch/MLflow imports, the store's creation, the plan)")


if __name__ == "__main__":
    main()
