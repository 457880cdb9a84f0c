"""Faults that used to leave a sweep stuck or a user without an answer (issue 9), injected for real:
a corrupt teacher checkpoint in the node's cache and in the store, a sweep SIGKILLed and its study
edited before the rerun, a trial size no node can hold, a read-only store, a full disk, a study
name no MLflow filter literal can carry. Each `ltkd` runs as its own process with its own HOME.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow.tracking import MlflowClient

from test_cluster_sweeps import LTKD, Sweep, runs_of, running_with_epochs, sweep_env, wait_for

pytestmark = pytest.mark.integration

STUDY = """
name: {name}
dataset: {{name: digits, gammas: [10]}}
pairs: [{{teacher: cnn_w16, student: cnn_w4}}]
methods: {methods}
student_baseline: false
seeds: {seeds}
recipe: {{epochs: 2, batch_size: 64, lr: 0.05, checkpoint_every: 1}}
teacher_recipe: {{epochs: {teacher_epochs}}}
resources: {{cpu: {cpu}, gpu: {gpu}, max_retries: 0}}
"""


def write(path: Path, name: str, methods: str = "{kd: {}}", seeds: str = "[0]", teacher_epochs: int = 2, cpu=1, gpu=0) -> Path:
    path.write_text(textwrap.dedent(STUDY.format(name=name, methods=methods, seeds=seeds, teacher_epochs=teacher_epochs, cpu=cpu, gpu=gpu)))
    return path


def ltkd(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([LTKD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    path.write_bytes(bytes(data))


def test_corrupt_checkpoint_cache_is_refetched_and_a_corrupt_artifact_names_the_teacher_to_retrain(tmp_path):
    name = "it's \"hard\""  # both quote kinds: no MLflow filter literal can hold it
    study = tmp_path / "study.yaml"
    quoted = "'it''s \"hard\"'"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    cache = tmp_path / "home" / ".cache" / "ltkd" / "checkpoints"

    write(study, quoted, "{kd: {}}")
    first = ltkd("sweep", str(study), "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    client, runs = runs_of(uri, name)
    teacher = [r for r in runs if r.data.params["role"] == "teacher"][0]
    teacher_hash = teacher.data.tags["config_hash"]
    artifact = Path(unquote(urlparse(teacher.info.artifact_uri).path)) / "checkpoint"
    manifest = json.loads((artifact / "MANIFEST.json").read_text())["files"]
    assert manifest["model.pt"]["sha256"] == sha256(artifact / "model.pt")
    assert set(manifest) == {"model.pt", "long_tailed_split.json"}

    # A trial of a later sweep gets the teacher from the store through this node's cache, with the
    # function its trials call (the sweep's own trials read the teacher from Tune's checkpoint): the
    # copy it caches is the artifact's.
    import mlflow

    from orchestrator.tracking import fetch_checkpoint

    previous = mlflow.get_tracking_uri()
    try:
        fetched = fetch_checkpoint(teacher.info.artifact_uri + "/checkpoint", uri, cache_root=str(cache), teacher_hash=teacher_hash)
    finally:
        mlflow.set_tracking_uri(previous)
    [cached] = list(cache.glob("*/model.pt"))
    assert cached == Path(fetched) / "model.pt" and sha256(cached) == manifest["model.pt"]["sha256"]

    # The cached copy goes bad (a fetch cut short, a disk error): the next trials (two at once) fetch
    # it again, into the same cache entry.
    corrupt(cached)
    write(study, quoted, "{kd: {}, ltkd: {}, dkd: {warmup: 1}}")
    third = ltkd("sweep", str(study), "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert sha256(cached) == manifest["model.pt"]["sha256"]

    # The stored artifact itself goes bad: the trial fails at once with one line naming the teacher.
    corrupt(artifact / "model.pt")
    corrupt(cached)
    write(study, quoted, "{kd: {}, ltkd: {}, dkd: {warmup: 1}, dist: {}}")
    fourth = ltkd("sweep", str(study), "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert fourth.returncode == 1, fourth.stdout + fourth.stderr
    assert "Traceback" not in fourth.stdout + fourth.stderr
    _, runs = runs_of(uri, name)
    [dist] = [r for r in runs if r.data.params["method"] == "dist"]
    assert dist.info.status == "FAILED" and dist.data.tags["attempts"] == "1"
    error = dist.data.tags["error"]
    assert error.startswith("CorruptCheckpoint: the teacher checkpoint ") and "is corrupt in the tracking store (model.pt's sha256" in error
    assert error.endswith(f"retrain that teacher with `ltkd sweep STUDY --retrain-teacher {teacher_hash}`") and "\n" not in error
    assert f"--retrain-teacher {teacher_hash}" in fourth.stdout

    # Retrained on request: the old run goes to the trash, a new one is FINISHED, the failed trial runs.
    fifth = ltkd("sweep", str(study), "--tracking-uri", uri, "--retrain-teacher", teacher_hash[:8], cwd=tmp_path, env=env)
    assert fifth.returncode == 0, fifth.stdout + fifth.stderr
    assert f"retraining teacher teacher cnn_w16 g10 s0 ({teacher_hash}): its run(s) {teacher.info.run_id} moved to the experiment's trash" in fifth.stdout
    assert client.get_run(teacher.info.run_id).info.lifecycle_stage == "deleted"
    _, runs = runs_of(uri, name)
    finished = {(r.data.params["role"], r.data.params["method"]) for r in runs if r.info.status == "FINISHED"}
    assert finished >= {("teacher", "ce"), ("distill", "dist")}

    # Tables of a study whose name holds both quote kinds; then a full disk under --out.
    tables = ltkd("tables", str(study), "--tracking-uri", uri, "--out", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert tables.returncode == 0, tables.stderr
    assert (tmp_path / "out" / f"{name}_main.md").is_file() and f"logged them to MLflow run 'tables {name}'" in tables.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / f"{name}_main.md").symlink_to("/dev/full")
    tables = ltkd("tables", str(study), "--tracking-uri", uri, "--out", str(full), cwd=tmp_path, env=env)
    assert tables.returncode == 1 and "Traceback" not in tables.stderr
    assert tables.stderr.strip().splitlines()[-1] == (
        f"ltkd: failed: No space left on device writing {full / (name + '_main.md')}: free space there (or point --out/--storage "
        "elsewhere) and run the same command again; what is already tracked is kept")


def _holding(session_dir: str) -> list[int]:
    """Processes whose command line or open files still belong to a Ray session."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if session_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
                continue
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd).startswith(session_dir):
                    pids.append(int(proc.name))
                    break
        except OSError:
            continue
    return pids


