"""The only MLflow adapter: experiments, runs, batched metrics, artifacts, and reading results back.

All writes of a sweep go through one `Tracker` in the driver process (Ray trials report to the
driver), so a local SQLite store never sees concurrent writers ("database is locked")."""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError, error_line, redact_credentials
from orchestrator.tracking.layout import (EXPERIMENT_KIND_TAG, NOTE_TAG, VIEW_STATE_TAG, experiment_url, git_commit, param_str,
    teacher_link_tags)
from orchestrator.tracking.records import FINISHED, STATE_METRICS, RunRecord, RunState, _int_tag, _newest_per_hash
from orchestrator.tracking.store import CREDENTIALS_HINT, _server_get, server_login


# MLflow prints a "View run ... at: URL" line per run it ends on a server; the sweep prints its own
# one line per trial and the experiment's address at the end.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


# A trial's LoggedModel: the run's id of it, what it carries of the run (tags to find the students of
# a cell by, params to compare them by) and which final metrics are linked to it.
MODEL_ID_TAG = "model_id"
REGISTERED_TAG = "registered_model"  # a teacher run's model version: models:/<name>/<version>
TEACHER_MODEL_TAG = "teacher_model"  # a distillation run's teacher, as that model version: models:/<name>@<alias>


def teacher_model_name(study: str, teacher_run_name: str) -> str:
    """The registered model of a study's teacher trial (its versions: that teacher trained again)."""
    return f"{study} {teacher_run_name}".strip()


def teacher_model_alias(teacher_hash: str) -> str:
    return f"config-{teacher_hash}"
MODEL_TAGS = ("study", "role", "row", "cell", "config_hash", "teacher_hash")
MODEL_PARAMS = ("dataset", "gamma", "method", "model", "teacher", "student", "seed", "n_groups", "alpha", "beta", "epochs")
MODEL_METRIC_PREFIXES = ("acc_", "val_acc_", "best_acc_")


