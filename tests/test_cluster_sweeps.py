"""Faults a long sweep meets on a shared cluster, injected for real: a trial's worker SIGKILLed, the
sweep itself SIGKILLed, the tracking server stopped and restarted, a second sweep of the same study,
a Ray node lost; and the dependency-aware schedule (a student starts while another teacher trains).

Each test runs `ltkd sweep` as its own process (as users do) with its own HOME, Tune storage and store.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, start_mlflow_server, stop, wait_until

pytestmark = pytest.mark.integration

LTKD = str(Path(sys.executable).parent / "ltkd")
RAY = str(Path(sys.executable).parent / "ray")

STUDY = """
name: {name}
dataset: {{name: digits, gammas: {gammas}}}
pairs: [{{teacher: cnn_w16, student: cnn_w4}}]
methods: {{kd: {{alpha: 1.0, temperature: 4.0}}}}
student_baseline: {student_baseline}
seeds: {seeds}
recipe: {{epochs: {epochs}, batch_size: 64, lr: 0.05, checkpoint_every: 1}}
teacher_recipe: {{epochs: {teacher_epochs}}}
resources: {{cpu: 1}}
"""


def write_study(tmp_path: Path, name: str, gammas="[10]", seeds="[0]", epochs=3, teacher_epochs=None, student_baseline="false") -> Path:
    # A test that interrupts a teacher once the store shows its N-th epoch gives it far more epochs than
    # N: the store trails training (by up to 13 epochs seen on a loaded machine, the spool draining
    # behind), so a short teacher can be done, its end queued, by the time the interrupt comes.
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(STUDY.format(name=name, gammas=gammas, seeds=seeds, epochs=epochs, student_baseline=student_baseline,
                                                 teacher_epochs=teacher_epochs or epochs)))
    return path


def sweep_env(tmp_path: Path, **extra) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


def sweep_cmd(study: Path, uri: str, tmp_path: Path, *more: str) -> list[str]:
    return [LTKD, "sweep", str(study), "--tracking-uri", uri, "--storage", str(tmp_path / "storage"), *more]


def runs_of(uri: str, name: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id], "tags.config_hash != ''", max_results=1000))


def assert_complete(uri: str, name: str, trials: int) -> list:
    """One FINISHED run per config_hash, nothing left RUNNING, every epoch logged exactly once."""
    client, runs = runs_of(uri, name)
    hashes = [r.data.tags["config_hash"] for r in runs]
    assert len(runs) == trials and len(set(hashes)) == trials, [(r.info.run_name, r.info.status) for r in runs]
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status, r.data.tags.get("error"))
        epochs = int(r.data.params["epochs"])
        for key in ("loss", "acc_tail"):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (r.info.run_name, key, sorted(steps))
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"checkpoint", "per_class_accuracy.json"}
    return runs


class Sweep:
    """`ltkd sweep` as a child process whose output is collected line by line in the background."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, **popen):
        import threading

        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_line(self, text: str, timeout: float = 120) -> None:
        """Until the sweep printed `text` (e.g. "tracking:", once it has created its store: reading
        a SQLite store that another process is creating races MLflow's schema migration)."""
        wait_for(lambda: any(text in line for line in self.lines), timeout, f"the line {text!r}", self)

    def finish(self, timeout: float = 400) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return self.proc.returncode

    def poll(self):
        return self.proc.poll()


def wait_for(predicate, timeout: float, what: str, sweep: "Sweep | None" = None):
    """wait_until, given up as soon as the sweep has ended (its output's tail in the message)."""
    if sweep is None:
        return wait_until(predicate, timeout, what, interval=0.2)

    def ended():
        if sweep.poll() is None:
            return None
        sweep._reader.join(timeout=5)  # the rest of its output
        return f"the sweep ended (exit {sweep.proc.returncode})"
    return wait_until(predicate, timeout, what, detail=lambda: sweep.output[-3000:], ended=ended, interval=0.2)


def running_with_epochs(uri: str, name: str, at_least: int):
    """Runs RUNNING with at least this many epochs logged (read from the store, as a user would)."""
    try:
        client, runs = runs_of(uri, name)
    except Exception:  # noqa: BLE001 - the store is being created
        return []
    out = []
    for r in runs:
        if r.info.status == "RUNNING" and "pid" in r.data.tags:
            if len(client.get_metric_history(r.info.run_id, "loss")) >= at_least:
                out.append(r)
    return out


