"""docker/ltkd_secrets.py and docker/mlflow_serve.py: the stack's secrets and MLflow users, run here as
the containers run them (on folders of this machine instead of volumes)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
sys.path.insert(0, str(DOCKER))
import ltkd_secrets  # noqa: E402
import mlflow_serve  # noqa: E402

sys.path.remove(str(DOCKER))


def run_secrets(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / "ltkd_secrets.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "LTKD_SECRETS_ROOT": str(root)}, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_every_secret_readable_by_the_group_only(tmp_path):
    run = run_secrets(tmp_path, "init")
    assert run.returncode == 0, run.stderr
    files = {p.relative_to(tmp_path).as_posix(): p for p in tmp_path.rglob("*") if p.is_file()}
    assert set(files) == {"db/postgres_password", "ltkd/ray_token", "ltkd/mlflow_password", "ltkd/mlflow_credentials"}
    values = {name: p.read_text() for name, p in files.items() if name != "ltkd/mlflow_credentials"}
    assert len(set(values.values())) == 3 and all(len(v) >= 40 for v in values.values())
    assert all(mode(p) == 0o440 for p in files.values()) and mode(tmp_path / "db") == 0o750
    if os.geteuid() == 0:
        assert {(p.stat().st_uid, p.stat().st_gid) for p in files.values()} == {(0, ltkd_secrets.SECRETS_GID)}
    creds = files["ltkd/mlflow_credentials"].read_text()
    assert creds == f"[mlflow]\nmlflow_tracking_username = ltkd\nmlflow_tracking_password = {values['ltkd/mlflow_password']}\n"
    # The next start keeps them.
    assert run_secrets(tmp_path, "init").returncode == 0
    assert {n: (tmp_path / n).read_text() for n in values} == values


@pytest.mark.parametrize("value, why", [("change-me-now", "known default"), ("password1234", "known default"),
                                        ("shortone", "shorter than 16"), ("a" * 20 + " b", "whitespace")])
def test_a_known_default_or_weak_secret_stops_the_stack_with_one_line(tmp_path, value, why):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "postgres_password").write_text(value)
    run = run_secrets(tmp_path, "init")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and why in run.stderr and "postgres_password" in run.stderr
    assert "rotate postgres_password" in run.stderr  # and says what to do


def test_rotation_replaces_values_and_keeps_the_previous_database_password(tmp_path):
    assert run_secrets(tmp_path, "init").returncode == 0
    before = {n: ltkd_secrets.path_of(n, tmp_path).read_text() for n in ltkd_secrets.SECRETS}
    run = run_secrets(tmp_path, "rotate", "postgres_password", "mlflow_password")
    assert run.returncode == 0, run.stderr
    after = {n: ltkd_secrets.path_of(n, tmp_path).read_text() for n in ltkd_secrets.SECRETS}
    assert after["ray_token"] == before["ray_token"]
    assert after["postgres_password"] != before["postgres_password"] and after["mlflow_password"] != before["mlflow_password"]
    assert (tmp_path / "db" / "postgres_password.previous").read_text() == before["postgres_password"]
    assert after["mlflow_password"] in (tmp_path / "ltkd" / "mlflow_credentials").read_text()
    bad = run_secrets(tmp_path, "rotate", "admin_password")  # the MLflow admin's is not here
    assert bad.returncode == 2 and "allowed: postgres_password, ray_token, mlflow_password" in bad.stderr


def test_mlflow_users_follow_the_secret_files(tmp_path, monkeypatch):
    """The entrypoint's user sync against a real auth store: created, then a changed password and a
    wrong admin flag are put right; the admin password is made in the container's own folder (0600)."""
    monkeypatch.setattr(mlflow_serve, "OWN", tmp_path / "own")
    monkeypatch.setattr(mlflow_serve, "AUTH_TEMPLATE", DOCKER / "basic_auth.ini")
    monkeypatch.setenv("LTKD_AUTH_DATABASE_URI", f"sqlite:///{tmp_path}/auth.db")
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)  # set by prepare_auth; restored afterwards
    runtime = tmp_path / "run"
    runtime.mkdir()
    mlflow_serve.prepare_auth(runtime)
    store = mlflow_serve.auth_store()
    admin = mlflow_serve.own_secret("admin_password")
    assert mode(tmp_path / "own" / "admin_password") == 0o600 and mlflow_serve.own_secret("admin_password") == admin
    assert mlflow_serve.sync_user(store, "admin", admin, True) == "created"
    assert mlflow_serve.sync_user(store, "ltkd", "p" * 20, False) == "created"
    assert mlflow_serve.sync_user(store, "ltkd", "p" * 20, False) == ""
    store.update_user("ltkd", is_admin=True)
    assert mlflow_serve.sync_user(store, "ltkd", "q" * 20, False) == "password and admin flag"
    assert store.authenticate_user("ltkd", "q" * 20) and not store.get_user("ltkd").is_admin


def test_the_database_password_never_goes_into_the_uri(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_serve, "DB_SECRETS", tmp_path)
    (tmp_path / "postgres_password").write_text("s" * 30)
    with pytest.raises(mlflow_serve.Refused, match="no password in the URI"):
        mlflow_serve.prepare_postgres("postgresql://mlflow:hunter2hunter2@postgres:5432/mlflow", tmp_path)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    mlflow_serve.prepare_postgres("postgresql://mlflow@postgres:5432/mlflow", tmp_path)
    pgpass = Path(os.environ["PGPASSFILE"])
    assert pgpass.read_text() == f"postgres:5432:mlflow:mlflow:{'s' * 30}\n" and mode(pgpass) == 0o600  # libpq's rule
