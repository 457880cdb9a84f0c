"""The compose stack's tracking path for real, on loopback: Debian's PostgreSQL 15 and the MLflow server
started by docker/mlflow_serve.py with exactly the command, environment and secrets that
docker-compose.yml gives the `mlflow` service (read from the file as Docker Compose v2 resolves it, only
host names, ports and container paths swapped for loopback ones), so the two cannot drift apart.

Through it, as the README's users do: a sweep as the non-admin user `ltkd` with PostgreSQL stopped and
restarted mid-sweep (nothing lost, nothing duplicated), `ltkd tables` and `ltkd status`; no credentials, a
wrong password and a read-only user refused with one line naming what to set, the read-only user's sweep
and `--retrain-teacher` before Ray starts. And the same database as a direct `postgresql://` tracking URI:
a wrong password, a closed port and a missing driver refused within seconds, the password shown nowhere.
"""
from __future__ import annotations

import base64
import configparser
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_until
from test_compose import resolved

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKER = REPO / "docker"
# Where docker/mlflow_serve.py reads each folder in the container, and the variable that moves it.
ENTRYPOINT_FOLDERS = {"/run/ltkd/db": "LTKD_DB_SECRETS", "/run/ltkd/ltkd": "LTKD_LTKD_SECRETS",
                      "/run/ltkd/mlflow": "LTKD_MLFLOW_SECRETS"}
SECRETS_ROOT_IN_CONTAINER = "/run/ltkd"  # docker/ltkd_secrets.py's ROOT


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `apt-get install -y postgresql` (tests/system_packages.sh does it)")
    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL tests start a private cluster as the `postgres` user: run them as root")
    return found[-1].parent