def test_sigkilled_sweep_leftovers_are_cleaned_and_runs_its_edited_study_dropped_are_closed(tmp_path):
    study = write(tmp_path / "study.yaml", "killed_then_edited", seeds="[0, 1]", teacher_epochs=40)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    sweep = Sweep([LTKD, "sweep", str(study), "--tracking-uri", uri], tmp_path, env)  # no --storage: its own Tune folder
    sweep.wait_line("tracking:")
    running = wait_for(lambda: (lambda rs: rs if len(rs) == 2 else None)(running_with_epochs(uri, "killed_then_edited", 2)), 180,
                       "both teachers training", sweep)
    record = json.loads((tmp_path / "home" / ".cache" / "ltkd" / "drivers" / f"{sweep.pid}.json").read_text())
    os.kill(sweep.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
    sweep.finish()
    time.sleep(3)
    left = _holding(record["session_dir"])
    assert left, "the fault did not leave Ray processes behind"
    assert Path(record["tune_dir"]).is_dir()

    # The study is edited before the rerun: seed 1 is dropped, so its teacher's run has no trial now.
    write(study, "killed_then_edited", seeds="[0]", teacher_epochs=40)
    rerun = ltkd("sweep", str(study), "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # Counted again when the rerun starts: a leftover may have ended on its own meanwhile (a worker Ray killed late).
    cleaned = re.search(rf"cleaned up after a sweep that was killed \(pid {sweep.pid}\): stopped (\d+) leftover Ray process\(es\), "
                        rf"removed {re.escape(record['tune_dir'])}", rerun.stdout)
    assert cleaned and 1 <= int(cleaned.group(1)) <= len(left), (len(left), rerun.stdout)
    assert not _holding(record["session_dir"]) and not Path(record["tune_dir"]).exists()
    assert "closed 1 run(s) that a sweep which died left RUNNING and that this study no longer continues (now KILLED): " \
           "Teacher w16 γ10 s1" in rerun.stdout
    _, runs = runs_of(uri, "killed_then_edited")
    by_name = {r.info.run_name: r for r in runs}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    dropped = by_name["Teacher w16 γ10 s1"]
    assert dropped.info.status == "KILLED" and "its trial is no longer in the study" in dropped.data.tags["error"]
    kept = by_name["Teacher w16 γ10 s0"]
    assert kept.info.status == "FINISHED" and kept.info.run_id in {r.info.run_id for r in running}
    assert int(kept.data.tags["resumed_after_epoch"]) >= 2


@pytest.mark.parametrize("cpu,gpu,asked", [(64, 0, "64 CPU and 0 GPU"), (1, 1, "1 CPU and 1 GPU")], ids=["cpus", "gpu"])
def test_a_trial_no_node_can_hold_is_refused_before_anything_is_written(tmp_path, cpu, gpu, asked):
    study = write(tmp_path / "study.yaml", "too_big", cpu=cpu, gpu=gpu)
    proc = ltkd("sweep", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path, env=sweep_env(tmp_path),
                timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"ltkd: error: resources: a trial asks for {asked} on one node, and no node of the cluster has that much "
                           "(its nodes: ") and "--wait-for-resources" in line
    assert not (tmp_path / "mlflow.db").exists()


def _make_read_only(paths: list[Path]) -> callable:
    """Read-only for this process: chmod for a user, the immutable flag for root (chmod binds no root)."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in paths]
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    assert made.returncode == 0, f"cannot make the store read-only for root (chattr: {made.stderr.strip()})"
    return lambda: subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)


def test_a_read_only_store_is_one_line_and_exit_2(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("read_only")
    study = write(tmp_path / "study.yaml", "read_only")
    undo = _make_read_only([store / "mlflow.db", store])
    try:
        proc = ltkd("sweep", str(study), "--tracking-uri", uri, cwd=tmp_path, env=sweep_env(tmp_path), timeout=120)
    finally:
        undo()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"ltkd: error: --tracking-uri {uri}: cannot use the tracking store (") and "readonly database" in line


def test_an_error_is_reported_as_its_own_one_line_never_a_traceback():
    from mlflow.exceptions import MlflowException

    from orchestrator.errors import error_line

    listed = MlflowException("The following failures occurred while downloading one or more artifacts from file:///a:\n"
                             "##### File checkpoint #####\nNo such artifact: 'checkpoint'")
    assert error_line(listed) == ("MlflowException: The following failures occurred while downloading one or more artifacts "
                                  "from file:///a: No such artifact: 'checkpoint'")
    traced = RuntimeError("worker failed\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nOSError: disk gone")
    assert error_line(traced) == "RuntimeError: worker failed: OSError: disk gone"
    assert error_line(ValueError("")) == "ValueError" and "\n" not in error_line(KeyError("a\nb"))