def test_worker_sigkilled_mid_trial_is_retried_and_resumes(tmp_path):
    study = write_study(tmp_path, "worker_killed", epochs=3, teacher_epochs=60)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = Sweep(sweep_cmd(study, uri, tmp_path), tmp_path, sweep_env(tmp_path))
    sweep.wait_line("tracking:")
    run = wait_for(lambda: running_with_epochs(uri, "worker_killed", 4), 180, "the teacher's 4th epoch", sweep)[0]
    os.kill(int(run.data.tags["pid"]), signal.SIGKILL)
    assert sweep.finish() == 0, sweep.output
    out = sweep.output
    assert "retry    teacher cnn_w16 g10 s0:" in out and "attempt 2/3, resuming from its last saved epoch" in out
    runs = assert_complete(uri, "worker_killed", 2)
    teacher = [r for r in runs if r.data.params["role"] == "teacher"][0]
    assert teacher.info.run_id == run.info.run_id  # the same run across both attempts
    assert teacher.data.tags["attempts"] == "2"
    assert int(teacher.data.tags["resumed_after_epoch"]) >= 4  # from its saved state, not from epoch 1
    assert teacher.data.tags["pid"] != run.data.tags["pid"]


def test_sweep_sigkilled_then_rerun_continues_without_duplicates(tmp_path):
    study = write_study(tmp_path, "driver_killed", seeds="[0, 1]", epochs=3, teacher_epochs=60)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    sweep = Sweep(sweep_cmd(study, uri, tmp_path), tmp_path, env, start_new_session=True)
    sweep.wait_line("tracking:")
    killed = wait_for(lambda: running_with_epochs(uri, "driver_killed", 5), 180, "5 epochs of a teacher", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost login node would
    sweep.finish()
    time.sleep(1)
    rerun = subprocess.run(sweep_cmd(study, uri, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "continuing" in rerun.stdout and "did not finish" in rerun.stdout
    runs = assert_complete(uri, "driver_killed", 4)
    again = {r.info.run_id: r for r in runs}
    for r in killed:  # the interrupted runs were continued (not duplicated), from their saved epoch
        assert r.info.run_id in again
        assert int(again[r.info.run_id].data.tags["resumed_after_epoch"]) >= 5
        assert again[r.info.run_id].data.tags["attempts"] == "2"


def test_tracking_server_down_10s_mid_sweep_the_sweep_goes_on_and_loses_nothing(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    server, url = start_mlflow_server(root, port)
    study = write_study(tmp_path, "outage", seeds="[0, 1]", epochs=30, teacher_epochs=40)
    sweep = Sweep(sweep_cmd(study, url, tmp_path), tmp_path, sweep_env(tmp_path))
    try:
        wait_for(lambda: running_with_epochs(url, "outage", 3), 180, "3 epochs in the store", sweep)
        stop(server)
        down_at = time.time()
        time.sleep(12)
        server, url = start_mlflow_server(root, port)  # the same store, back on the same port
        rc = sweep.finish()
        out = sweep.output
        assert rc == 0, out
        assert "tracking: server unreachable since" in out
        assert "tracking: server reachable again" in out
        runs = assert_complete(url, "outage", 4)
        # trials went on training while the server was down
        client = MlflowClient(url)
        during = [m for r in runs for m in client.get_metric_history(r.info.run_id, "loss") if down_at * 1000 < m.timestamp < (down_at + 10) * 1000]
        assert during, "no epoch was reported while the server was down"
    finally:
        if sweep.poll() is None:
            sweep.proc.kill()
        stop(server)


def test_a_second_sweep_of_the_same_study_exits_2_and_writes_nothing(tmp_path):
    # a teacher on all of digits (γ = 1) for 50 epochs: the first sweep outlives the second's start-up
    study = write_study(tmp_path, "twice", gammas="[1]", epochs=3, teacher_epochs=50)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    first = Sweep(sweep_cmd(study, uri, tmp_path), tmp_path, env)
    try:
        first.wait_line("tracking:")
        wait_for(lambda: running_with_epochs(uri, "twice", 1), 180, "the first sweep's teacher to train", first)
        client, before = runs_of(uri, "twice")
        second = subprocess.run(sweep_cmd(study, uri, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr
        assert lines[0].startswith("ltkd: error: study 'twice' is being swept by another `ltkd sweep` (host ")
        assert f"pid {first.pid}, started " in lines[0]
        assert "started" not in second.stdout.replace("study twice", "")  # no trial started
        _, after = runs_of(uri, "twice")
        assert len(after) <= 2  # only the first sweep's trials (teacher, then its student)
        lease = json.loads(client.get_experiment_by_name("twice").tags["ltkd.sweep_lease"])
        assert lease["pid"] == first.pid  # the second sweep did not even touch the lease
        assert first.finish() == 0, first.output
    finally:
        if first.poll() is None:
            first.proc.kill()
    # the lease is released at the end: the next sweep runs (and finds nothing to do)
    again = subprocess.run(sweep_cmd(study, uri, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stderr


def test_a_student_starts_as_soon_as_its_own_teacher_is_done(tmp_path):
    # γ = 1 keeps all of digits (slow teacher), γ = 50 a sixth of it (fast teacher); 2 CPU slots.
    study = write_study(tmp_path, "schedule", gammas="[1, 50]", epochs=2, teacher_epochs=40)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = subprocess.run(sweep_cmd(study, uri, tmp_path), cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {r.info.run_name: r for r in assert_complete(uri, "schedule", 4)}
    slow_teacher = runs["Teacher w16 γ1 s0"]
    fast_student = runs["KD w16>w4 γ50 s0"]
    assert runs["Teacher w16 γ50 s0"].info.end_time <= fast_student.info.start_time
    assert fast_student.info.start_time < slow_teacher.info.end_time, "the fast teacher's student waited for the slow teacher"
    assert fast_student.info.end_time < slow_teacher.info.end_time


def _ray(*args: str, env: dict) -> None:
    subprocess.run([RAY, *args], env=env, check=True, capture_output=True, text=True, timeout=120)


def test_two_node_cluster_loses_a_node_mid_trial_and_its_trials_finish_on_the_other(tmp_path):
    env = sweep_env(tmp_path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    port, node2_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    # Its own Ray folder (short: Ray's socket paths have a length limit), so that the cleanup stops
    # this cluster alone: `ray stop` would stop every Ray on the machine, other sweeps' included.
    temp_dir = tempfile.mkdtemp(prefix="ltkdray-", dir="/tmp")
    _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", env=env)
    try:
        _ray("start", f"--address={address}", "--num-cpus=1", f"--node-manager-port={node2_port}", "--disable-usage-stats", env=env)
        study = write_study(tmp_path, "two_nodes", seeds="[0, 1]", epochs=3, teacher_epochs=60)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        sweep = Sweep(sweep_cmd(study, uri, tmp_path, "--address", address), tmp_path, env)
        sweep.wait_line("tracking:")
        both = wait_for(lambda: (lambda rs: rs if len({r.data.tags["node_id"] for r in rs}) == 2 else None)(
            running_with_epochs(uri, "two_nodes", 3)), 240, "trials training on both nodes", sweep)
        # node 2 is lost: its raylet and the workers it started (its children) die at once
        raylet = subprocess.run(["pgrep", "-f", f"raylet .*--node_manager_port={node2_port}"], capture_output=True, text=True).stdout.split()
        assert len(raylet) == 1, raylet
        node2 = re.search(r"--node_id=(\w+)", Path(f"/proc/{raylet[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode()).group(1)
        assert node2 in {r.data.tags["node_id"] for r in both}
        subprocess.run(["pkill", "-9", "-P", raylet[0]], check=False)
        os.kill(int(raylet[0]), signal.SIGKILL)
        assert sweep.finish() == 0, sweep.output
        out = sweep.output
        assert "retry    " in out
        runs = assert_complete(uri, "two_nodes", 4)
        node_ids = {v for r in runs for k, v in r.data.tags.items() if k.endswith("_node_id")}
        assert node_ids >= {r.data.tags["node_id"] for r in both} and len(node_ids) == 2
        retried = [r for r in runs if int(r.data.tags["attempts"]) >= 2]
        assert retried and all(r.data.tags["attempt_1_node_id"] == node2 != r.data.tags["node_id"] for r in retried)
    finally:
        stop_ray_folder(temp_dir)


def stop_ray_folder(temp_dir: str) -> None:
    """Stop every process of the Ray cluster that keeps its files in `temp_dir` (its command line or
    open files name it), then remove the folder."""
    import shutil

    from orchestrator.execution.leftovers import _holders

    procs = _holders(temp_dir)
    for p in procs:
        p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except Exception:  # noqa: BLE001 - gone already
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ctrl_c_stops_the_sweep_with_exit_130_and_the_rerun_continues_the_killed_runs(tmp_path):
    study = write_study(tmp_path, "ctrl_c", epochs=3, teacher_epochs=60)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    sweep = Sweep(sweep_cmd(study, uri, tmp_path), tmp_path, env)
    sweep.wait_line("tracking:")
    wait_for(lambda: running_with_epochs(uri, "ctrl_c", 3), 180, "3 epochs of the teacher", sweep)
    os.kill(sweep.pid, signal.SIGINT)
    assert sweep.finish(timeout=120) == 130, sweep.output
    assert "ltkd: interrupted:" in sweep.output and "Traceback" not in sweep.output
    _, runs = runs_of(uri, "ctrl_c")
    assert [r.info.status for r in runs] == ["KILLED"]  # the teacher in flight; nothing left RUNNING
    killed = runs[0]
    rerun = subprocess.run(sweep_cmd(study, uri, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    runs = {r.info.run_id: r for r in assert_complete(uri, "ctrl_c", 2)}
    assert killed.info.run_id in runs and int(runs[killed.info.run_id].data.tags["resumed_after_epoch"]) >= 3