def _quiet_sql_store_log() -> None:
    """Keep MLflow's SQL store quiet: it logs every failed statement with its traceback before raising
    (ltkd reports the failure itself in one line) and "Creating initial MLflow database tables..." in
    the middle of a sweep's output. A filter, not a level: MLflow sets its loggers' levels again
    when it is imported and when a store opens."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _only_critical not in logger.filters:
        logger.addFilter(_only_critical)


MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # a logged model's registered versions, as MLflow's UI reads them


def _only_critical(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


class Tracker:
    """MLflow client wrapper bound to one tracking URI.

    draw_per_class: draws a run's per-class accuracy as PNG bytes (per_class, class_counts, title);
    draw_group_curves: draws metric histories ({name: [(step, value)]}, title) as PNG bytes. Both are
    given by the commands that write trial runs (tables.plots draws; tracking does not import tables)."""

    def __init__(self, uri: str, draw_per_class: Callable[[list[float], list[int], str], bytes] | None = None,
                 draw_group_curves: Callable[[dict[str, list[tuple[int, float]]], str], bytes] | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.draw_per_class = draw_per_class
        self.draw_group_curves = draw_group_curves
        if not os.environ.get("LTKD_DEBUG"):
            _quiet_sql_store_log()  # first: the client opens the store (and creates its tables) at once
        self.client = MlflowClient(tracking_uri=uri)

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

        items = [Param(k, param_str(v)) for k, v in params.items()]
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

    def runs_tagged(self, experiment_id: str, tags: dict[str, str], max_results: int = 1, status: str | None = None) -> list:
        """MLflow's runs of the experiment whose tags have these values (a search's parent run, its
        trials, a `tables` run), of this status when given."""
        query = " and ".join(f"tags.`{key}` = {filter_literal(value)}" for key, value in tags.items())
        if status is not None:
            query += f" and attributes.status = {filter_literal(status)}"
        return self.client.search_runs([experiment_id], query, max_results=max_results)

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
        tags = teacher_link_tags(experiment_id, teacher_run, teacher_hash, teacher_name)
        study = self.client.get_run(run_id).data.tags.get("study", "")
        tags[TEACHER_MODEL_TAG] = f"models:/{teacher_model_name(study, teacher_name)}@{teacher_model_alias(teacher_hash)}"
        self.set_tags(run_id, tags)

    def log_input(self, run_id: str, dataset: dict[str, Any]) -> None:
        """The training data as an MLflow dataset input (the UI's Datasets column and run page)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(name=dataset["name"], digest=dataset["digest"], source_type=dataset["source_type"],
                         source=json.dumps(dataset["source"]), schema=json.dumps(dataset["schema"]), profile=json.dumps(dataset["profile"]))
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", dataset.get("context", "train"))])])

    def log_model(self, run_id: str, checkpoint_dir: str, artifact_path: str) -> None:
        """The final weights as an MLflow 3 LoggedModel of the run (`mlflow.pytorch.load_model` loads
        it as `runs:/<run id>/<artifact_path>` or `models:/<model id>`), rebuilt from the trial's
        checkpoint folder: named `artifact_path`, typed by the trial's role, tagged with its study, cell,
        row and config_hash, carrying the run's final metrics and training data (so
        `search_logged_models` ranks the students of a cell), and listed as the run's output (the
        runs table's "Logged models"). Safe to replay: the spool may deliver it twice, so the model's
        id is kept on the run (MODEL_ID_TAG) and a model already READY is not logged again."""
        import tempfile

        import mlflow.pytorch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

        import trainer
        from trainer.loop import load_checkpoint

        run = self.client.get_run(run_id)
        model = self._logged_model_of(run, artifact_path)
        if model.status == LoggedModelStatus.READY:
            return
        trainer_dir = os.path.dirname(os.path.abspath(trainer.__file__))
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
            self.client.log_model_artifacts(model.model_id, folder)
        step = _int_tag(run.data.params.get("epochs", "0"), 0)
        dataset = next((i.dataset for i in run.inputs.dataset_inputs), None) if run.inputs else None
        linked = []
        for key in sorted(k for k in run.data.metrics if k.startswith(MODEL_METRIC_PREFIXES)):
            # The run's own last point of the metric, re-sent with the model: the store keeps one point
            # (the same key, step, time and value) in the run's history and links it to the model.
            last = max(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            linked.append(Metric(key, last.value, last.timestamp, last.step, model_id=model.model_id, run_id=run_id,
                                 dataset_name=dataset.name if dataset else None, dataset_digest=dataset.digest if dataset else None))
        if linked:
            self.client.log_batch(run_id, metrics=linked, synchronous=True)
        if model.model_id not in {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}:
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        if run.data.tags.get("role") == "teacher" and REGISTERED_TAG not in run.data.tags:
            self._register_teacher(run, model)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)

    def _register_teacher(self, run, model) -> None:
        """A teacher's model as a version of the registered model `<study> <teacher run name>`, with
        the alias `config-<config_hash>`, so that its students point at a model version (the Models
        page), not only at a run: `models:/<name>@config-<hash>`, known when a student starts, before
        the teacher's registration has reached the store. A teacher retrained (`--retrain-teacher`) is
        the next version and takes the alias over."""
        from mlflow.exceptions import MlflowException

        name = teacher_model_name(run.data.tags.get("study", ""), run.info.run_name)
        try:
            self.client.create_registered_model(name, description=f"ltkd teacher models of study {run.data.tags.get('study')!r}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        config_hash = run.data.tags.get("config_hash", "")
        # A retried call finds the version it made before; the source is the model's own artifact
        # location (a `models:/` URI would be resolved against the process's global tracking URI).
        made = self.client.search_model_versions(f"run_id = '{run.info.run_id}'")
        version = made[0] if made else self.client.create_model_version(
            name, source=model.artifact_location, run_id=run.info.run_id, model_id=model.model_id, tags={"config_hash": config_hash})
        self.client.set_registered_model_alias(name, teacher_model_alias(config_hash), version.version)
        # The Models page's "Registered models" column reads this tag of the logged model (what
        # mlflow.register_model sets; a client's create_model_version does not).
        listed = json.loads(self.client.get_logged_model(model.model_id).tags.get(MODEL_VERSIONS_TAG) or "[]")
        entry = {"name": name, "version": version.version}
        if entry not in listed:
            self.client.set_logged_model_tags(model.model_id, {MODEL_VERSIONS_TAG: json.dumps(listed + [entry])})
        self.client.set_tag(run.info.run_id, REGISTERED_TAG, f"models:/{name}/{version.version}")

    def _logged_model_of(self, run, name: str):
        """The run's LoggedModel named `name`: the one a replayed call made before, else a new one."""
        known = run.data.tags.get(MODEL_ID_TAG)
        if known:
            try:
                return self.client.get_logged_model(known)
            except Exception:  # noqa: BLE001 - deleted since: make a new one
                pass
        tags = {k: run.data.tags[k] for k in MODEL_TAGS if k in run.data.tags}
        model = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run.info.run_id,
                                                tags={**tags, "run_name": run.info.run_name or ""},
                                                params={k: run.data.params[k] for k in MODEL_PARAMS if k in run.data.params},
                                                model_type=run.data.tags.get("role", "model"))
        self.client.set_tag(run.info.run_id, MODEL_ID_TAG, model.model_id)
        return model

    def log_png(self, run_id: str, png: bytes, artifact_file: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ltkd-png-") as tmp:
            path = os.path.join(tmp, os.path.basename(artifact_file))
            with open(path, "wb") as f:
                f.write(png)
            self.client.log_artifact(run_id, path, os.path.dirname(artifact_file) or None)

    def log_per_class_plot(self, run_id: str, per_class: list[float], class_counts: list[int], title: str, artifact_file: str) -> None:
        if self.draw_per_class is None:
            raise ValueError(f"{artifact_file}: this tracker was opened without a per-class plot drawer")
        self.log_png(run_id, self.draw_per_class(per_class, class_counts, title), artifact_file)

    def log_group_curves(self, run_id: str, metrics: list[str], title: str, artifact_file: str) -> None:
        """The run's histories of `metrics` as one figure. Read from the store, not from the sweep's
        memory: a run that an earlier sweep began has its first epochs there only."""
        if self.draw_group_curves is None:
            raise ValueError(f"{artifact_file}: this tracker was opened without a curves drawer")
        histories = {m: sorted((h.step, h.value) for h in self.client.get_metric_history(run_id, m)) for m in metrics}
        histories = {m: points for m, points in histories.items() if points}
        if histories:
            self.log_png(run_id, self.draw_group_curves(histories, title), artifact_file)

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
        server or a file store. MLflow has no public accessor for it: this is the one place that reaches
        through the client's private `_tracking_client`, for the few SQL queries of `final_metrics_by_hash`
        and `run_states` (a study of thousands of runs in a second, where search_runs pages through all)."""
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        return store if hasattr(store, "ManagedSessionMaker") else None

    # -- status (orchestrator/commands/status.py) and continuing interrupted runs -----------------------------
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
