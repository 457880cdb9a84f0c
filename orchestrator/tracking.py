"""The only MLflow adapter: experiments, runs, batched metrics, artifacts, and reading results back.

All writes of a sweep go through one `Tracker` in the driver process (Ray trials report to the
driver), so a local SQLite store never sees concurrent writers ("database is locked").
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow prints a "View run ... at: URL" line per run it ends on a server; the sweep prints its own
# one line per trial and the experiment's address at the end.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # so the MLflow 3 UI opens the runs table, not GenAI views
FINISHED = "FINISHED"


def resolve_tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse an unusable tracking URI before anything runs (UserError: exit 2, one line)."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise UserError(f"--tracking-uri {uri}: /health answered {resp.status}; expected a running MLflow server")
        except urllib.error.HTTPError as exc:
            raise UserError(f"--tracking-uri {uri}: /health answered {exc.code}; expected a running MLflow server") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"--tracking-uri {uri}: MLflow server not reachable ({reason}); start it or pass a reachable URI") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir():
            raise UserError(f"--tracking-uri {uri}: folder {folder} does not exist")
    elif "://" not in uri and not uri.startswith(("databricks", "file:")):
        raise UserError(f"--tracking-uri {uri}: not a tracking URI; allowed: http(s)://HOST:PORT, sqlite:///PATH, postgresql://..., file:PATH")


def is_tracking_failure(exc: BaseException) -> bool:
    """Whether an exception raised while a sweep runs comes from the tracking store (a server that
    went away, a store that refuses writes) rather than from ltkd itself."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # Tune may wrap the callback's exception
        if isinstance(exc, (MlflowException, requests.exceptions.RequestException)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


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


class Tracker:
    """MLflow client wrapper bound to one tracking URI."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # -- experiments ---------------------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = False) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise UserError(f"experiment {name!r} is deleted in {self.uri}; restore it or rename the study")
            return exp.experiment_id
        if not create:
            return None
        exp_id = self.client.create_experiment(
            name, artifact_location=self._local_artifact_location(name), tags={EXPERIMENT_KIND_TAG: "custom_model_development"}
        )
        return exp_id

    def _local_artifact_location(self, name: str) -> str | None:
        """For a SQLite store, artifacts beside the database file (MLflow's default is ./mlruns in
        whatever folder the command ran from); servers and other stores keep their own default."""
        if not self.uri.startswith("sqlite:///"):
            return None
        folder = Path(self.uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlruns"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return (folder / safe).as_uri()

    # -- reading -------------------------------------------------------------------------------
    def runs(self, experiment_id: str, status: str | None = None) -> list[RunRecord]:
        """Every run of the experiment that carries a config_hash (optionally of one status), paged."""
        from mlflow.entities import ViewType

        filters = ["tags.config_hash != ''"]
        if status:
            filters.append(f"attributes.status = '{status}'")
        out: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], " and ".join(filters), run_view_type=ViewType.ACTIVE_ONLY,
                max_results=5000, page_token=token,
            )
            for r in page:
                out.append(RunRecord(
                    r.info.run_id, r.data.tags.get("config_hash", ""), r.info.status,
                    dict(r.data.metrics), dict(r.data.params), dict(r.data.tags), r.info.artifact_uri,
                ))
            token = page.token
            if not token:
                return out

    def finished_by_hash(self, experiment_id: str | None) -> dict[str, RunRecord]:
        """config_hash -> a FINISHED run (the newest when there are several)."""
        if experiment_id is None:
            return {}
        done: dict[str, RunRecord] = {}
        for rec in self.runs(experiment_id, status=FINISHED):
            done.setdefault(rec.config_hash, rec)
        return done

    # -- writing -------------------------------------------------------------------------------
    def start_run(self, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in params.items()], synchronous=True)
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One call for all keys of a step (never one HTTP call per key)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch, synchronous=True)

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_dir(self, run_id: str, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def close_stale_runs(self, experiment_id: str, config_hashes: set[str]) -> int:
        """End as KILLED the runs still RUNNING for trials about to run again.

        A sweep that died with its tracking store (or was killed hard) leaves runs RUNNING that
        nothing will end. The rerun supersedes them; so one study is swept by one `ltkd sweep` at a
        time. Returns how many were closed."""
        from mlflow.entities import RunTag

        closed = 0
        for rec in self.runs(experiment_id, status="RUNNING"):
            if rec.config_hash in config_hashes:
                self.client.log_batch(rec.run_id, tags=[RunTag("error", "superseded: the sweep that ran it stopped before ending it")],
                                      synchronous=True)
                self.client.set_terminated(rec.run_id, status="KILLED")
                closed += 1
        return closed

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
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None or not hasattr(store, "ManagedSessionMaker"):
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
        quoted = f'"{study}"' if "'" in study else f"'{study}'"
        found = self.client.search_runs(
            [experiment_id], f"tags.role = 'tables' and tags.study = {quoted}",
            run_view_type=ViewType.ACTIVE_ONLY, max_results=1, order_by=["attributes.start_time DESC"],
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(experiment_id, run_name=name, tags={"role": "tables", "study": study, "git_commit": git_commit()})
        return run.info.run_id

    def log_files(self, run_id: str, files: list[str], artifact_path: str | None = None) -> None:
        for f in files:
            self.client.log_artifact(run_id, f, artifact_path)


def _param_str(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)


def fetch_checkpoint(artifact_uri: str, tracking_uri: str, cache_root: str | None = None) -> str:
    """Local folder holding a run's checkpoint artifact, downloaded once per node and cached.

    Called inside Ray trials: works with a local store (file copy) and with a server
    (mlflow-artifacts:/ URIs resolved through the tracking server), so workers on other machines
    get the teacher the same way.
    """
    import mlflow
    from mlflow.artifacts import download_artifacts

    cache_root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "checkpoints")
    key = artifact_uri.replace("://", "_").replace(":", "_").replace("/", "_")[-180:]
    target = os.path.join(cache_root, key)
    if os.path.isdir(target) and os.listdir(target):
        return target
    mlflow.set_tracking_uri(tracking_uri)
    tmp = target + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, exist_ok=True)
    local = download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
    # Atomic publish: concurrent trials on one node never see a half-written cache entry.
    try:
        os.replace(local, target)
    except OSError:
        pass  # another trial published it first
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def per_class_artifact(per_class: list[float], class_counts: list[int]) -> dict[str, Any]:
    return {"per_class_accuracy": per_class, "class_counts": class_counts}
