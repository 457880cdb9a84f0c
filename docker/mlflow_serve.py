"""The MLflow container's entrypoint: its secrets, its users, then `mlflow server` in its place.

    mlflow_serve.py serve -- mlflow server --app-name basic-auth --backend-store-uri postgresql://mlflow@postgres:5432/mlflow ...
    mlflow_serve.py rotate-admin      # a new admin password; it stays in this container
    mlflow_serve.py health [PORT]     # the compose healthcheck: /health answers

Before the server starts, on every start:
- the admin password and the server's session key (CSRF) are made on the first start in this
  container's own volume (OWN), and nowhere else; the server process never sees the admin password;
- the auth store's users are set from the files: `admin` (admin) and `ltkd` (not admin: it creates the
  studies' experiments, so it manages those; default_permission READ lets it read the others), whose
  password the `secrets` service generated for the sweep and the Ray workers;
- the PostgreSQL password goes to a private pgpass file (PGPASSFILE), never to a command line; after
  `ltkd_secrets.py rotate postgres_password`, the role's password is changed here, logging in once
  with the previous one.
"""
from __future__ import annotations

import configparser
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ltkd_secrets import KNOWN_DEFAULTS, MLFLOW_USER, Refused, check_value, new_value  # noqa: F401 - same folder

DB_SECRETS = Path(os.environ.get("LTKD_DB_SECRETS", "/run/ltkd/db"))
LTKD_SECRETS = Path(os.environ.get("LTKD_LTKD_SECRETS", "/run/ltkd/ltkd"))
OWN = Path(os.environ.get("LTKD_MLFLOW_SECRETS", "/run/ltkd/mlflow"))
AUTH_TEMPLATE = Path(os.environ.get("LTKD_AUTH_TEMPLATE", "/etc/mlflow/basic_auth.ini"))


def own_secret(name: str) -> str:
    """A secret of this container only: made on first use (mode 0600), checked afterwards."""
    path = OWN / name
    if not path.exists():
        OWN.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_value())
    value = path.read_text().strip()
    check_value(name, value)
    return value


def read_secret(folder: Path, name: str) -> str:
    path = folder / name
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror}; the `secrets` service writes it (docker compose up runs it first)") from None
    check_value(name, value)
    return value


def _option(cmd: list[str], flag: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def prepare_postgres(uri: str, runtime: Path) -> None:
    """The database login through PGPASSFILE (libpq reads it; it must be mode 0600)."""
    parts = urlsplit(uri)
    if parts.password:
        raise Refused("--backend-store-uri: no password in the URI (it would show in `ps`); it comes from the secrets volume")
    host, port, user, db = parts.hostname or "postgres", parts.port or 5432, parts.username or "mlflow", parts.path.lstrip("/") or "mlflow"
    password = read_secret(DB_SECRETS, "postgres_password")
    previous = DB_SECRETS / "postgres_password.previous"
    if previous.exists():  # left by `ltkd_secrets.py rotate postgres_password`
        _apply_rotated_password(host, port, user, db, previous.read_text().strip(), password)
    pgpass = runtime / "pgpass"
    fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{host}:{port}:{db}:{user}:{password}\n")
    os.environ["PGPASSFILE"] = str(pgpass)


def _apply_rotated_password(host, port, user, db, old: str, new: str) -> None:
    """The database role gets the rotated password, logging in once with the previous one (idempotent:
    nothing happens when the new one already works)."""
    import time

    import psycopg  # psycopg 3, the driver the server's bare postgresql:// URI runs on (mlflow.Dockerfile)
    from psycopg import sql

    def connect(password):
        return psycopg.connect(host=host, port=port, user=user, dbname=db, password=password, connect_timeout=5)

    for _ in range(30):  # the database may still be starting
        try:
            connect(new).close()
            return
        except psycopg.OperationalError as exc:
            if "password authentication failed" not in str(exc):
                time.sleep(2)
                continue
        try:
            conn = connect(old)
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise Refused(f"postgres at {host}:{port}: neither the current nor the previous password is accepted ({first})") from None
        with conn:  # commits, then closes
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(new)))
        print(f"mlflow-serve: database role {user!r}: the rotated password is in force", file=sys.stderr)
        return
    raise Refused(f"postgres at {host}:{port}: unreachable for a minute, cannot apply the rotated password")


def prepare_auth(runtime: Path) -> tuple[str, str]:
    """The auth settings (a private copy of the template) and the store's users; returns (config path, admin name)."""
    config = configparser.ConfigParser()
    if not config.read(AUTH_TEMPLATE):
        raise Refused(f"{AUTH_TEMPLATE}: missing")
    section = config["mlflow"]
    if section.get("admin_password"):
        raise Refused(f"{AUTH_TEMPLATE}: holds admin_password; remove it (the admin password is generated in {OWN})")
    if os.environ.get("LTKD_AUTH_DATABASE_URI"):
        section["database_uri"] = os.environ["LTKD_AUTH_DATABASE_URI"]
    path = runtime / "basic_auth.ini"
    with open(path, "w") as f:
        config.write(f)
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(path)
    return str(path), section.get("admin_username", "admin")


def auth_store():
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    config = configparser.ConfigParser()
    config.read(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
    store = SqlAlchemyStore()
    store.init_db(config["mlflow"]["database_uri"])
    return store


def sync_user(store, name: str, password: str, is_admin: bool) -> str:
    """The user exists with exactly this password and admin flag; returns what changed."""
    if not store.has_user(name):
        store.create_user(name, password, is_admin=is_admin)
        return "created"
    changed = []
    if not store.authenticate_user(name, password):
        store.update_user(name, password=password)
        changed.append("password")
    if bool(store.get_user(name).is_admin) != is_admin:
        store.update_user(name, is_admin=is_admin)
        changed.append("admin flag")
    return " and ".join(changed)


def serve(cmd: list[str]) -> None:
    if not cmd:
        raise Refused("usage: mlflow_serve.py serve -- mlflow server ...")
    runtime = Path(tempfile.mkdtemp(prefix="ltkd-mlflow-"))  # mode 0700
    backend = _option(cmd, "--backend-store-uri") or ""
    if backend.startswith("postgresql"):
        prepare_postgres(backend, runtime)
    _, admin = prepare_auth(runtime)
    store = auth_store()
    for name, password, is_admin in ((admin, own_secret("admin_password"), True),
                                     (MLFLOW_USER, read_secret(LTKD_SECRETS, "mlflow_password"), False)):
        change = sync_user(store, name, password, is_admin)
        if change:
            print(f"mlflow-serve: user {name!r}: {change}", file=sys.stderr)
    os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = own_secret("flask_secret_key")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


def rotate_admin() -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ltkd-mlflow-"))
    _, admin = prepare_auth(runtime)
    path = OWN / "admin_password"
    tmp = OWN / ".admin_password.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_value())
    sync_user(auth_store(), admin, tmp.read_text().strip(), True)
    os.replace(tmp, path)
    print(f"mlflow-serve: rotated the password of {admin!r}; read it here with `cat {path}`")


def health(port: str) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return 0 if r.status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str]) -> int:
    os.umask(0o077)
    try:
        if argv[:1] == ["serve"]:
            serve(argv[2:] if argv[1:2] == ["--"] else argv[1:])
        elif argv[:1] == ["rotate-admin"]:
            rotate_admin()
        elif argv[:1] == ["health"]:
            return health(argv[1] if len(argv) > 1 else "5000")
        else:
            raise Refused("usage: mlflow_serve.py serve -- mlflow server ... | rotate-admin | health [PORT]")
    except Refused as exc:
        print(f"mlflow-serve: refused: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
