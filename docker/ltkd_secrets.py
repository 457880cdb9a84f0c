"""The compose stack's secrets: generated on first start, checked on every start, rotated on request.

Run by the one-shot `secrets` service before anything else starts (stdlib only):
    ltkd_secrets.py init                 # create what is missing, refuse weak or known-default values
    ltkd_secrets.py rotate NAME [NAME..] # new values; restart the stack afterwards (docs/clusters.md: rotating the secrets)

Each secret is a file in a volume that only its readers mount, owned by root, group SECRETS_GID,
mode 0440 (the services that read it run with that supplementary group):
    db/postgres_password       postgres (POSTGRES_PASSWORD_FILE), mlflow (its database login)
    ltkd/ray_token             ray-head, ray-worker (RAY_AUTH_TOKEN_PATH)
    ltkd/mlflow_password       mlflow (sets the password of the non-admin user `ltkd`)
    ltkd/mlflow_credentials    ray-head, ray-worker (~/.mlflow/credentials: user `ltkd` and that password)
The MLflow admin password and the MLflow server's session key are not here: the mlflow container
makes them in its own volume (docker/mlflow_serve.py), so they never leave it.
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(os.environ.get("LTKD_SECRETS_ROOT", "/run/ltkd"))
SECRETS_GID = int(os.environ.get("LTKD_SECRETS_GID", "10001"))
MLFLOW_USER = "ltkd"
# name -> folder (one volume each); mlflow_credentials is derived from mlflow_password.
SECRETS = {"postgres_password": "db", "ray_token": "ltkd", "mlflow_password": "ltkd"}
MIN_LENGTH = 16
# Values that ship in examples, older versions of this stack, or MLflow's and Postgres' documentation.
KNOWN_DEFAULTS = {"change-me-now", "password1234", "password", "changeme", "change-me", "admin", "mlflow", "postgres",
                  "secret", "raycluster_secret", "super-secret-example-token", "example"}


class Refused(Exception):
    """One line for the operator; the stack does not start."""


def path_of(name: str, root: Path = ROOT) -> Path:
    return root / SECRETS[name] / name


def check_value(name: str, value: str) -> None:
    if value.strip().lower() in KNOWN_DEFAULTS or value.strip().lower().startswith("change"):
        raise Refused(f"{name}: a known default value; run `docker compose run --rm secrets rotate {name}`")
    if len(value) < MIN_LENGTH:
        raise Refused(f"{name}: shorter than {MIN_LENGTH} characters; run `docker compose run --rm secrets rotate {name}`")
    if any(c.isspace() or c in ":\\'\"" for c in value):  # pgpass, INI and URL quoting
        raise Refused(f"{name}: contains whitespace, quotes, ':' or '\\'; run `docker compose run --rm secrets rotate {name}`")


def new_value() -> str:
    return secrets.token_urlsafe(32)  # 43 characters of [A-Za-z0-9_-]


def _write(path: Path, text: str) -> None:
    """Atomically, never readable by others: written to a private temporary file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted run (read-only by then)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _protect(tmp)
    os.replace(tmp, path)


def _protect(path: Path, folder: bool = False) -> None:
    """root (or the caller) owns it; the secrets group reads it; nobody else."""
    os.chmod(path, 0o750 if folder else 0o440)
    if os.geteuid() == 0:
        os.chown(path, 0, SECRETS_GID)


def credentials_text(password: str) -> str:
    # MLflow reads this file as ~/.mlflow/credentials (mlflow.utils.credentials).
    return f"[mlflow]\nmlflow_tracking_username = {MLFLOW_USER}\nmlflow_tracking_password = {password}\n"


def init(root: Path = ROOT, out=sys.stdout) -> list[str]:
    """Create the missing secrets and check the others; return the names created."""
    created = []
    for name in SECRETS:
        path = path_of(name, root)
        if path.exists():
            check_value(name, path.read_text().strip())
        else:
            _write(path, new_value())
            created.append(name)
    password = path_of("mlflow_password", root).read_text().strip()
    credentials = root / "ltkd" / "mlflow_credentials"
    if not credentials.exists() or credentials.read_text() != credentials_text(password):
        _write(credentials, credentials_text(password))
    for folder in {path_of(n, root).parent for n in SECRETS}:
        _protect(folder, folder=True)
    if created:
        print(f"ltkd-secrets: generated {', '.join(created)} in {root}", file=out)
    return created


def rotate(names: list[str], root: Path = ROOT, out=sys.stdout) -> None:
    unknown = [n for n in names if n not in SECRETS]
    if unknown or not names:
        raise Refused(f"rotate {' '.join(unknown) or '(nothing)'}: allowed: {', '.join(SECRETS)}")
    for name in names:
        path = path_of(name, root)
        if name == "postgres_password" and path.exists():
            # The database still has the old password: on its next start the mlflow container logs
            # in with it once and sets the new one (docker/mlflow_serve.py).
            _write(path.with_name("postgres_password.previous"), path.read_text())
        _write(path, new_value())
    init(root, out=out)
    print(f"ltkd-secrets: rotated {', '.join(names)}; now run `docker compose up -d --force-recreate`", file=out)


def main(argv: list[str]) -> int:
    os.umask(0o077)
    try:
        if argv[:1] == ["init"]:
            init()
        elif argv[:1] == ["rotate"]:
            rotate(argv[1:])
        else:
            raise Refused("usage: ltkd_secrets.py init | rotate NAME [NAME ...]")
    except Refused as exc:
        print(f"ltkd-secrets: refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ltkd-secrets: cannot write the secrets under {ROOT}: {exc.strerror} ({exc.filename})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
