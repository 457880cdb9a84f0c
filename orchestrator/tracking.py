"""The only MLflow adapter: experiments, runs, batched metrics, artifacts, and reading results back.

All writes of a sweep go through one `Tracker` in the driver process (Ray trials report to the
driver), so a local SQLite store never sees concurrent writers ("database is locked").
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from orchestrator.errors import UserError, describe, redact_credentials, without_userinfo
from trainer.files import file_sha256

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow prints a "View run ... at: URL" line per run it ends on a server; the sweep prints its own
# one line per trial and the experiment's address at the end.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow 3.17's UI picks its GenAI or model-training view from the `workflowType` URL parameter, else
# from the browser's own choice (localStorage `mlflow.workflowType_v1`, set by the sidebar's switch,
# "genai" until then); this tag only labels the experiment's kind. See `experiment_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
NOTE_TAG = "mlflow.note.content"  # an experiment's or a run's description in the UI (Markdown)
VIEW_STATE_KEY = "ltkd"  # the runs table's shared view, opened with ?viewStateShareKey=ltkd
VIEW_STATE_TAG = "mlflow.sharedViewState." + VIEW_STATE_KEY
FINISHED = "FINISHED"


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
        first = redact_credentials((str(cause).strip().splitlines() or [type(cause).__name__])[0][:300])
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


def git_commit() -> str:
    """The commit of the ltkd source that runs, with '-dirty' when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class RunRecord:
    run_id: str
    config_hash: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str


STATE_METRICS = ("acc_all", "acc_tail")  # the latest accuracies `RunState` carries


