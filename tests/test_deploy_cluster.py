"""An existing Ray cluster whose workers do not have the project, with the compose stack's security, on
loopback: real processes, no mocks.

- The Ray head (`ray start --head --block`) runs from a second virtual environment that sees the pinned
  stack (torch, Ray, MLflow, ...) but not the project: `import trainer` fails there. Token
  authentication is on (RAY_AUTH_MODE=token, the token in a file), as in docker-compose.yml.
- The MLflow server is started by docker/mlflow_serve.py, as the compose stack's mlflow container does
  (basic auth; users set from the secrets that docker/ltkd_secrets.py generated), on SQLite instead of
  PostgreSQL. The sweep logs in as the non-admin user `ltkd` through ~/.mlflow/credentials.
- `ltkd sweep --address` ships the project through Ray's runtime environment: the teacher trial runs on
  the project-less worker and FINISHES; then SIGTERM (as SLURM sends it, with SIGINT ignored as in a
  batch script's background job) stops the sweep as Ctrl-C does: the student's run is KILLED, one line,
  exit status 143.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import venv
from pathlib import Path

import pytest

from conftest import free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def no_project_python(root: Path) -> Path:
    """A virtual environment whose site-packages is this one's, minus the project: the editable
    install's .pth hook is not run for a folder added by another .pth file."""
    venv.EnvBuilder(with_pip=False).create(root)
    site = Path(sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})["purelib"])
    (site / "pinned-stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


def kill_tree(proc: subprocess.Popen, marker: str) -> None:
    """Stop a process group we started, then anything left whose command line names our own folder."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def read_lines(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    t.start()
    return t


def wait_for(predicate, timeout: float, what: str, lines: list[str] | None = None):
    """wait_until, with the last 40 of `lines` (a process's output) in the message."""
    return wait_until(predicate, timeout, what, detail=None if lines is None else lambda: "".join(lines[-40:]), interval=0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-cluster")
    # Secrets as the compose stack's `secrets` service makes them.
    secrets = root / "secrets"
    env_secrets = {**os.environ, "LTKD_SECRETS_ROOT": str(secrets)}
    subprocess.run([sys.executable, str(REPO / "docker" / "ltkd_secrets.py"), "init"], env=env_secrets, check=True,
                   capture_output=True, timeout=60)
    home = root / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").symlink_to(secrets / "ltkd" / "mlflow_credentials")  # as docker/Dockerfile
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "PYTHONPATH"))}

    # The MLflow server, through the compose stack's entrypoint.
    mport = free_port()
    mlflow_env = {**base, "LTKD_LTKD_SECRETS": str(secrets / "ltkd"), "LTKD_DB_SECRETS": str(secrets / "db"),
                  "LTKD_MLFLOW_SECRETS": str(root / "mlflow-own"), "LTKD_AUTH_TEMPLATE": str(REPO / "docker" / "basic_auth.ini"),
                  "LTKD_AUTH_DATABASE_URI": f"sqlite:///{root}/auth.db"}
    # The Ray head, from an environment without the project, token authentication on.
    python = no_project_python(root / "no-project-venv")
    probe = subprocess.run([str(python), "-c", "import ray, torch, mlflow\ntry:\n import trainer\nexcept ImportError: print('absent')"],
                           capture_output=True, text=True, cwd=root, env=base, timeout=120)
    assert probe.stdout.strip() == "absent", probe.stdout + probe.stderr
    token = root / "ray_token"
    token.write_text(open(secrets / "ltkd" / "ray_token").read())
    token.chmod(0o600)
    ray_env = {**base, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
               "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # the head stops at once at the end
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ltkd-ray-")  # short: Ray's socket paths must fit in 107 bytes
    server = head = None
    try:
        server = subprocess.Popen(
            [sys.executable, str(REPO / "docker" / "mlflow_serve.py"), "serve", "--", str(BIN / "mlflow"), "server",
             "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--serve-artifacts",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(mport), "--workers", "1"],
            env=mlflow_env, cwd=root, stdout=open(root / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        head = subprocess.Popen(
            [str(python), "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
             "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
             "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=200000000", f"--temp-dir={temp_dir}", "--block"],
            env=ray_env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        head_lines: list[str] = []
        read_lines(head, head_lines)
        wait_for(lambda: any("Ray runtime started" in line for line in head_lines) or head.poll() is not None, 120,
                 "Ray head", head_lines)
        assert head.poll() is None, "".join(head_lines)
        url = f"http://127.0.0.1:{mport}"
        wait_for(lambda: subprocess.run([sys.executable, str(REPO / "docker" / "mlflow_serve.py"), "health", str(mport)]).returncode == 0
                 or server.poll() is not None, 120, "MLflow server")
        assert server.poll() is None, (root / "mlflow.log").read_text()[-3000:]
        # The driver has the project (and whatever PYTHONPATH it runs with); the cluster above has neither.
        driver_env = {**ray_env, **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})}
        yield {"root": root, "address": f"127.0.0.1:{port}", "url": url, "env": driver_env, "secrets": secrets}
    finally:
        if head is not None:
            kill_tree(head, temp_dir)
        if server is not None:
            kill_tree(server, str(root))
        shutil.rmtree(temp_dir, ignore_errors=True)


PROBE = """
import os, ray
from orchestrator.execution.runtime_env import cluster_runtime_env

@ray.remote(num_cpus=0)
def where_is_trainer():
    try:
        import trainer
    except ImportError as exc:
        return f"ImportError: {exc}"
    return trainer.__file__

ray.init(address=os.environ["ADDRESS"], log_to_driver=False)
print("without:", ray.get(where_is_trainer.remote()))
ray.shutdown()
# As `ltkd sweep --address` joins (orchestrator.execution.cluster.init_ray): a job-level runtime environment.
ray.init(address=os.environ["ADDRESS"], log_to_driver=False, runtime_env=cluster_runtime_env(mode="code"))
print("with:", ray.get(where_is_trainer.remote()))
"""


def test_the_project_reaches_project_less_workers_only_through_the_runtime_env(stack):
    work = stack["root"] / "probe"
    work.mkdir()
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env={**stack["env"], "ADDRESS": stack["address"]},
                         capture_output=True, text=True, timeout=120)
    out = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert out.get("without") == "ImportError: No module named 'trainer'", run.stdout + run.stderr
    assert "runtime_resources" in out.get("with", "") and out["with"].endswith("trainer/__init__.py"), run.stdout + run.stderr
    # Token authentication is on: the GCS answers with the token (docker/ray_health.py's check) and
    # refuses without it.
    health = [str(BIN / "ray"), "health-check", "--address", stack["address"]]
    assert subprocess.run(health, cwd=work, env=stack["env"], capture_output=True, timeout=60).returncode == 0
    refused = subprocess.run(health, cwd=work, env={**stack["env"], "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr, refused.stderr[-500:]


STUDY = """
name: deploy_cluster
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w8, student: cnn_w4}]
methods: {kd: {alpha: 1.0, temperature: 4.0}}
student_baseline: false
seeds: [0]
recipe: {epochs: 5000, batch_size: 64, lr: 0.05, checkpoint_every: 1}
teacher_recipe: {epochs: 1}
resources: {cpu: 1}
"""


def test_a_sweep_on_the_cluster_finishes_the_shipped_trial_and_stops_on_sigterm_like_ctrl_c(stack, monkeypatch):
    from mlflow.tracking import MlflowClient

    work = stack["root"] / "sweep"
    work.mkdir()
    (work / "study.yaml").write_text(textwrap.dedent(STUDY))
    cmd = [str(BIN / "ltkd"), "sweep", "study.yaml", "--address", stack["address"], "--storage", str(work / "storage"),
           "--tracking-uri", stack["url"]]
    # SIGINT ignored, as for a background job of a batch script (deploy/slurm/ltkd-sweep.sbatch).
    sweep = subprocess.Popen(cmd, cwd=work, env={**stack["env"], "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    reader = read_lines(sweep, lines)
    creds = (stack["secrets"] / "ltkd" / "mlflow_credentials").read_text().split()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ltkd")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds[-1])
    client = MlflowClient(tracking_uri=stack["url"])

    def teacher_done_student_started():
        if sweep.poll() is not None:
            return True
        exp = client.get_experiment_by_name("deploy_cluster")
        runs = [] if exp is None else client.search_runs([exp.experiment_id], "tags.config_hash != ''")
        status = {r.data.params.get("role"): r.info.status for r in runs}
        return status == {"teacher": "FINISHED", "distill": "RUNNING"}

    try:
        wait_for(teacher_done_student_started, 150, "teacher FINISHED and student RUNNING in MLflow", lines)
        assert sweep.poll() is None, "".join(lines)
        sweep.send_signal(signal.SIGTERM)
        sweep.wait(timeout=90)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    reader.join(timeout=10)
    out = "".join(lines)
    assert sweep.returncode == 143, out
    assert "ltkd: interrupted (SIGTERM): runs in flight were marked KILLED" in out and "Traceback" not in out, out
    exp = client.get_experiment_by_name("deploy_cluster")
    runs = {r.data.params["role"]: r for r in client.search_runs([exp.experiment_id], "tags.config_hash != ''")}
    assert runs["teacher"].info.status == "FINISHED"  # trained on a worker that has no project of its own
    assert runs["distill"].info.status == "KILLED"
    assert {a.path for a in client.list_artifacts(runs["teacher"].info.run_id)} >= {"checkpoint"}