class Postgres:
    """A private PostgreSQL cluster on 127.0.0.1: its superuser is `user` with `password` (as the
    postgres image makes POSTGRES_USER from POSTGRES_PASSWORD_FILE); logins over TCP need the password."""

    def __init__(self, root: Path, user: str, password_file: Path, databases: list[str]):
        self.bin = postgres_bin()
        self.root, self.user, self.port = root, user, free_port()
        root.mkdir()
        shutil.chown(root, "postgres", "postgres")
        self.data, self.sock, self.log = root / "data", root / "sock", root / "postgres.log"
        self.sock.mkdir()
        shutil.chown(self.sock, "postgres", "postgres")
        pwfile = root / "pwfile"
        pwfile.write_text(password_file.read_text().strip() + "\n")
        pwfile.chmod(0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        self.as_postgres(self.bin / "initdb", "-D", self.data, "-U", user, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                         "--auth-local=trust", "-E", "UTF8")
        pwfile.unlink()
        self.start()
        for db in databases:
            self.as_postgres(self.bin / "createdb", "-h", self.sock, "-p", self.port, "-U", user, db)

    def as_postgres(self, *cmd) -> None:
        run = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], capture_output=True, text=True, timeout=120,
                             cwd=self.root)
        assert run.returncode == 0, f"{cmd[0]}: {run.stdout}{run.stderr}"

    def start(self) -> None:
        self.as_postgres(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                         f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self.as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")


def compose_mlflow() -> tuple[dict, list[str]]:
    """The stack's services as Compose resolves them, and the mlflow image's entrypoint."""
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", (DOCKER / "mlflow.Dockerfile").read_text(), re.M)
    return resolved()["services"], json.loads(entrypoint)


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    """wait_until, with the tail of `log` in the message."""
    return wait_until(predicate, timeout, what, detail=None if log is None else lambda: log.read_text()[-3000:] if log.exists() else "")


def api(url: str, path: str, user: str | None = None, password: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@contextlib.contextmanager
def compose_tracking_stack():
    """PostgreSQL and the auth server as the compose stack runs them, on loopback; stopped at the end."""
    services, entrypoint = compose_mlflow()
    secrets_service, mlflow_service = services["secrets"], services["mlflow"]
    # A short folder outside pytest's (which is private to root): the postgres user must reach it.
    root = Path(tempfile.mkdtemp(prefix="ltkd-pgauth-"))
    root.chmod(0o755)
    # The secrets, as the one-shot `secrets` service makes them into its volumes.
    secrets = root / "secrets"
    run = subprocess.run([sys.executable, str(DOCKER / "ltkd_secrets.py"), *secrets_service["command"]], capture_output=True,
                         text=True, env={**os.environ, "LTKD_SECRETS_ROOT": str(secrets)}, timeout=60)
    assert run.returncode == 0, run.stderr
    volume_dirs = {v["source"]: secrets / Path(v["target"]).relative_to(SECRETS_ROOT_IN_CONTAINER)
                   for v in secrets_service["volumes"]}
    # The mlflow service's mounts: each container folder becomes a folder of this machine.
    host_path = {}
    for v in mlflow_service["volumes"]:
        folder = volume_dirs.get(v["source"]) or root / "volumes" / v["source"]
        folder.mkdir(parents=True, exist_ok=True)
        host_path[v["target"]] = folder
    assert {t for t in host_path if t.startswith(SECRETS_ROOT_IN_CONTAINER)} == set(ENTRYPOINT_FOLDERS), host_path
    postgres_env = services["postgres"]["environment"]
    db_password_file = host_path[str(Path(postgres_env["POSTGRES_PASSWORD_FILE"]).parent)] / Path(postgres_env["POSTGRES_PASSWORD_FILE"]).name
    pg = server = None
    try:
        pg = Postgres(root / "pg", postgres_env["POSTGRES_USER"], db_password_file, [postgres_env["POSTGRES_DB"]])
        port = free_port()

        def on_loopback(arg: str) -> str:
            arg = arg.replace("postgres:5432", f"127.0.0.1:{pg.port}")
            for target, folder in host_path.items():
                if arg == target or arg.startswith(target + "/"):
                    return str(folder) + arg[len(target):]
            return arg

        cmd = [on_loopback(a) for a in mlflow_service["command"]]
        assert cmd[:3] == ["serve", "--", "mlflow"], cmd
        cmd[2] = str(BIN / "mlflow")
        cmd[cmd.index("--host") + 1] = "127.0.0.1"
        cmd[cmd.index("--port") + 1] = str(port)
        # The image's files: the entrypoint script and the auth template (COPY lines of mlflow.Dockerfile).
        assert entrypoint == ["python", "/opt/ltkd-mlflow/mlflow_serve.py"], entrypoint
        template = configparser.ConfigParser()
        template.read(DOCKER / "basic_auth.ini")
        auth_db = template["mlflow"]["database_uri"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LTKD_", "PG"))}
        env.update(mlflow_service.get("environment") or {})
        env.update({var: str(host_path[folder]) for folder, var in ENTRYPOINT_FOLDERS.items()})
        env["LTKD_AUTH_TEMPLATE"] = str(DOCKER / "basic_auth.ini")
        env["LTKD_AUTH_DATABASE_URI"] = "sqlite:///" + on_loopback(auth_db.removeprefix("sqlite:///"))
        log = root / "mlflow.log"
        server = subprocess.Popen([sys.executable, str(DOCKER / "mlflow_serve.py"), *cmd], env=env, cwd=root,
                                  stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        health = [sys.executable, str(DOCKER / "mlflow_serve.py"),
                  *[str(port) if a == "5000" else a for a in mlflow_service["healthcheck"]["test"][3:]]]
        wait_for(lambda: server.poll() is not None or subprocess.run(health, timeout=30).returncode == 0, 180, "healthy MLflow server", log)
        assert server.poll() is None, log.read_text()[-3000:]
        # The sweep's side, as docker/Dockerfile sets it up: ~/.mlflow/credentials links into the secrets.
        home = root / "home"
        (home / ".mlflow").mkdir(parents=True)
        (home / ".mlflow" / "credentials").symlink_to(host_path["/run/ltkd/ltkd"] / "mlflow_credentials")
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
        client_env.update(HOME=str(home), PYTHONUNBUFFERED="1")
        yield {"root": root, "url": f"http://127.0.0.1:{port}", "pg": pg, "server": server, "log": log, "env": client_env,
               "ltkd_password": (host_path["/run/ltkd/ltkd"] / "mlflow_password").read_text().strip(),
               "admin_password": (host_path["/run/ltkd/mlflow"] / "admin_password").read_text().strip(),
               "db_password": db_password_file.read_text().strip(), "db_user": postgres_env["POSTGRES_USER"], "cmd": cmd}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if pg is not None:
            try:
                pg.stop()
            except AssertionError:
                pass  # not running
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    with compose_tracking_stack() as running:
        yield running


def test_the_server_runs_the_compose_command_and_asks_for_a_login(stack):
    cmd = stack["cmd"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"postgresql://{stack['db_user']}@127.0.0.1:{stack['pg'].port}/mlflow"
    # No password on a command line or in an environment, in the server or its workers (pgpass, files).
    import psutil

    server = psutil.Process(stack["server"].pid)
    for proc in [server, *server.children(recursive=True)]:
        seen = " ".join(proc.cmdline()) + "\0".join(f"{k}={v}" for k, v in proc.environ().items())
        for secret in ("db_password", "admin_password", "ltkd_password"):
            assert stack[secret] not in seen, (secret, proc.cmdline())
    assert api(stack["url"], "/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
    assert api(stack["url"], "/api/2.0/mlflow/experiments/search?max_results=1", "ltkd", stack["ltkd_password"])[0] == 200


STUDY = """
name: {name}
dataset: {{name: digits, gammas: [10]}}
pairs: [{{teacher: cnn_w8, student: cnn_w4}}]
methods: {{kd: {{alpha: 1.0, temperature: 4.0}}}}
student_baseline: false
seeds: {seeds}
recipe: {{epochs: 3, batch_size: 64, lr: 0.05}}
teacher_recipe: {{epochs: {teacher_epochs}}}
resources: {{cpu: 1}}
"""


def write_study(folder: Path, name: str, seeds: str = "[0]", teacher_epochs: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(STUDY.format(name=name, seeds=seeds, teacher_epochs=teacher_epochs)))
    return path


def ltkd(*args, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ltkd"), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """A refusal: exit status 2 and one line on stderr, no traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@contextlib.contextmanager
def client_as(stack, user: str, password: str):
    """An MLflow client of the auth server logged in as `user` (MLflow reads the login from the
    environment at each request), the environment as it was afterwards."""
    from mlflow.tracking import MlflowClient

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield MlflowClient(tracking_uri=stack["url"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tracked_runs(client, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.config_hash != ''", max_results=1000)


# The sweep's console lines when its writes stop going through, and when they go through again.
OUTAGE = re.compile(r"^tracking: .+ since \d\d:\d\d:\d\d \([\d,]+ events kept on disk; retrying\)")
BACK = re.compile(r"^tracking: .+ again after .+; writing [\d,]+ events kept on disk")


@pytest.fixture(scope="module")
def swept(stack):
    """The study swept as the non-admin `ltkd` (its credentials file, as in the image), with PostgreSQL
    stopped for a while once the teacher's run has epochs, then started again: the sweep's output."""
    work = stack["root"] / "sweep"
    study = write_study(work, "pg_auth", teacher_epochs=60)  # still training when PostgreSQL stops after its first epoch
    sweep = subprocess.Popen([str(BIN / "ltkd"), "sweep", study, "--tracking-uri", stack["url"], "--storage", work / "storage"],
                             env=stack["env"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sweep.stdout), daemon=True)
    reader.start()
    try:
        def teacher_has_epochs():
            with client_as(stack, "ltkd", stack["ltkd_password"]) as client:
                runs = tracked_runs(client, "pg_auth")
            return sweep.poll() is not None or any(r.data.metrics.get("acc_all") is not None for r in runs)

        wait_for(teacher_has_epochs, 240, "a teacher epoch in MLflow")
        assert sweep.poll() is None, "".join(lines)
        stack["pg"].stop()
        wait_for(lambda: sweep.poll() is not None or any(OUTAGE.match(line) for line in lines), 120, "the sweep noticing the outage")
        stack["pg"].start()
        sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    reader.join(timeout=10)
    return {"study": study, "work": work, "out": "".join(lines), "returncode": sweep.returncode}


def test_a_sweep_as_the_non_admin_user_loses_nothing_while_postgres_is_stopped(stack, swept):
    assert swept["returncode"] == 0, swept["out"]
    lines = swept["out"].splitlines()
    assert any(OUTAGE.match(line) for line in lines) and any(BACK.match(line) for line in lines), swept["out"]
    with client_as(stack, "ltkd", stack["ltkd_password"]) as client:
        runs = tracked_runs(client, "pg_auth")
        histories = {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "acc_all")] for r in runs}
    hashes = [r.data.tags["config_hash"] for r in runs]
    assert len(runs) == 2 and len(set(hashes)) == 2, [(r.info.run_name, r.info.status) for r in runs]  # nothing duplicated
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:  # nothing lost: every epoch's metric, once
        steps = histories[r.info.run_id]
        assert sorted(steps) == sorted(set(steps)) and len(steps) == int(r.data.params["epochs"]), (r.info.run_name, steps)
    # The experiment is `ltkd`'s: it created it, so it manages it (the server's record of permissions).
    exp_id = runs[0].info.experiment_id
    status, body = api(stack["url"], f"/api/3.0/mlflow/users/permissions/get?username=ltkd&resource_type=experiment&resource_id={exp_id}",
                       "admin", stack["admin_password"])
    assert (status, body.get("permission")) == (200, "MANAGE"), (status, body)


def test_tables_and_status_read_through_the_auth_server(stack, swept):
    status = ltkd("status", swept["study"], "--tracking-uri", stack["url"], env=stack["env"], cwd=swept["work"])
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip().splitlines()[-1] == "study pg_auth: 2 done, 0 running, 0 failed, 0 missing"
    tables = ltkd("tables", swept["study"], "--tracking-uri", stack["url"], env=stack["env"], cwd=swept["work"])
    assert tables.returncode == 0, tables.stderr
    assert re.search(r"^\|\s+KD\s+\|\s+[\d.]+\s+\|\s+[\d.]+\s+\|$", tables.stdout, re.M), tables.stdout


def no_login_env(stack, **extra) -> dict:
    env = {**stack["env"], "HOME": str(stack["root"] / "no-credentials"), **extra}
    Path(env["HOME"]).mkdir(exist_ok=True)
    return env


NO_LOGIN = (f"the MLflow server asks for a login and none is set; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            "or write them to ~/.mlflow/credentials ([mlflow] mlflow_tracking_username = ..., mlflow_tracking_password = ...; "
            "mode 600)")
WRONG_LOGIN = ("the MLflow server refused the login of user 'ltkd' from MLFLOW_TRACKING_USERNAME/_PASSWORD (wrong user or "
               "password); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials")


@pytest.mark.parametrize("command, login", [("status", "none"), ("tables", "wrong"), ("sweep", "none"), ("sweep", "wrong")])
def test_no_login_or_a_wrong_password_is_one_line_naming_what_to_set(stack, swept, command, login):
    wrong = {"MLFLOW_TRACKING_USERNAME": "ltkd", "MLFLOW_TRACKING_PASSWORD": "not-the-password-at-all"}
    env = no_login_env(stack, **(wrong if login == "wrong" else {}))
    line = one_line(ltkd(command, swept["study"], "--tracking-uri", stack["url"], env=env, cwd=swept["work"]))
    assert line.startswith(f"ltkd: error: --tracking-uri {stack['url']}: " + (WRONG_LOGIN if login == "wrong" else NO_LOGIN)), line
    assert "not-the-password-at-all" not in line


@pytest.fixture(scope="module")
def reader(stack):
    """A second, non-admin user that the admin adds (README: accounts for colleagues): READ by default."""
    password = "reader-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    status, body = api(stack["url"], "/api/2.0/mlflow/users/create", "admin", stack["admin_password"],
                       {"username": "reader", "password": password})
    assert status == 200 and body["user"]["is_admin"] is False, (status, body)
    return password


def test_a_read_only_users_sweep_and_an_editors_retrain_are_refused_before_ray_starts(stack, swept, reader):
    env = no_login_env(stack, MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD=reader)
    with client_as(stack, "ltkd", stack["ltkd_password"]) as client:
        before = tracked_runs(client, "pg_auth")
    teacher_hash = next(r.data.tags["config_hash"] for r in before if r.data.params["role"] == "teacher")
    more = write_study(swept["work"] / "more", "pg_auth", seeds="[0, 1]")  # one more seed: trials to run
    for args in ([more], [swept["study"], "--retrain-teacher", teacher_hash]):
        refused = ltkd("sweep", *args, "--tracking-uri", stack["url"], env=env, cwd=swept["work"])
        line = one_line(refused)
        # The plan was printed; the packing line that follows Ray's start was not.
        assert refused.stdout.startswith("study pg_auth: ") and "packing:" not in refused.stdout, refused.stdout
        assert line.startswith(f"ltkd: error: --tracking-uri {stack['url']}: user 'reader' may not write its runs in experiment "
                               "'pg_auth' (permission READ, needs EDIT)"), line
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line and reader not in line
    # A user who may edit but not delete the study's runs: --retrain-teacher (runs to the trash) is refused all the same.
    password = "editor-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    assert api(stack["url"], "/api/2.0/mlflow/users/create", "admin", stack["admin_password"],
               {"username": "editor", "password": password})[0] == 200
    grant = {"username": "editor", "resource_type": "experiment", "resource_id": before[0].info.experiment_id, "permission": "EDIT"}
    assert api(stack["url"], "/api/3.0/mlflow/users/permissions/grant", "admin", stack["admin_password"], grant)[0] == 200
    env = no_login_env(stack, MLFLOW_TRACKING_USERNAME="editor", MLFLOW_TRACKING_PASSWORD=password)
    refused = ltkd("sweep", swept["study"], "--tracking-uri", stack["url"], "--retrain-teacher", teacher_hash, env=env, cwd=swept["work"])
    line = one_line(refused)
    assert "packing:" not in refused.stdout, refused.stdout
    assert line.startswith(f"ltkd: error: --tracking-uri {stack['url']}: user 'editor' may not move runs to the trash "
                           "(--retrain-teacher) in experiment 'pg_auth' (permission EDIT, needs MANAGE)"), line
    with client_as(stack, "ltkd", stack["ltkd_password"]) as client:
        after = tracked_runs(client, "pg_auth")
    # Nothing written: the same two FINISHED runs (the teacher's not moved to the trash), no tag changed.
    assert [(r.info.run_id, r.info.status, r.data.tags) for r in after] == [(r.info.run_id, r.info.status, r.data.tags) for r in before]


def direct_uri(stack, password: str | None = None, port: int | None = None, database: str = "mlflow") -> str:
    """The server's own database (its tables are made already) as a tracking URI, password and all."""
    return (f"postgresql://{stack['db_user']}:{stack['db_password'] if password is None else password}"
            f"@127.0.0.1:{port or stack['pg'].port}/{database}")


def test_a_direct_database_sweep_shows_its_password_nowhere(stack):
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    password, uri = stack["db_password"], direct_uri(stack)
    shown = uri.replace(f":{password}@", ":***@")
    work = stack["root"] / "direct"
    study = write_study(work, "pg_direct")
    env = {**stack["env"], "HOME": str(work / "home")}
    run = ltkd("sweep", study, "--tracking-uri", uri, "--storage", work / "storage", env=env, cwd=work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert password not in run.stdout + run.stderr
    assert f"tracking: {shown} (experiment 'pg_direct', id " in run.stdout
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith(f"runs: experiment 'pg_direct' in {shown}; browse them with `") and last.endswith(f" ui {study} --tracking-uri {shown}`")
    # Nothing the sweep tracked holds it: params, tags, the tables run's report; nor any file it wrote.
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pg_direct")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 3  # the teacher, the student, the study's tables
    for r in runs:
        assert password not in json.dumps([r.data.params, r.data.tags]), r.info.run_name
    tables_run = next(r for r in runs if r.info.run_name == "tables pg_direct")
    report = Path(download_artifacts(run_id=tables_run.info.run_id, artifact_path="", dst_path=str(work / "artifacts"),
                                     tracking_uri=uri))
    texts = [p.read_bytes() for p in report.rglob("*") if p.is_file()]
    assert texts and not any(password.encode() in t for t in texts)
    leaked = [p for p in work.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert leaked == [], leaked


def test_a_direct_database_uri_that_cannot_work_is_one_line_within_seconds(stack, tmp_path):
    study = write_study(tmp_path, "pg_refused")
    env = {**stack["env"], "HOME": str(tmp_path)}
    cases = [
        (direct_uri(stack, password="wrong-password-123"), "the database refused the login (", "password authentication failed"),
        (direct_uri(stack, port=free_port()), "database server 127.0.0.1:", "not reachable"),
        (direct_uri(stack, database="no_such_db"), "cannot use the database (", 'database "no_such_db" does not exist'),
    ]
    for uri, start, cause in cases:
        started = time.monotonic()
        line = one_line(ltkd("sweep", study, "--tracking-uri", uri, env=env, cwd=tmp_path))
        assert line.startswith(f"ltkd: error: --tracking-uri {redacted(uri)}: {start}") and cause in line, line
        assert "wrong-password-123" not in line and stack["db_password"] not in line
        assert time.monotonic() - started < 60, "MLflow's retries of a refused login were not cut short"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    # Without the driver a bare postgresql:// needs (psycopg 3), the line names the project's extra.
    hide_psycopg = "import sys; sys.modules['psycopg'] = None; from orchestrator.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", hide_psycopg, "status", str(study), "--tracking-uri", direct_uri(stack)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert one_line(proc) == (f"ltkd: error: --tracking-uri {redacted(direct_uri(stack))}: its database driver is not installed "
                              "(no module 'psycopg'); `pip install 'ltkd[postgres]'` into this environment")


def redacted(uri: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)


def test_the_rotated_database_password_is_put_in_force_by_the_entrypoint(stack, monkeypatch):
    """docker/mlflow_serve.py after `ltkd_secrets.py rotate postgres_password`: logs in once with the
    previous password (on the real PostgreSQL, through the image's driver) and sets the new one."""
    import psycopg

    sys.path.insert(0, str(DOCKER))
    try:
        import mlflow_serve
    finally:
        sys.path.remove(str(DOCKER))
    pg, old, new = stack["pg"], "previous-" + os.urandom(12).hex(), "rotated-" + os.urandom(12).hex()
    admin = psycopg.connect(host="127.0.0.1", port=pg.port, user=stack["db_user"], dbname="mlflow", password=stack["db_password"])
    with admin:
        admin.execute(f"CREATE ROLE rotated LOGIN PASSWORD '{old}'")
    secrets = stack["root"] / "rotation"
    secrets.mkdir()
    (secrets / "postgres_password").write_text(new)
    (secrets / "postgres_password.previous").write_text(old)
    monkeypatch.setattr(mlflow_serve, "DB_SECRETS", secrets)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    mlflow_serve.prepare_postgres(f"postgresql://rotated@127.0.0.1:{pg.port}/mlflow", secrets)
    assert Path(os.environ["PGPASSFILE"]).read_text() == f"127.0.0.1:{pg.port}:mlflow:rotated:{new}\n"
    psycopg.connect(host="127.0.0.1", port=pg.port, user="rotated", dbname="mlflow", password=new).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=pg.port, user="rotated", dbname="mlflow", password=old)
    mlflow_serve.prepare_postgres(f"postgresql://rotated@127.0.0.1:{pg.port}/mlflow", secrets)  # the next start: no change
    psycopg.connect(host="127.0.0.1", port=pg.port, user="rotated", dbname="mlflow", password=new).close()