@dataclass
class RunState:
    """Where a trial's run stands, without its params: what `ltkd status` shows and what a sweep
    needs to continue an interrupted run."""

    run_id: str
    config_hash: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED (MLflow's run status)
    start_time: int  # ms since the epoch
    end_time: int | None  # ms; None while it runs
    error: str = ""  # the `error` tag: why it failed or was stopped
    attempts: int = 1  # the `attempts` tag: how many times the trial was started
    last_epoch: int = 0  # the step (epoch) of its latest `loss`; 0 before its first epoch
    metrics: dict[str, float] = field(default_factory=dict)  # latest values of STATE_METRICS it has


def _newest_per_hash(rows) -> dict[str, Any]:
    """config_hash -> the row of its newest FINISHED run, else of its newest run; `rows` are
    (run_id, config_hash, status, ...) newest first. A FINISHED run means the trial is done, even
    when a later attempt was stopped."""
    chosen: dict[str, Any] = {}
    for row in rows:
        old = chosen.get(row[1])
        if old is None or (row[2] == FINISHED and old[2] != FINISHED):
            chosen[row[1]] = row
    return chosen


def _int_tag(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


class Tracker:
    """MLflow client wrapper bound to one tracking URI."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if not os.environ.get("LTKD_DEBUG"):
            # MLflow's SQL store logs every failed statement with its traceback before raising;
            # ltkd reports the failure itself in one line.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

    # -- experiments ---------------------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = False) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise UserError(f"experiment {name!r} is deleted in {redact_credentials(self.uri)}; restore it or rename the study")
            return exp.experiment_id
        if not create:
            return None
        exp_id = self.client.create_experiment(
            name, artifact_location=self._local_artifact_location(name), tags={EXPERIMENT_KIND_TAG: "custom_model_development"}
        )
        return exp_id

    def check_write_access(self, experiment_id: str, study: str, delete_runs: bool = False) -> None:
        """Refuse (one line, exit 2) before Ray starts when this login may not write the study's runs (a
        read-only user of an MLflow server, a read-only store) or, for --retrain-teacher, delete them."""
        from mlflow.exceptions import MlflowException

        shown = redact_credentials(self.uri)
        try:
            # The sweep sets this tag to this value anyway (describe_experiment): a write that changes nothing.
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        except MlflowException as exc:
            if exc.error_code != "PERMISSION_DENIED":
                raise UserError(f"--tracking-uri {shown}: cannot use the tracking store ({error_line(exc, 300)})") from None
            raise UserError(self._denied(experiment_id, study, "write its runs", "EDIT")) from None
        except Exception as exc:  # noqa: BLE001 - a read-only SQLite file, a database that refuses writes
            if "database is locked" in str(exc):
                raise  # another writer holds a SQLite store: the sweep's caller names it
            raise UserError(f"--tracking-uri {shown}: cannot use the tracking store ({error_line(exc, 300)})") from None
        if delete_runs and self.uri.startswith(("http://", "https://")):
            permission = self.server_permission(experiment_id)
            if permission is not None and permission != "MANAGE":
                raise UserError(self._denied(experiment_id, study, "move runs to the trash (--retrain-teacher)", "MANAGE", permission))

    def server_permission(self, experiment_id: str) -> str | None:
        """This login's permission on the experiment (READ, USE, EDIT, MANAGE, ...) as an MLflow server
        with basic auth states it; None when the server has no such API (no authentication)."""
        base, user, password, _ = server_login(self.uri)
        if not user:
            return None
        from urllib.parse import urlencode

        query = urlencode({"username": user, "resource_type": "experiment", "resource_id": experiment_id})
        status, body = _server_get(base, f"/api/3.0/mlflow/users/permissions/get?{query}", user, password, 10.0)
        if status != 200:
            return None
        try:
            return json.loads(body).get("permission")
        except (ValueError, AttributeError):
            return None

    def _denied(self, experiment_id: str, study: str, what: str, needed: str, permission: str | None = None) -> str:
        user = server_login(self.uri).user if self.uri.startswith(("http://", "https://")) else None
        has = permission or (self.server_permission(experiment_id) if user else None) or "READ"
        who = f"user {user!r}" if user else "this login"
        return (f"--tracking-uri {redact_credentials(self.uri)}: {who} may not {what} in experiment {study!r} "
                f"(permission {has}, needs {needed}); log in as the user that created it or ask the server's admin for "
                f"{needed} on it: {CREDENTIALS_HINT}")

    def _local_artifact_location(self, name: str) -> str | None:
        """For a SQLite store, artifacts beside the database file (MLflow's default is ./mlruns in
        whatever folder the command ran from); servers and other stores keep their own default."""
        if not self.uri.startswith("sqlite:///"):
            return None
        folder = Path(self.uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlruns"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return (folder / safe).as_uri()

    # -- reading -------------------------------------------------------------------------------
    def _search(self, experiment_id: str, status: str | None = None):
        """Every active run of the experiment that carries a config_hash (optionally of one
        status), as MLflow Run objects, paged."""
        from mlflow.entities import ViewType

        filters = ["tags.config_hash != ''"]
        if status:
            filters.append(f"attributes.status = '{status}'")
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], " and ".join(filters), run_view_type=ViewType.ACTIVE_ONLY,
                max_results=5000, page_token=token,
            )
            yield from page
            token = page.token
            if not token:
                return

    def has_running(self, experiment_id: str) -> bool:
        return next(iter(self._search(experiment_id, status="RUNNING")), None) is not None

    def retire_finished(self, experiment_id: str, config_hash: str) -> list[str]:
        """Delete (MLflow's soft delete: the run stays in the experiment's trash until `mlflow gc`)
        the FINISHED runs of a trial, so the plan runs it again; returns their ids."""
        ids = [r.info.run_id for r in self._search(experiment_id, status=FINISHED) if r.data.tags.get("config_hash") == config_hash]
        for run_id in ids:
            self.client.delete_run(run_id)
        return ids

    def close_orphans(self, experiment_id: str, keep: set[str]) -> list[str]:
        """End KILLED every trial run left RUNNING that is not in `keep` (the runs this sweep
        continues): runs of a sweep that died, whose trials an edited study no longer plans or that
        a newer run replaced. Only a sweep holding the study's lease calls this, so no live sweep
        owns them. Returns their names."""
        closed = []
        for run in list(self._search(experiment_id, status="RUNNING")):
            if run.info.run_id in keep:
                continue
            reason = ("left RUNNING by a sweep that ended without closing it; its trial is no longer in the study"
                      " or has a newer run (closed by a later sweep)")
            self.set_tags(run.info.run_id, {"error": run.data.tags.get("error") or reason})
            self.end_run(run.info.run_id, "KILLED")
            closed.append(run.info.run_name or run.info.run_id)
        return closed

    def runs(self, experiment_id: str, status: str | None = None) -> list[RunRecord]:
        """Every run of the experiment that carries a config_hash (optionally of one status), paged."""
        return [RunRecord(r.info.run_id, r.data.tags.get("config_hash", ""), r.info.status, dict(r.data.metrics),
                          dict(r.data.params), dict(r.data.tags), r.info.artifact_uri)
                for r in self._search(experiment_id, status)]

    def finished_by_hash(self, experiment_id: str | None) -> dict[str, RunRecord]:
        """config_hash -> a FINISHED run (the newest when there are several)."""
        if experiment_id is None:
            return {}
        done: dict[str, RunRecord] = {}
        for rec in self.runs(experiment_id, status=FINISHED):
            done.setdefault(rec.config_hash, rec)
        return done

    # -- writing -------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str], start_time: int | None = None) -> str:
        """`start_time` (ms): when the trial started, should the run be written later (a spool replayed)."""
        run = self.client.create_run(experiment_id, start_time=start_time, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Idempotent: logging a param again with the same value is accepted."""
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(run_id, params=items[i:i + 100], synchronous=True)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One call for all keys of a step (never one HTTP call per key)."""
        now = int(time.time() * 1000)
        self.write_batch(run_id, [(k, v, now, step) for k, v in metrics.items()], {})

    def write_batch(self, run_id: str, metrics: list[tuple[str, float, int, int]], tags: dict[str, str]) -> None:
        """Metrics as (key, value, timestamp ms, step) and tags in one call (within log_batch's limits)."""
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(step)) for k, v, t, step in metrics],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def reopen_run(self, run_id: str, tags: dict[str, str]) -> None:
        """A run continued by a later sweep: RUNNING again, with the given tags."""
        self.client.update_run(run_id, status="RUNNING")
        if tags:
            self.set_tags(run_id, tags)

    def find_run_by_tag(self, experiment_id: str, key: str, value: str) -> str | None:
        from mlflow.entities import ViewType

        found = self.client.search_runs([experiment_id], f"tags.`{key}` = {filter_literal(value)}", run_view_type=ViewType.ALL, max_results=1)
        return found[0].info.run_id if found else None

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_dir(self, run_id: str, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def describe_experiment(self, experiment_id: str, description: str, view: dict[str, Any] | None = None) -> None:
        """The study's description as the experiment's (the UI shows the `mlflow.note.content` tag),
        the model-training kind, and the runs table's shared view (columns, grouping: `view_state`)."""
        # The link is for a browser that opens the experiment from the list in the GenAI view.
        link = f"[The study's runs by table cell, in the model-training view]({experiment_url('', experiment_id)})"
        tags = {EXPERIMENT_KIND_TAG: "custom_model_development", NOTE_TAG: f"{description}\n\n{link}" if description else link}
        if view is not None:
            tags[VIEW_STATE_TAG] = json.dumps(view, separators=(",", ":"))
        for key, value in tags.items():
            self.client.set_experiment_tag(experiment_id, key, value)

    def teacher_run_id(self, experiment_id: str, teacher_hash: str) -> str | None:
        """The run of a teacher trial: its newest FINISHED run, else its newest run."""
        from mlflow.entities import ViewType

        runs = self.client.search_runs([experiment_id], f"tags.config_hash = {filter_literal(teacher_hash)}",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=50, order_by=["attributes.start_time DESC"])
        done = [r for r in runs if r.info.status == FINISHED]
        return (done or runs)[0].info.run_id if (done or runs) else None

    def link_teacher(self, run_id: str, experiment_id: str, teacher_run: str | None, teacher_hash: str, teacher_name: str) -> None:
        """A distillation run's link to its teacher's run: the `teacher_run_id` tag and a link in
        the run's description. The teacher's run is looked up by its config_hash when not given."""
        teacher_run = teacher_run or self.teacher_run_id(experiment_id, teacher_hash)
        self.set_tags(run_id, teacher_link_tags(experiment_id, teacher_run, teacher_hash, teacher_name))

    def log_input(self, run_id: str, dataset: dict[str, Any]) -> None:
        """The training data as an MLflow dataset input (the UI's Datasets column and run page)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(name=dataset["name"], digest=dataset["digest"], source_type=dataset["source_type"],
                         source=json.dumps(dataset["source"]), schema=json.dumps(dataset["schema"]), profile=json.dumps(dataset["profile"]))
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", dataset.get("context", "train"))])])

    def log_model(self, run_id: str, checkpoint_dir: str, artifact_path: str) -> None:
        """The final weights as an MLflow PyTorch model (loadable with `mlflow.pytorch.load_model`),
        rebuilt from the trial's checkpoint folder."""
        import tempfile

        import mlflow.pytorch

        from trainer.loop import load_checkpoint

        trainer_dir = str(Path(__file__).resolve().parent.parent / "trainer")
        # Its warning that a pickle runs code when loaded, once per run: the checkpoint is ours.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        with tempfile.TemporaryDirectory(prefix="ltkd-model-") as tmp:
            folder = os.path.join(tmp, artifact_path)
            try:
                # Pickled (MLflow 3's default "pt2" needs an input example to trace); the trainer
                # package travels inside the model. Requirements given: inferring them runs a subprocess.
                mlflow.pytorch.save_model(load_checkpoint(checkpoint_dir), folder, code_paths=[trainer_dir],
                                          pip_requirements=["torch", "torchvision"], serialization_format="pickle")
            except Exception as exc:  # noqa: BLE001 - not the store's failure: never retried
                raise ValueError(f"cannot save the final weights as an MLflow model ({error_line(exc, 300)})") from None
            self.client.log_artifacts(run_id, folder, artifact_path)

    def log_png(self, run_id: str, png: bytes, artifact_file: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ltkd-png-") as tmp:
            path = os.path.join(tmp, os.path.basename(artifact_file))
            with open(path, "wb") as f:
                f.write(png)
            self.client.log_artifact(run_id, path, os.path.dirname(artifact_file) or None)

    def log_per_class_plot(self, run_id: str, per_class: list[float], class_counts: list[int], title: str, artifact_file: str) -> None:
        from orchestrator.tables.plots import run_per_class_png

        self.log_png(run_id, run_per_class_png(per_class, class_counts, title), artifact_file)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_time)

    # -- tables (orchestrator/tables reads and writes through these) ------------------------------
    def final_metrics_by_hash(self, experiment_id: str | None, keys: list[str] | None = None) -> dict[str, RunRecord]:
        """config_hash -> the newest FINISHED run (as `finished_by_hash` picks it), with its final
        (latest) metrics only: no params, and of the tags only config_hash.

        What tables need and nothing more. On a SQL store (SQLite, PostgreSQL, MySQL) it is two
        queries through MLflow's own SQLAlchemy models instead of building every run's params and
        tags (10,000 runs: about 1 s instead of about a minute); other stores (a server, files) go
        through search_runs. `keys`: only these metrics (default: all).
        """
        if experiment_id is None:
            return {}
        store = self._sql_store()
        if store is None:
            done = self.finished_by_hash(experiment_id)
            if keys is not None:
                for rec in done.values():
                    rec.metrics = {k: v for k, v in rec.metrics.items() if k in keys}
            return done
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag
        from sqlalchemy import and_

        exp = int(experiment_id)
        finished = and_(SqlRun.experiment_id == exp, SqlRun.status == FINISHED, SqlRun.lifecycle_stage == "active")
        done: dict[str, RunRecord] = {}
        with store.ManagedSessionMaker() as session:
            runs = (
                session.query(SqlRun.run_uuid, SqlRun.artifact_uri, SqlTag.value)
                .join(SqlTag, and_(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == "config_hash"))
                .filter(finished, SqlTag.value != "")
                .order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)
                .all()
            )
            for run_id, artifact_uri, config_hash in runs:
                if config_hash not in done:
                    done[config_hash] = RunRecord(run_id, config_hash, FINISHED, {}, {}, {"config_hash": config_hash}, artifact_uri)
            by_run = {rec.run_id: rec for rec in done.values()}
            query = (
                session.query(SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value, SqlLatestMetric.is_nan)
                .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
                .filter(finished)
            )
            if keys is not None:
                query = query.filter(SqlLatestMetric.key.in_(list(keys)))
            for run_id, key, value, is_nan in query.all():
                rec = by_run.get(run_id)
                if rec is not None:
                    rec.metrics[key] = float("nan") if is_nan else float(value)
        return done

    def _sql_store(self):
        """MLflow's SQLAlchemy store behind the client (SQLite, PostgreSQL, MySQL), or None for a
        server or a file store."""
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        return store if hasattr(store, "ManagedSessionMaker") else None

    # -- status (orchestrator/status.py) and continuing interrupted runs -----------------------------
    def run_states(self, experiment_id: str | None) -> dict[str, RunState]:
        """config_hash -> the state of its newest run of any status, or of its newest FINISHED run
        when it has one (see `RunState`).

        On a SQL store it is three queries through MLflow's own SQLAlchemy models (runs with their
        config_hash; the error and attempts tags; the latest loss, acc_all and acc_tail, whose step
        is the epoch): 10,000 runs in a fraction of a second instead of building every run's params.
        Other stores go through search_runs, paged (`_run_states_from_search`)."""
        if experiment_id is None:
            return {}
        store = self._sql_store()
        if store is None:
            return self._run_states_from_search(experiment_id)
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag
        from sqlalchemy import and_

        active = and_(SqlRun.experiment_id == int(experiment_id), SqlRun.lifecycle_stage == "active")
        with store.ManagedSessionMaker() as session:
            rows = (
                session.query(SqlRun.run_uuid, SqlTag.value, SqlRun.status, SqlRun.start_time, SqlRun.end_time)
                .join(SqlTag, and_(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == "config_hash"))
                .filter(active, SqlTag.value != "")
                .order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)
                .all()
            )
            states = {h: RunState(rid, h, status, start, end) for h, (rid, _, status, start, end) in _newest_per_hash(rows).items()}
            by_run = {s.run_id: s for s in states.values()}
            tags = (
                session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
                .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                .filter(active, SqlTag.key.in_(("error", "attempts")))
            )
            for run_id, key, value in tags.all():
                state = by_run.get(run_id)
                if state is not None:
                    if key == "error":
                        state.error = value or ""
                    else:
                        state.attempts = _int_tag(value, 1)
            latest = (
                session.query(SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value, SqlLatestMetric.step,
                              SqlLatestMetric.is_nan)
                .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
                .filter(active, SqlLatestMetric.key.in_(("loss", *STATE_METRICS)))
            )
            for run_id, key, value, step, is_nan in latest.all():
                state = by_run.get(run_id)
                if state is None:
                    continue
                if key == "loss":
                    state.last_epoch = int(step)
                else:
                    state.metrics[key] = float("nan") if is_nan else float(value)
        return states

    def _run_states_from_search(self, experiment_id: str) -> dict[str, RunState]:
        """`run_states` through search_runs (a server, a file store): whole runs, paged, and no
        call per run. A run's latest metrics come with their steps; should a store not give
        them, the last epoch is read from an `epoch` metric, else 0."""
        runs = sorted(self._search(experiment_id), key=lambda r: (-(r.info.start_time or 0), r.info.run_id))
        rows = [(r.info.run_id, r.data.tags["config_hash"], r.info.status, r) for r in runs]
        states: dict[str, RunState] = {}
        for h, (run_id, _, status, run) in _newest_per_hash(rows).items():
            tags, metrics = run.data.tags, run.data.metrics
            steps = {m.key: m.step for m in getattr(run.data, "_metric_objs", None) or []}
            last_epoch = steps["loss"] if "loss" in steps else int(metrics.get("epoch", 0))
            states[h] = RunState(run_id, h, status, run.info.start_time, run.info.end_time or None, tags.get("error", ""),
                                 _int_tag(tags.get("attempts"), 1), int(last_epoch),
                                 {k: float(metrics[k]) for k in STATE_METRICS if k in metrics})
        return states

    def read_json_artifact(self, run_id: str, path: str) -> Any | None:
        """A run's JSON artifact, downloaded into a temporary folder; None when it is absent."""
        import tempfile

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise
        with tempfile.TemporaryDirectory(prefix="ltkd-artifact-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # noqa: BLE001 - absent or unreadable: the caller notes it and goes on
                return None
            with open(local) as f:
                return json.load(f)

    def tables_run(self, experiment_id: str, study: str) -> str:
        """The study's `tables <study>` run (tag role=tables, no config_hash, so plans ignore it),
        created on first use; later calls reuse the newest one."""
        from mlflow.entities import ViewType

        name = f"tables {study}"
        # The study is matched here, not in the filter: a name may hold both quote kinds, which no
        # MLflow filter literal can carry.
        found = [r for r in self.client.search_runs(
            [experiment_id], "tags.role = 'tables'", run_view_type=ViewType.ACTIVE_ONLY, max_results=100,
            order_by=["attributes.start_time DESC"],
        ) if r.data.tags.get("study") == study]
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(experiment_id, run_name=name, tags={"role": "tables", "study": study, "git_commit": git_commit()})
        return run.info.run_id

    def log_files(self, run_id: str, files: list[str], artifact_path: str | None = None) -> None:
        for f in files:
            self.client.log_artifact(run_id, f, artifact_path)


def filter_literal(value: str) -> str:
    """`value` quoted for an MLflow search filter. The filter grammar has no escape for a quote
    inside a literal, so a value holding both kinds is refused here rather than misparsed."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r}: an MLflow filter cannot hold a value with both quote kinds")


def _plain(value: Any) -> Any:
    """Numbers as a study writes them: a whole float is an int (γ 50, not 50.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def param_str(value: Any) -> str:
    """A param's string in MLflow: `50` for γ 50 (so `params.gamma = '50'` finds it), `0.5`, `true`
    stays `True`, lists and dicts as JSON. Only the string: a trial's identity (config_hash) is
    computed from the config itself."""
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)


_param_str = param_str


def error_line(exc: BaseException, limit: int = 600) -> str:
    """An error as one line: its first line, and its last one when that says more (MLflow and Ray
    put the cause of a multi-line message last). Never a traceback, never a password."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(("Traceback", "File \"", "#####"))]
    text = lines[0] if lines else ""
    if len(lines) > 1 and lines[-1] not in text:
        text = f"{text.rstrip(':')}: {lines[-1]}"
    return redact_credentials(f"{type(exc).__name__}: {text}")[:limit] if text else type(exc).__name__


MANIFEST_FILE = "MANIFEST.json"  # in a checkpoint folder: each file's size and sha256


class CorruptCheckpoint(ValueError):
    """A teacher checkpoint whose stored copy does not match its manifest (a ValueError: retrying
    the trial would meet the same bytes, so it fails at once with this one line)."""


def write_manifest(folder: str) -> None:
    """Record the size and sha256 of every file of a checkpoint folder, so that each copy of it
    (the artifact, a node's cache) can be checked before a student trusts it."""
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != MANIFEST_FILE and os.path.isfile(path):
            files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    with open(os.path.join(folder, MANIFEST_FILE), "w") as f:
        json.dump({"files": files}, f, indent=1)


def checkpoint_problem(folder: str, manifest: dict | None) -> str | None:
    """What is wrong with a local checkpoint folder, or None. With a manifest: each file's size and
    sha256. Without one (checkpoints of earlier versions): the weights file's zip CRCs."""
    import zipfile

    if not os.path.isdir(folder):
        return "missing"
    if manifest is not None:
        for name, want in manifest.get("files", {}).items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"{name} is missing"
            if os.path.getsize(path) != want["bytes"]:
                return f"{name} has {os.path.getsize(path)} bytes, its manifest says {want['bytes']}"
            if file_sha256(path) != want["sha256"]:
                return f"{name}'s sha256 differs from its manifest"
        return None
    weights = os.path.join(folder, "model.pt")
    try:
        with zipfile.ZipFile(weights) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"model.pt is unreadable ({exc})"
    return None if bad is None else f"model.pt: {bad} fails its CRC check"


def _read_manifest(artifact_uri: str) -> dict | None:
    """The checkpoint artifact's manifest (a few hundred bytes), or None when it has none or the
    store cannot be reached (the cached copy is then checked by its CRCs)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="ltkd-manifest-") as tmp:
        try:
            local = download_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{MANIFEST_FILE}", dst_path=tmp)
            with open(local) as f:
                return json.load(f)
        except Exception:  # noqa: BLE001 - absent (an older checkpoint) or unreachable: checked by CRC
            return None


def fetch_checkpoint(artifact_uri: str, tracking_uri: str, cache_root: str | None = None, teacher_hash: str | None = None) -> str:
    """Local folder holding a run's checkpoint artifact, downloaded once per node and cached.

    Called inside Ray trials: works with a local store (file copy) and with a server
    (mlflow-artifacts:/ URIs resolved through the tracking server), so workers on other machines
    get the teacher the same way. The cached copy is checked against the artifact's manifest on
    every use and fetched again when it differs (a fetch cut short, a disk error); an artifact
    that is itself corrupt fails the trial with one line saying how to retrain its teacher.
    """
    import mlflow
    from mlflow.artifacts import download_artifacts

    cache_root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "checkpoints")
    key = artifact_uri.replace("://", "_").replace(":", "_").replace("/", "_")[-180:]
    target = os.path.join(cache_root, key)
    mlflow.set_tracking_uri(tracking_uri)
    manifest = _read_manifest(artifact_uri)
    if os.path.isdir(target) and os.listdir(target) and checkpoint_problem(target, manifest) is None:
        return target
    tmp = target + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, exist_ok=True)
    retrain = f"`ltkd sweep STUDY --retrain-teacher {teacher_hash or 'HASH'}`"
    try:
        local = download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
    except Exception as exc:  # noqa: BLE001 - MLflow lists each failed file on lines of their own
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"cannot fetch the teacher checkpoint {artifact_uri} ({error_line(exc)}); if the store is up and the "
                           f"artifact is gone, retrain that teacher with {retrain}") from None
    problem = checkpoint_problem(local, manifest)
    if problem is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorruptCheckpoint(f"the teacher checkpoint {artifact_uri} is corrupt in the tracking store ({problem}); "
                                f"retrain that teacher with {retrain}")
    # Atomic publish: concurrent trials on one node never see a half-written cache entry; a bad
    # entry is moved aside first (os.replace cannot overwrite a non-empty folder).
    if os.path.isdir(target):
        stale = target + f".stale{os.getpid()}"
        try:
            os.replace(target, stale)
        except OSError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(local, target)
    except OSError:
        pass  # another trial published it first
    shutil.rmtree(tmp, ignore_errors=True)
    return target



# ---------------------------------------------------------------------------------------------
# The run layout: what a trial's run holds. The Ray adapter only moves events; every name of a
# param, tag, metric and artifact is decided here.

SCHEMA_METHOD_PARAMS = ("alpha", "beta", "n_groups", "temperature")
# plus loss_<term> per loss term, and system/<...> (CPU, memory, GPU: the UI's System metrics tab)
SPLIT_FILE = "long_tailed_split.json"
EPOCH_METRICS = ("loss", "lr", "acc_all", "acc_head", "acc_medium", "acc_tail",
                 # a search trial's accuracies, on its validation split (it has no acc_*)
                 "val_acc_all", "val_acc_head", "val_acc_medium", "val_acc_tail")
SYSTEM_PREFIX = "system/"
PER_CLASS_FILE = "per_class_accuracy.json"
BEST_PER_CLASS_FILE = "best_epoch_per_class_accuracy.json"
PER_CLASS_PLOT = "per_class_accuracy.png"  # distillation runs: the final per-class accuracy, drawn
CHECKPOINT_DIR = "checkpoint"  # what a student's teacher is fetched from (with its MANIFEST.json)
MODEL_DIR = "model"  # the final weights as an MLflow PyTorch model: mlflow.pytorch.load_model("runs:/ID/model")
CELL_TAG = "cell"  # one value per table cell (row, pair, γ): the UI's "Group by" puts its seeds together
TEACHER_RUN_TAG = "teacher_run_id"

# Model names shortened in run names so that method, pair, γ and seed fit the UI's Run Name column
# (190 px): resnet32x4 -> r32x4, wrn_40_2 -> wrn40_2, mobilenet_v2 -> mnv2, cnn_w32 -> w32.
_SHORT_MODELS = (("resnet", "r"), ("wrn_", "wrn"), ("mobilenet_v", "mnv"), ("shufflenet_v", "snv"), ("cnn_w", "w"))


def short_model(name: str) -> str:
    for prefix, short in _SHORT_MODELS:
        if name.startswith(prefix) and len(name) > len(prefix):
            return short + name[len(prefix):]
    return name


def _gamma(value: float) -> str:
    return "γ" + param_str(value)


def _who(trial) -> str:
    """The run's row and models: 'Teacher w32', 'Student w8', 'LTKD w32>w8'."""
    cfg = trial.config
    if cfg.role == "distill":
        return f"{trial.row} {short_model(cfg.teacher)}>{short_model(cfg.model)}"
    return f"{trial.row} {short_model(cfg.model)}"


def run_name(trial) -> str:
    """Short and complete: 'LTKD w32>w8 γ50 s0', 'Teacher r32x4 γ100 s1'."""
    return f"{_who(trial)} {_gamma(trial.config.gamma)} s{trial.config.seed}"


def cell_label(trial) -> str:
    """The table cell a run counts in, without the seed: 'LTKD w32>w8 γ50' (the `cell` tag)."""
    return f"{_who(trial)} {_gamma(trial.config.gamma)}"


def teacher_run_name(trial) -> str:
    """The run name of a distillation trial's teacher (same γ and seed)."""
    cfg = trial.config
    return f"Teacher {short_model(cfg.teacher)} {_gamma(cfg.gamma)} s{cfg.seed}"


def teacher_link_tags(experiment_id: str, teacher_run: str | None, teacher_hash: str, teacher_name: str) -> dict[str, str]:
    """The `teacher_run_id` tag and the run's description (Markdown) linking to the teacher's run page."""
    if teacher_run is None:
        return {NOTE_TAG: f"Distilled from teacher **{teacher_name}** (config_hash `{teacher_hash}`; its run was not found)."}
    return {TEACHER_RUN_TAG: teacher_run,
            NOTE_TAG: f"Distilled from teacher run [{teacher_name}](#/experiments/{experiment_id}/runs/{teacher_run}) "
                      f"(config_hash `{teacher_hash}`)."}


def system_sampler():
    """A function giving the trial's system metrics at each epoch (CPU, memory, GPU memory), named
    as MLflow's own system metrics so the UI's System metrics tab shows them. Cheap: a few
    microseconds of psutil and torch counters per epoch, no thread; {} where psutil is missing."""
    try:
        import psutil
    except ImportError:
        return lambda: {}
    proc = psutil.Process()
    proc.cpu_percent(None)  # the first call starts the interval

    def sample() -> dict[str, float]:
        out = {
            SYSTEM_PREFIX + "cpu_utilization_percentage": proc.cpu_percent(None),
            SYSTEM_PREFIX + "process_memory_rss_megabytes": proc.memory_info().rss / 2**20,
            SYSTEM_PREFIX + "system_memory_usage_percentage": psutil.virtual_memory().percent,
        }
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[SYSTEM_PREFIX + f"gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_reserved(i) / 2**20
                out[SYSTEM_PREFIX + f"gpu_{i}_max_memory_allocated_megabytes"] = torch.cuda.max_memory_allocated(i) / 2**20
        return out

    return sample


def split_digest(train_indices: list[int]) -> str:
    """The long-tailed split's fingerprint: sha256 of its sorted training indices (16 hex digits)."""
    import hashlib

    return hashlib.sha256(json.dumps(sorted(train_indices), separators=(",", ":")).encode()).hexdigest()[:16]


def dataset_input(trial, class_counts: list[int], digest: str) -> dict[str, Any]:
    """The training data of a run as `Tracker.log_input` logs it: the long-tailed split of the
    dataset at γ, named 'digits-LT γ50', with its digest and class counts."""
    cfg = trial.config
    return {
        "name": f"{cfg.dataset}-LT {_gamma(cfg.gamma)}",
        "digest": digest,
        "source_type": "ltkd",
        "source": {"dataset": cfg.dataset, "gamma": _plain(cfg.gamma), "n_max": cfg.n_max, "split_seed": cfg.split_seed,
                   **({"options": cfg.dataset_options} if cfg.dataset_options else {})},
        "schema": {"classes": len(class_counts), "split": "train"},
        "profile": {"num_images": int(sum(class_counts)), "num_classes": len(class_counts), "class_counts": list(class_counts)},
        "context": "train",
    }


def runs_view_state() -> dict[str, Any]:
    """The runs table as the study's link opens it: grouped by table cell (each group's row shows the
    mean over its seeds), with the method, γ, seed, dataset and accuracy columns, run names wide enough."""
    columns = ["metrics.`acc_all`", "metrics.`acc_tail`", "metrics.`acc_head`", "metrics.`acc_medium`",
               "params.`method`", "params.`gamma`", "params.`seed`",
               "metrics.`val_acc_tail`", "metrics.`val_acc_all`"]  # a search's trials (`ltkd search`) have only these
    name_column = "attributes.`Run Name`"
    return {
        "selectedColumns": columns,
        "columnOrder": [name_column],  # the UI applies a width only to the columns it orders
        "columnWidths": {name_column: 240},  # room for the groups' names ("Group: LTKD w32>w8 γ50")
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": CELL_TAG}]},
        "groupsExpanded": {},
        "runListHidden": False,
        "viewMaximized": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
    }


def experiment_url(base: str, experiment_id: str, shared_view: bool = True) -> str:
    """The experiment's runs table in the model-training view (MLflow 3.17 reads `workflowType`
    from the URL before the browser's stored choice), opened on the study's shared view."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={VIEW_STATE_KEY}" if shared_view else "")
    return f"{base.rstrip('/')}{'/' if base else ''}#/experiments/{experiment_id}/runs?{query}"


def trial_params(trial) -> dict[str, Any]:
    """MLflow params of a trial, per the tracking schema, plus the method's other hyperparameters
    and the rest of the recipe. A hyperparameter whose name is taken by a schema param with another
    meaning (DIST's `gamma` beside the imbalance factor γ) is logged as `method.<name>`."""
    cfg = trial.config
    mp = cfg.method_params
    params: dict[str, Any] = {
        "dataset": cfg.dataset,
        "gamma": cfg.gamma,
        "role": cfg.role,
        "method": cfg.method,
        "teacher": cfg.teacher if cfg.role == "distill" else (cfg.model if cfg.role == "teacher" else None),
        "student": cfg.model if cfg.role != "teacher" else None,
        **{key: mp.get(key) for key in SCHEMA_METHOD_PARAMS},
        "seed": cfg.seed,
        "epochs": cfg.recipe.epochs,
        "model": cfg.model,
        "n_max": cfg.n_max,
        "split_seed": cfg.split_seed,
        **({"validation_per_class": cfg.validation_per_class} if cfg.validation_per_class else {}),
    }
    for key, value in mp.items():
        if key not in SCHEMA_METHOD_PARAMS:
            params["method." + key if key in params else key] = value
    for key, value in cfg.recipe.__dict__.items():
        params.setdefault(key, value)
    if cfg.dataset_options:
        params["dataset_options"] = cfg.dataset_options
    return params


def trial_tags(trial, base_tags: dict[str, str]) -> dict[str, str]:
    tags = {**base_tags, "config_hash": trial.config_hash, "role": trial.role, "row": trial.row, CELL_TAG: cell_label(trial)}
    if trial.teacher_hash:
        tags["teacher_hash"] = trial.teacher_hash
    return tags


def epoch_metrics(report: dict[str, Any]) -> dict[str, float]:
    """What a run records per epoch (step = epoch) from a trial's epoch report."""
    out = {k: report[k] for k in EPOCH_METRICS if k in report}
    out.update({k: v for k, v in report.items() if k.startswith(("loss_", SYSTEM_PREFIX)) and isinstance(v, (int, float))})
    return out


def per_class_artifact(per_class: list[float], class_counts: list[int]) -> dict[str, Any]:
    return {"per_class_accuracy": per_class, "class_counts": class_counts}


@dataclass
class ResumableRun:
    """A trial's run left RUNNING or KILLED by a sweep that stopped: the next sweep continues it."""

    run_id: str
    last_epoch: int
    attempts: int


class TrialRuns:
    """A sweep's trial runs, one per trial across its attempts, written through the spooled writer.

    Each epoch is recorded once: a retried or resumed trial reports again the epochs after its last
    saved state, and those already recorded are dropped (the first value is kept; on the CPU a
    resumed epoch is bit-identical). A run is ended only after everything it logged, because the
    writer keeps each run's events in order."""

    def __init__(self, writer, experiment_id: str, base_tags: dict[str, str], resumable: dict[str, ResumableRun] | None = None,
                 tags_of: Callable[[Any], dict[str, str]] | None = None):
        self.writer = writer
        self.experiment_id = experiment_id
        self.base_tags = base_tags
        self.tags_of = tags_of or (lambda trial: {})  # a trial's own extra tags (a search trial's parent run)
        self.resumable = dict(resumable or {})
        self.key_of: dict[str, str] = {}  # config_hash -> spool key of its run
        self.last_epoch: dict[str, int] = {}
        self.attempts: dict[str, int] = {}

    def started(self, trial) -> None:
        """The trial's (first) attempt in this sweep started: a new run, or the interrupted one continued."""
        h = trial.config_hash
        if h in self.key_of:
            return
        earlier = self.resumable.pop(h, None)
        if earlier is not None:
            self.attempts[h] = earlier.attempts + 1
            self.last_epoch[h] = earlier.last_epoch
            self.key_of[h] = self.writer.adopt_run(earlier.run_id, {"attempts": self.attempts[h], "error": ""})
        else:
            self.attempts[h] = 1
            self.last_epoch[h] = 0
            self.key_of[h] = self.writer.new_run(self.experiment_id, run_name(trial), trial_params(trial),
                                                 {**trial_tags(trial, self.base_tags), **self.tags_of(trial), "attempts": "1"})
            if trial.teacher_hash:
                self.writer.link_teacher(self.key_of[h], self.experiment_id, self.key_of.get(trial.teacher_hash), trial.teacher_hash,
                                         teacher_run_name(trial))

    def retried(self, trial, reason: str) -> int:
        """The trial's worker died and Tune runs it again; returns the attempt number now running."""
        h = trial.config_hash
        self.attempts[h] = self.attempts.get(h, 1) + 1
        if h in self.key_of:
            self.writer.set_tags(self.key_of[h], {"attempts": self.attempts[h], f"attempt_{self.attempts[h] - 1}_error": reason[:4000]})
        return self.attempts[h]

    def epoch(self, trial, report: dict[str, Any]) -> bool:
        """Record one epoch report; False when that epoch is already recorded."""
        h = trial.config_hash
        step = int(report["epoch"])
        if h not in self.key_of or step <= self.last_epoch.get(h, 0):
            return False
        self.last_epoch[h] = step
        self.writer.log_metrics(self.key_of[h], epoch_metrics(report), step)
        return True

    def set_tags(self, trial, tags: dict[str, Any]) -> None:
        if trial.config_hash in self.key_of:
            self.writer.set_tags(self.key_of[trial.config_hash], tags)

    def finished(self, trial, summary: dict[str, float], step: int, per_class: list[float], best_per_class: list[float],
                 class_counts: list[int], checkpoint_dir: str | None, digest: str | None = None,
                 split: dict[str, Any] | None = None) -> None:
        """The trial's results: final metrics, per-class accuracy (JSON; a plot for distillation
        runs), its training data as a dataset input, its checkpoint (teachers are fetched from it)
        and the same weights as an MLflow model. All queued: the writer's threads do the work."""
        key = self.key_of[trial.config_hash]
        # acc_* (val_acc_* for a search trial) of the last epoch are already logged at that step, and are the run's latest values.
        self.writer.log_metrics(key, {k: v for k, v in summary.items() if not k.startswith(("acc_", "val_acc_"))}, step)
        self.writer.log_json(key, per_class_artifact(per_class, class_counts), PER_CLASS_FILE)
        self.writer.log_json(key, per_class_artifact(best_per_class, class_counts), BEST_PER_CLASS_FILE)
        if trial.role == "distill" and not trial.config.validation_per_class:
            self.writer.log_per_class_plot(key, per_class, class_counts, f"{run_name(trial)}: per-class test accuracy (final epoch)",
                                           PER_CLASS_PLOT)
        if digest:
            self.writer.log_input(key, dataset_input(trial, class_counts, digest))
        if split is not None:  # a run without a checkpoint (a search trial): its split, validation images included
            self.writer.log_json(key, split, SPLIT_FILE)
        if checkpoint_dir is not None:
            self.writer.log_dir(key, checkpoint_dir, CHECKPOINT_DIR, model_path=MODEL_DIR)
        self.writer.end_run(key, FINISHED)

    def ended(self, trial, status: str, error: str = "") -> None:
        """The trial ended without a result: FAILED (with why) or KILLED (the sweep was stopped)."""
        key = self.key_of.get(trial.config_hash)
        if key is None:
            return
        if error:
            self.writer.set_tags(key, {"error": error[:4000]})
        self.writer.end_run(key, status)



# ---------------------------------------------------------------------------------------------
# One study, one writer. A sweep holds the study's lease (an experiment tag) and renews it by a
# heartbeat; each claim raises the lease's generation, and (generation, holder id) is the token that
# every write of the sweep is made under (`Lease.check_current`, the spool's fence). A sweep that dies
# stops holding it within the lease's expiry (at once for a later sweep on the same machine, which
# sees that the holder's process is gone); one that was paused past the expiry finds, when it runs
# again, that its token is no longer current and writes nothing more.

LEASE_TAG = "ltkd.sweep_lease"
LEASE_TTL_S = 90.0
LEASE_RENEW_S = 10.0
LEASE_TTL_ENV = "LTKD_LEASE_TTL_S"  # the expiry in seconds (a long partition on a cluster; tests)


def lease_ttl() -> float:
    """The lease's expiry: LTKD_LEASE_TTL_S, else 90 s (UserError naming the variable when garbled)."""
    import math

    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return LEASE_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and 4 <= value <= 86400):
        raise UserError(f"{LEASE_TTL_ENV}={raw}: the lease's expiry must be a number of seconds from 4 to 86400 (default 90)")
    return value


class LeaseLost(Exception):
    """The sweep's token is no longer current (another sweep took the study over, or the renewal came
    later than the expiry); the message is the sweep's one line."""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class Lease:
    def __init__(self, tracker: Tracker, experiment_id: str, study: str, ttl: float | None = None, renew_every: float | None = None):
        import socket
        import threading

        self.tracker = tracker
        self.experiment_id = experiment_id
        self.study = study
        self.ttl = lease_ttl() if ttl is None else ttl
        self.renew_every = renew_every or min(LEASE_RENEW_S, self.ttl / 6)
        # Writes go on for this long after the last renewal the store took: a successor waits the
        # whole expiry from that heartbeat, so two renewals may fail before the writes pause.
        self.trusted_s = self.ttl - 2 * self.renew_every
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "id": os.urandom(8).hex()}
        self.generation = 0
        self.lost: str | None = None  # the lost-lease line once this sweep may write no more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claimed_at = 0.0
        self._renewed = 0.0  # wall time of the last heartbeat the store took
        self._attempted = 0.0  # wall time of the last renewal tried (taken or not)
        self._renewing = threading.Lock()

    def _read(self) -> dict | None:
        tags = self.tracker.client.get_experiment(self.experiment_id).tags
        try:
            lease = json.loads(tags[LEASE_TAG]) if tags.get(LEASE_TAG) else None
        except (ValueError, TypeError):
            return None
        return lease if isinstance(lease, dict) else None

    def _write(self) -> None:
        now = time.time()
        self.tracker.client.set_experiment_tag(self.experiment_id, LEASE_TAG,
                                               json.dumps({**self.holder, "generation": self.generation, "heartbeat": now}))
        self._renewed = now

    def _mine(self, lease: dict | None) -> bool:
        return bool(lease) and lease.get("id") == self.holder["id"] and _int_tag(str(lease.get("generation", 0)), 0) == self.generation

    def _held_by_other(self, lease: dict | None) -> bool:
        if not lease or lease.get("released") or lease.get("id") == self.holder["id"]:
            return False
        try:
            if time.time() - float(lease.get("heartbeat", 0)) >= self.ttl:
                return False
        except (TypeError, ValueError):
            return False
        if lease.get("host") == self.holder["host"]:  # on this machine a dead sweep is seen at once
            try:
                os.kill(int(lease.get("pid", 0)), 0)
            except ProcessLookupError:
                return False
            except (PermissionError, ValueError, OSError):
                pass
        return True

    def holder_line(self, lease: dict | None) -> str:
        """`host H, pid P, started T` of a lease record."""
        return f"host {lease.get('host')}, pid {lease.get('pid')}, started {_when(float(lease.get('started', 0) or 0))}"

    def _refuse_if_held(self, lease: dict | None) -> None:
        if self._held_by_other(lease):
            raise UserError(f"study {self.study!r} is being swept by another `ltkd sweep` ({self.holder_line(lease)}) into "
                            f"{redact_credentials(self.tracker.uri)}; wait for it to end or stop it (its lease expires "
                            f"{self.ttl:.0f} s after it dies)")

    def check(self) -> None:
        """Refuse (UserError naming the holder) if another sweep holds the lease; writes nothing.
        Done before Ray starts, so a second sweep of a study is turned away in a second."""
        self._refuse_if_held(self._read())

    def claim(self) -> None:
        """Write the lease, one generation above the last, unless another sweep holds it (UserError
        naming the holder). Two sweeps that start together may both write: `confirm` tells which one
        keeps it."""
        lease = self._read()
        self._refuse_if_held(lease)
        self.generation = _int_tag(str((lease or {}).get("generation", 0)), 0) + 1
        self.holder["claimed"] = time.time()
        self._attempted = time.time()
        self._write()
        self._claimed_at = time.monotonic()

    def confirm(self, settle: float = 1.5) -> None:
        """`settle` seconds after the claim (the caller does read-only work meanwhile), only the last
        writer still reads its own token; the other raises UserError. Then the heartbeat starts."""
        import threading

        time.sleep(max(0.0, settle - (time.monotonic() - self._claimed_at)))
        lease = self._read()
        self._refuse_if_held(lease)
        if not self._mine(lease):
            raise UserError(f"study {self.study!r}: another `ltkd sweep` claimed it at the same moment "
                            f"({self.holder_line(lease or {})}); wait for it to end")
        self._thread = threading.Thread(target=self._heartbeat, name="ltkd-lease", daemon=True)
        self._thread.start()

    def _lose(self, lease: dict | None, late_s: float | None = None) -> None:
        if self.lost is None:
            if lease and not self._mine(lease) and not lease.get("released"):
                self.lost = (f"lost the lease of study {self.study!r} to host {lease.get('host')} pid {lease.get('pid')} at "
                             f"{_when(float(lease.get('claimed') or lease.get('heartbeat') or 0))}; its runs continue there")
            else:
                self.lost = (f"lost the lease of study {self.study!r}: its renewal came {late_s or 0:.0f} s late, past its "
                             f"{self.ttl:.0f} s expiry (this sweep was paused or cut off), so another sweep may have taken the "
                             "study over; this one writes nothing more: rerun the same command to go on")
        raise LeaseLost(self.lost)

    def _read_quietly(self) -> dict | None:
        try:
            return self._read()
        except Exception:  # noqa: BLE001 - naming the successor is a courtesy; the loss stands either way
            return None

    def paused_past_expiry(self) -> bool:
        """Lost, or no renewal was even tried within the expiry (the process was stopped): no store call."""
        return self.lost is not None or (self._attempted > 0 and time.time() - self._attempted > self.ttl)

    def renew(self) -> None:
        """Read the lease and write a new heartbeat if the token is still current; LeaseLost if not,
        or if the last try was longer ago than the expiry: a process that was paused cannot trust its
        own clock about what happened meanwhile, even when no one took over. A store that does not
        answer raises its own error (the writes wait, as in an outage)."""
        with self._renewing:
            if self.lost is not None:
                raise LeaseLost(self.lost)
            now = time.time()
            if now - self._attempted > self.ttl:
                self._lose(self._read_quietly(), late_s=now - self._attempted)
            self._attempted = now
            lease = self._read()
            if not self._mine(lease):
                self._lose(lease)
            self._write()

    def check_current(self, decisive: bool = False) -> None:
        """Before a write of the sweep: LeaseLost once the token is not current. Within the trusted
        time since the last renewal this is a clock check; past it, or for a `decisive` write (a run
        created, continued or ended), the lease is read (and renewed when stale)."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if self.paused_past_expiry():
            self.renew()  # raises LeaseLost
        if time.time() - self._renewed >= self.trusted_s:
            self.renew()
        elif decisive and not self._mine(self._read()):
            self._lose(self._read_quietly())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception:  # noqa: BLE001 - the store is down: the spool copes; renew next time
                pass

    def release(self) -> None:
        """End the lease (kept as a released record so the generation keeps counting up). A sweep
        that lost it touches nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost is not None or not self.generation:
            return
        try:
            if self._mine(self._read()):
                self.tracker.client.set_experiment_tag(self.experiment_id, LEASE_TAG, json.dumps(
                    {"generation": self.generation, "released": time.time(), "host": self.holder["host"], "pid": self.holder["pid"]}))
        except Exception:  # noqa: BLE001 - unreachable store: the lease expires by itself
            pass


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
    from orchestrator.paths import disk_full_error, os_reason

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


def locked_store_line(uri: str, tracker: Tracker | None, experiment_id: str | None, study: str) -> str:
    """The one line for a SQLite store that stayed locked past the wait: who holds the study's lease."""
    holder = ""
    if tracker is not None and experiment_id is not None:
        try:
            lease = Lease(tracker, experiment_id, study, ttl=LEASE_TTL_S)._read()
            if lease and not lease.get("released"):
                holder = (f"; the study's lease is held by host {lease.get('host')} pid {lease.get('pid')} since "
                          f"{_when(float(lease.get('claimed') or lease.get('started') or 0))}")
        except Exception:  # noqa: BLE001 - a store too locked even to read: the line says so without the holder
            holder = ""
    return (f"--tracking-uri {redact_credentials(uri)}: the SQLite store stayed locked by another process{holder}; wait for it "
            "to end, or stop it (a stopped process holds the lock until it is continued with `kill -CONT PID` or ends), "
            "then rerun")


def is_locked(exc: BaseException) -> bool:
    return "database is locked" in _chain_text(exc)
