"""Tables that keep themselves current (issue 15): the sweep regenerates them into the study's
`tables` run, also when it is interrupted (missing cells marked), and `ltkd tables --watch` picks up
runs that another process adds, then stops cleanly on Ctrl-C. Real processes, a real SQLite store.
"""
from __future__ import annotations

import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from test_cluster_sweeps import LTKD, Sweep, runs_of, sweep_env, wait_for

pytestmark = pytest.mark.integration

STUDY = """
name: living
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods: {kd: {}, ltkd: {}}
student_baseline: false
seeds: [0, 1]
recipe: {epochs: 2, batch_size: 64, lr: 0.05}
teacher_recipe: {epochs: 2}
resources: {cpu: 1}
"""


def tables_run(uri: str):
    client, _ = runs_of(uri, "living")
    exp = client.get_experiment_by_name("living")
    [run] = client.search_runs([exp.experiment_id], "tags.role = 'tables'")
    return client, run


def test_interrupted_sweep_leaves_current_tables_and_watch_follows_a_second_sweep(tmp_path):
    study = tmp_path / "living.yaml"
    study.write_text(textwrap.dedent(STUDY))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    sweep = Sweep([LTKD, "sweep", str(study), "--tracking-uri", uri, "--tables-every", "0.02"], tmp_path, env)
    sweep.wait_line("tracking:")
    wait_for(lambda: any("FINISHED" in line and ">" in line for line in sweep.lines), 300, "a first distillation trial", sweep)
    sweep.proc.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=180) == 130, sweep.output
    # the final regeneration's line (with the plots) says where the tables are: the tables run, or --out
    lines = [ln for ln in sweep.lines if ln.startswith("tables: regenerated from") and "in MLflow run 'tables living'" in ln
             # the study as given; --tracking-uri only when the store is not the default (MLFLOW_TRACKING_URI, else
             # this folder's sqlite:///mlflow.db, which it is here)
             and re.search(rf"ltkd tables {re.escape(str(study))}( --tracking-uri {re.escape(uri)})? --out DIR` writes them to a folder", ln)
             and "spool" not in ln]
    assert len(lines) == 1, sweep.output
    runs_then = int(lines[0].split("regenerated from ")[1].split()[0])
    assert 2 <= runs_then < 6 and "cells short of seeds" in lines[0] and " 0 cells short" not in lines[0], sweep.output
    client, run = tables_run(uri)
    assert run.info.status == "FINISHED"
    assert f"from {runs_then} FINISHED runs" in run.data.tags["mlflow.note.content"]
    md = Path(client.download_artifacts(run.info.run_id, "tables/living_main.md", str(tmp_path / "dl1"))).read_text()
    assert "(n=1)" in md or "–" in md  # the cells the interrupted sweep left short

    # A laptop watches the store while a second sweep finishes the study.
    watch = Sweep([LTKD, "tables", str(study), "--tracking-uri", uri, "--out", str(tmp_path / "watched"), "--watch", "--every", "1"],
                  tmp_path, env)
    wait_for(lambda: any(f"tables regenerated from {runs_then} runs" in ln for ln in watch.lines), 120, "the first regeneration", watch)
    rerun = subprocess.run([LTKD, "sweep", str(study), "--tracking-uri", uri, "--tables-every", "0"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "tables: regenerated from 6 runs (0 cells short of seeds)" in rerun.stdout
    wait_for(lambda: any("tables regenerated from 6 runs (0 cells short of seeds)" in ln for ln in watch.lines), 120,
             "the watch's regeneration after the second sweep", watch)
    watch.proc.send_signal(signal.SIGINT)
    assert watch.finish(timeout=60) == 0, watch.output
    assert watch.lines[-1].strip() == "stopped watching" and "Traceback" not in watch.output
    md = (tmp_path / "watched" / "living_main.md").read_text()
    assert "(n=" not in md and "–" not in md
