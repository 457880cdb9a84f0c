"""What a tracking store is: its URI (resolved, checked, reachable, logged into) and what a failed write says about it."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from orchestrator.paths import disk_full_error, os_reason
from orchestrator.errors import UserError, describe, first_line, redact_credentials, without_userinfo


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


CREDENTIALS_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials "
                    "([mlflow] mlflow_tracking_username = ..., mlflow_tracking_password = ...; mode 600)")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse an unusable tracking URI before anything runs (UserError: exit 2, one line)."""
    shown = redact_credentials(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, shown, timeout)
    elif uri.startswith("sqlite:"):
        path = uri.removeprefix("sqlite:").removeprefix("///") if uri.startswith("sqlite:///") else ""
        if path in ("", ":memory:") or path.startswith(":memory:"):
            raise UserError(f"--tracking-uri {shown}: an in-memory SQLite database keeps nothing once the command ends; "
                            "name a file: sqlite:///PATH/mlflow.db")
        if "?" in uri or "#" in uri:
            raise UserError(f"--tracking-uri {shown}: a SQLite store is a plain file path (no ?query or #fragment), e.g. sqlite:///PATH/mlflow.db")
        folder = Path(path).expanduser().resolve().parent
        if not folder.is_dir():
            raise UserError(f"--tracking-uri {shown}: folder {folder} does not exist")
    elif uri.startswith("databricks"):
        pass  # credentials come from the Databricks config; the first store call says what is wrong
    elif uri.startswith("file:") or "://" not in uri:
        # MLflow 3.17 refuses its file store (a file: URI or a bare path) unless asked.
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise UserError(f"--tracking-uri {shown}: MLflow's file store is retired; use sqlite:///PATH/mlflow.db or a server "
                            "(or set MLFLOW_ALLOW_FILE_STORE=true to use it anyway)")
    else:
        _check_database_uri(uri, timeout)


class ServerLogin(NamedTuple):
    base: str  # the server's URI without userinfo
    user: str | None
    password: str | None
    source: str  # where MLflow read them, as the user would fix it


def server_login(uri: str) -> ServerLogin:
    """The login MLflow sends to a server, in MLflow's order: MLFLOW_TRACKING_USERNAME/_PASSWORD (over
    ~/.mlflow/credentials) when both are set, else the URI's own `user:password@`."""
    from urllib.parse import unquote, urlsplit

    from mlflow.utils.credentials import read_mlflow_creds

    parts = urlsplit(uri)
    base = without_userinfo(uri)
    creds = read_mlflow_creds()
    if creds.username and creds.password:
        env = os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD")
        return ServerLogin(base, creds.username, creds.password,
                           "MLFLOW_TRACKING_USERNAME/_PASSWORD" if env else "~/.mlflow/credentials")
    if parts.username is not None:
        return ServerLogin(base, unquote(parts.username), unquote(parts.password or ""), "the URI's user:password@")
    return ServerLogin(base, None, None, "")


def _server_get(base: str, path: str, user: str | None, password: str | None, timeout: float):
    """GET one MLflow REST path, logged in as MLflow would be; returns (status, body)."""
    import base64

    request = urllib.request.Request(base.rstrip("/") + path)
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _check_server(uri: str, shown: str, timeout: float) -> None:
    """The server answers /health and lets this user read: a missing or refused login is one line that
    says where MLflow reads credentials from (MLflow's own error would come later, cut mid-URL)."""
    base, user, password, source = server_login(uri)
    try:
        status, _ = _server_get(base, "/health", None, None, timeout)
        if status != 200:
            raise UserError(f"--tracking-uri {shown}: /health answered {status}; expected a running MLflow server")
        status, body = _server_get(base, "/api/2.0/mlflow/experiments/search?max_results=1", user, password, timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"--tracking-uri {shown}: MLflow server not reachable ({reason}); start it or pass a reachable URI") from None
    if status == 401:
        if not user:
            raise UserError(f"--tracking-uri {shown}: the MLflow server asks for a login and none is set; {CREDENTIALS_HINT}")
        raise UserError(f"--tracking-uri {shown}: the MLflow server refused the login of user {user!r} from {source} "
                        f"(wrong user or password); {CREDENTIALS_HINT}")
    if status == 403:
        raise UserError(f"--tracking-uri {shown}: user {user!r} may not read experiments on this server; ask its admin for READ "
                        "or log in as another user: " + CREDENTIALS_HINT)


_DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")
ALLOWED_URIS = "http(s)://HOST:PORT (an MLflow server), sqlite:///PATH, postgresql://..., mysql://..., mssql://..., databricks"
# The Python package of each driver SQLAlchemy may ask for; a bare postgresql:// is psycopg 3, the project's extra.
_DRIVER_PACKAGES = {"psycopg": "ltkd[postgres]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
# How each dialect's driver takes a connection timeout in seconds (libpq's and PyMySQL's spelling).
_CONNECT_TIMEOUT_ARG = {"postgresql": "connect_timeout", "mysql": "connect_timeout"}


def _check_database_uri(uri: str, timeout: float = 5.0) -> None:
    """A database URI: a scheme MLflow can store in, its Python driver installed, its server listening
    and accepting the login, all within seconds (MLflow itself retries a refused login for minutes)."""
    import socket

    shown = redact_credentials(uri)
    scheme = uri.split("://", 1)[0]
    if scheme.split("+", 1)[0] not in _DATABASE_SCHEMES:
        raise UserError(f"--tracking-uri {shown}: unknown scheme {scheme!r}; allowed: {ALLOWED_URIS}")
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's own words name what is wrong with the URI
        raise UserError(f"--tracking-uri {shown}: not a database URI SQLAlchemy can use ({describe(exc)})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = getattr(exc, "name", None) or ""
        package = _DRIVER_PACKAGES.get(module, module)
        other = " or name another driver (e.g. mysql+pymysql://)" if scheme.startswith("mysql") else ""
        raise UserError(f"--tracking-uri {shown}: its database driver is not installed (no module {module or '?'!r}); "
                        f"`pip install '{package}'` into this environment{other}") from None
    if not url.host:
        return
    family = "postgresql" if scheme.startswith("postgres") else scheme.split("+", 1)[0]
    port = url.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[family]
    try:
        socket.create_connection((url.host, port), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"--tracking-uri {shown}: database server {url.host}:{port} not reachable ({exc}); start it or pass a reachable URI") from None
    _check_database_login(uri, shown, family, timeout)


def _check_database_login(uri: str, shown: str, family: str, timeout: float) -> None:
    import sqlalchemy

    arg = _CONNECT_TIMEOUT_ARG.get(family)
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={arg: max(1, int(timeout))} if arg else {})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        cause = exc.orig if exc.orig is not None else exc
        first = first_line(cause, 300) or type(cause).__name__
        if "password" in first.lower() or "authentication" in first.lower() or "access denied" in first.lower():
            raise UserError(f"--tracking-uri {shown}: the database refused the login ({first}); "
                            "correct the user and password in the URI (or the driver's password file)") from None
        raise UserError(f"--tracking-uri {shown}: cannot use the database ({first})") from None
    finally:
        engine.dispose()


# MLflow error codes of a store that is down or overloaded (worth retrying), as opposed to one that
# refuses the request itself (a bad value, a deleted run).
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                    "ENDPOINT_NOT_FOUND", "SERVICE_UNDER_MAINTENANCE", "UNKNOWN", "IO_ERROR", "ABORTED"}


def driver_calls_fail_fast() -> None:
    """The driver's own store calls fail at once (and give up after 20 s) instead of MLflow's minutes
    of retries: the spool's writer is what retries, with backoff, and says so."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def is_transient_failure(exc: BaseException) -> bool:
    """Whether a failed store call may succeed later: the server is unreachable, restarting,
    overloaded, or a SQLite file is locked. A store that rejects the request itself is not."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    if type(exc).__name__ == "OperationalError":  # SQLAlchemy: database is locked, connection lost
        return True
    return isinstance(exc, OSError)




# ---------------------------------------------------------------------------------------------
# What a store is (the spool is keyed by it), and what a failed write says about it.

