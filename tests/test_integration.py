"""A tiny study through a real local Ray into real MLflow stores (a SQLite file and a server process)."""
import json
import statistics
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

pytestmark = pytest.mark.integration

TINY = """
name: {name}
dataset: {{name: digits, gammas: [10]}}
pairs: [{{teacher: cnn_w16, student: cnn_w4}}]
methods:
  kd: {{alpha: 1.0, temperature: 4.0}}
  ltkd: {{alpha: 1.0, beta: 1.0, temperature: 4.0, n_groups: 3}}
seeds: [0, 1]
recipe: {{epochs: 3, batch_size: 64, lr: 0.05, milestones: [2]}}
resources: {{cpu: 1}}
"""


def write_study(tmp_path: Path, name: str, body: str = TINY) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body.format(name=name)))
    return path


def all_runs(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def check_sweep(uri: str, study: Path, name: str, tmp_path: Path, capsys) -> None:
    assert main(["sweep", str(study), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "store refused" in line] == []  # every event taken (a replayed one too)
    assert "8 trials: 2 teacher (0 done), 2 student (0 done), 4 distillation (0 done); 8 to run" in out
    client, runs = all_runs(uri, name)
    runs = [r for r in runs if r.data.tags.get("config_hash")]  # the trials' runs (not a `tables` run)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}

    # Tracking schema: params, per-epoch metrics with steps, tags, per-class artifact, readable names.
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {
        "Teacher w16 γ10 s0", "Teacher w16 γ10 s1", "Student w4 γ10 s0", "Student w4 γ10 s1",
        "KD w16>w4 γ10 s0", "KD w16>w4 γ10 s1", "LTKD w16>w4 γ10 s0", "LTKD w16>w4 γ10 s1",
    }
    ltkd = by_name["LTKD w16>w4 γ10 s1"]
    p = ltkd.data.params
    # as the study writes them: γ 10 is "10" (`params.gamma = '10'` finds it)
    assert (p["dataset"], p["gamma"], p["role"], p["method"], p["teacher"], p["student"]) == ("digits", "10", "distill", "ltkd", "cnn_w16", "cnn_w4")
    assert (p["alpha"], p["beta"], p["n_groups"], p["temperature"], p["seed"], p["epochs"]) == ("1", "1", "3", "4", "1", "3")
    tags = ltkd.data.tags
    assert tags["study"] == name and len(tags["config_hash"]) == 16 and tags["git_commit"]
    teacher_s1 = by_name["Teacher w16 γ10 s1"]
    assert tags["teacher_hash"] == teacher_s1.data.tags["config_hash"] and tags["cell"] == "LTKD w16>w4 γ10"
    # linked to its teacher's run: a tag and a link in its description
    assert tags["teacher_run_id"] == teacher_s1.info.run_id
    # digits on the device path: the teacher's logits from its table, built once per teacher on this node
    distill = [r for n, r in by_name.items() if n.startswith(("KD ", "LTKD "))]
    assert {r.data.tags["teacher_logits"] for r in distill} <= {"table:built", "table:read"}
    assert "teacher_logits" not in teacher_s1.data.tags
    assert f"/runs/{teacher_s1.info.run_id})" in tags["mlflow.note.content"]
    # its training data, system metrics, per-class plot and an MLflow model of its final weights
    inputs = client.get_run(ltkd.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, len(i.dataset.digest)) for i in inputs] == [("digits-LT γ10", 16)]
    assert len(json.loads(inputs[0].dataset.profile)["class_counts"]) == 10
    assert "system/cpu_utilization_percentage" in ltkd.data.metrics
    assert {f.path for f in client.list_artifacts(ltkd.info.run_id)} >= {"per_class_accuracy.png", "checkpoint"}
    # The final weights are an MLflow 3 LoggedModel of the run, one per finished trial: its output,
    # tagged with its cell, carrying its final metrics, so the students of a cell rank by accuracy.
    [model_id] = [o.model_id for o in client.get_run(ltkd.info.run_id).outputs.model_outputs]
    logged = client.get_logged_model(model_id)
    assert (logged.name, logged.source_run_id, logged.model_type, str(logged.status)) == ("model", ltkd.info.run_id, "distill", "READY")
    assert (logged.tags["cell"], logged.tags["config_hash"], tags["model_id"]) == ("LTKD w16>w4 γ10", tags["config_hash"], model_id)
    assert logged.params["method"] == "ltkd" and logged.params["gamma"] == "10"
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["acc_all"] == pytest.approx(ltkd.data.metrics["acc_all"]) and {m.dataset_name for m in logged.metrics} == {"digits-LT γ10"}
    exp_id = ltkd.info.experiment_id
    models = client.search_logged_models([exp_id], max_results=100)
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in by_name.values() if r.data.tags.get("config_hash"))
    cell = client.search_logged_models([exp_id], filter_string="tags.cell = 'LTKD w16>w4 γ10'",
                                       order_by=[{"field_name": "metrics.acc_all", "ascending": False}])
    cell_runs = [r for r in by_name.values() if r.data.tags.get("cell") == "LTKD w16>w4 γ10"]
    assert [m.source_run_id for m in cell] == [r.info.run_id for r in sorted(cell_runs, key=lambda r: -r.data.metrics["acc_all"])]
    # A teacher's model is a version of a registered model, and its students point at that version.
    registered = f"{name} Teacher w16 γ10 s1"
    assert teacher_s1.data.tags["registered_model"] == f"models:/{registered}/1"
    assert tags["teacher_model"] == f"models:/{registered}@config-{teacher_s1.data.tags['config_hash']}"
    version = client.get_model_version_by_alias(registered, f"config-{teacher_s1.data.tags['config_hash']}")
    teacher_model = client.get_logged_model(teacher_s1.data.tags["model_id"])
    assert (str(version.version), version.run_id, version.source) == ("1", teacher_s1.info.run_id, teacher_model.artifact_location)
    assert "registered_model" not in tags  # students are not registered
    import mlflow.pytorch
    import torch

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pytorch.load_model(f"runs:/{ltkd.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    history = client.get_metric_history(ltkd.info.run_id, "acc_tail")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(ltkd.info.run_id, "loss")] == [1, 2, 3]
    final_tail = [m.value for m in history if m.step == 3][0]
    assert ltkd.data.metrics["acc_tail"] == pytest.approx(final_tail)
    for key in ("acc_all", "acc_head", "acc_medium", "acc_tail", "best_acc_all", "best_epoch"):
        assert key in ltkd.data.metrics
    local = client.download_artifacts(ltkd.info.run_id, "per_class_accuracy.json", str(tmp_path))
    per_class = json.loads(Path(local).read_text())
    assert len(per_class["per_class_accuracy"]) == 10 and sum(per_class["class_counts"]) > 0
    teacher = by_name["Teacher w16 γ10 s0"]
    # The teacher's mean group probability on balanced test and long-tailed train data (percent).
    for split in ("test", "train"):
        mass = [teacher.data.metrics[f"pg_{split}_{g}"] for g in ("head", "medium", "tail")]
        assert sum(mass) == pytest.approx(100.0, abs=1e-3) and min(mass) > 0
    checkpoint = [f.path for f in client.list_artifacts(teacher.info.run_id, "checkpoint")]
    assert checkpoint == ["checkpoint/MANIFEST.json", "checkpoint/long_tailed_split.json", "checkpoint/model.pt"]
    split = json.loads(Path(client.download_artifacts(teacher.info.run_id, "checkpoint/long_tailed_split.json", str(tmp_path))).read_text())
    assert split["class_counts"] == per_class["class_counts"] and len(split["train_indices"]) == sum(split["class_counts"])

    # Rerunning the study adds no FINISHED run: every config_hash is already done.
    assert main(["sweep", str(study), "--tracking-uri", uri]) == 0
    assert "nothing to run" in capsys.readouterr().out
    _, again = all_runs(uri, name)
    assert len([r for r in again if r.data.tags.get("config_hash")]) == 8

    # The table's cells are the mean and sample std of the runs' final metrics.
    out_dir = tmp_path / f"tables-{name}"
    assert main(["tables", str(study), "--tracking-uri", uri, "--format", "csv", "--out", str(out_dir)]) == 0
    cells = pd.read_csv(out_dir / f"{name}_main.csv")
    for row, prefix in (("Teacher", "Teacher"), ("Student", "Student"), ("KD", "KD"), ("LTKD", "LTKD")):
        seeds = [r for n, r in by_name.items() if n.startswith(prefix + " ")]
        for group, key in (("Tail", "acc_tail"), ("All", "acc_all")):
            values = [r.data.metrics[key] for r in seeds]
            cell = cells[(cells["row"] == row) & (cells["group"] == group)].iloc[0]
            assert cell["n"] == 2 and cell["expected"] == 2
            assert cell["mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
            assert cell["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
    md = (out_dir / f"{name}_main.md").read_text()
    kd_runs = [r.data.metrics["acc_all"] for n, r in by_name.items() if n.startswith("KD ")]
    assert f"{statistics.mean(kd_runs):.2f} ± {statistics.stdev(kd_runs):.2f}" in md


def test_sweep_into_local_sqlite_store(ray_local, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_sweep(uri, write_study(tmp_path, "tiny_local"), "tiny_local", tmp_path, capsys)


def test_sweep_into_mlflow_server(ray_local, mlflow_server, tmp_path, capsys):
    check_sweep(mlflow_server, write_study(tmp_path, "tiny_server"), "tiny_server", tmp_path, capsys)


def test_failed_trial_is_tracked_failed_and_blocks_its_students(ray_local, tmp_path, capsys):
    # lr = 1e6 makes the teacher's loss overflow: the trial fails, its run says why, students are skipped.
    study = write_study(tmp_path, "diverges", TINY.replace("seeds: [0, 1]", "seeds: [0]").replace("lr: 0.05", "lr: 1.0e+6"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["sweep", str(study), "--tracking-uri", uri]) == 1
    captured = capsys.readouterr()
    assert "SKIPPED" in captured.out and "its teacher did not finish" in captured.out
    assert "ltkd: failed:" in captured.err
    _, runs = all_runs(uri, "diverges")
    teacher = [r for r in runs if r.data.params["role"] == "teacher"][0]
    assert teacher.info.status == "FAILED"
    assert "FloatingPointError" in teacher.data.tags["error"]
    # a NaN loss would fail again: not retried (max_retries is for dead workers)
    assert teacher.data.tags["attempts"] == "1" and "retry " not in captured.out
    assert not [r for r in runs if r.data.params["role"] == "distill"]
    # The status command sees the failure and the missing trials.
    assert main(["status", str(study), "--tracking-uri", uri]) == 0
    assert "study diverges: 0 done, 0 running, 2 failed, 2 missing" in capsys.readouterr().out


def test_server_away_past_the_outage_limit_exits_1_and_a_rerun_completes_without_duplicates(tmp_path):
    """The tracking server stays away longer than --outage-limit: one line, exit 1, what was queued is
    kept on disk; the rerun writes it first and ends with each trial's run once."""
    import subprocess
    import sys

    from conftest import free_port, start_mlflow_server, stop

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    server, url = start_mlflow_server(root, port)
    # 10 epochs: the students and distillations, which start as the teachers finish, still have to
    # train when the server goes
    study = write_study(tmp_path, "lost_server", TINY.replace("epochs: 3,", "epochs: 10,"))
    ltkd = str(Path(sys.executable).parent / "ltkd")
    env = {**__import__("os").environ, "HOME": str(tmp_path)}
    cmd = [ltkd, "sweep", str(study), "--tracking-uri", url, "--outage-limit", "0.1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait for the first finished trial, then take the server away
            if "FINISHED" in line:
                break
        stop(server)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"ltkd: failed: the tracking store at {url} was unreachable for more than 0.1 min")
    assert "tracking events are kept in" in lines[0] and "rerun the same command once it is back" in lines[0]
    assert "tracking: server unreachable since" in out

    server, url = start_mlflow_server(root, port)  # the same store comes back
    try:
        rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "replaying" in rerun.stdout
        _, runs = all_runs(url, "lost_server")
        runs = [r for r in runs if r.data.tags.get("role") != "tables"]  # the trials' runs (the rerun also logs the tables)
        hashes = [r.data.tags["config_hash"] for r in runs]
        # every trial once: nothing lost, nothing twice, nothing left RUNNING
        assert len(runs) == 8 and len(set(hashes)) == 8
        assert {r.info.status for r in runs} == {"FINISHED"}
    finally:
        stop(server)