def absolute_store_uri(uri: str) -> str:
    """A SQLite URI with its path made absolute (what the default `sqlite:///mlflow.db` means in the
    folder the command runs in); other URIs unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = uri.removeprefix("sqlite:///")
    return "sqlite:///" + str(Path(path).expanduser().resolve()) if path else uri


def sqlite_path(uri: str) -> str | None:
    """The file of a SQLite store URI, absolute; None for other stores."""
    return absolute_store_uri(uri).removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


def store_identity(uri: str) -> str:
    """What the store is, however its URI is spelt: a SQLite file by its resolved absolute path; a
    server or database by its URL with scheme and host in lower case, the default port left out,
    no credentials, no trailing slash."""
    from urllib.parse import urlsplit, urlunsplit

    path = sqlite_path(uri)
    if path is not None:
        return "sqlite:" + os.path.realpath(path)
    parts = urlsplit(uri)
    if not parts.scheme or not parts.hostname:
        return uri.rstrip("/")
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}.get(scheme.split("+")[0])
    port = parts.port if parts.port and parts.port != default else None
    netloc = parts.hostname.lower() + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def use_write_ahead_log(uri: str) -> None:
    """Put a project SQLite store in WAL mode (once; it stays in the file): readers (`ltkd status`,
    `ltkd tables`) then read while a writer holds the write lock, even a writer that is paused.
    MLflow 3.17.2 works unchanged on such a file (its schema checks, runs, metrics, artifacts, and
    `mlflow server`/`mlflow ui` over it). Not for a file on a network filesystem (WAL needs shared
    memory): there it stays as it is."""
    import sqlite3

    path = sqlite_path(uri)
    if path is None or not os.path.exists(path):
        return
    remember_store_file(uri)
    try:
        with sqlite3.connect(path, timeout=1.0) as con:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
        con.close()
    except sqlite3.Error:
        pass  # locked, read-only or not a database: left as it is (the store's own calls say what is wrong)


# SQLite store file -> (device, inode) when the sweep started: a file deleted mid-sweep is soon
# replaced by an empty one (the next pooled connection creates it), so existence alone proves nothing.
_STORE_FILES: dict[str, tuple[int, int]] = {}


def remember_store_file(uri: str) -> None:
    path = sqlite_path(uri)
    if path is not None:
        try:
            st = os.stat(path)
        except OSError:
            return
        _STORE_FILES[path] = (st.st_dev, st.st_ino)


def _store_file_gone(path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    known = _STORE_FILES.get(path)
    return known is not None and (st.st_dev, st.st_ino) != known


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _chain_text(exc: BaseException) -> str:
    return " ".join(str(e) for e in _chain(exc)).lower()


def store_trouble(exc: BaseException, uri: str) -> str:
    """What a failed write says about the store, in a few words for the console: `server
    unreachable` only when it is; else the SQLite file deleted or read-only, a full disk, a locked
    database, or the local spool failing."""
    path = sqlite_path(uri)
    text = _chain_text(exc)
    full = disk_full_error(exc)
    if full is not None:
        return f"disk full ({os_reason(full)}{' writing ' + full.filename if full.filename else ''})"
    if "database or disk is full" in text:
        return f"disk full (the disk of the SQLite store {path} is full)"
    if path is not None:
        if _store_file_gone(path):
            return f"the SQLite store {path} was deleted"
        if "readonly database" in text or "read-only" in text:
            return f"the SQLite store {path} is read-only"
        if "database is locked" in text:
            return f"the SQLite store {path} is locked by another process"
        return f"the SQLite store {path} failed"
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)) and getattr(exc, "filename", None):
        return f"a local file failed ({exc.strerror or exc} writing {exc.filename})"
    return "server unreachable"


def store_gone(exc: BaseException, uri: str) -> str | None:
    """A failure no retry mends: the SQLite file was deleted (writes would go to a new, empty store);
    its one line, else None."""
    path = sqlite_path(uri)
    if path is not None and _store_file_gone(path):
        return (f"the SQLite store {path} was deleted while the sweep ran; nothing more is written (a new file there "
                "is an empty store)")
    return None


def is_locked(exc: BaseException) -> bool:
    return "database is locked" in _chain_text(exc)
