"""The only Ray adapter: one Ray Tune trial per planned trial, reporting back to the driver.

Trials send per-epoch metrics with `tune.report`; a Tune callback in the driver turns them into
MLflow writes through the one `Tracker` (batched per epoch), so workers never write to the store.
A trial's final weights travel as a Tune checkpoint and are logged as the run's `checkpoint`
artifact; distillation trials fetch their teacher from that artifact, which works on one machine
and across a cluster alike.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Tune's own CSV/JSON/TensorBoard loggers would duplicate what MLflow records.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from ray.tune import Callback  # noqa: E402

from orchestrator.study import Trial  # noqa: E402
from orchestrator.tracking import FINISHED, Tracker, per_class_artifact  # noqa: E402

FINAL_KEY = "ltkd_final"


def trial_params(trial: Trial) -> dict[str, Any]:
    """MLflow params of a trial, per the tracking schema, plus the rest of the recipe."""
    cfg = trial.config
    mp = cfg.method_params
    params: dict[str, Any] = {
        "dataset": cfg.dataset,
        "gamma": cfg.gamma,
        "role": cfg.role,
        "method": cfg.method,
        "teacher": cfg.teacher if cfg.role == "distill" else (cfg.model if cfg.role == "teacher" else None),
        "student": cfg.model if cfg.role != "teacher" else None,
        "alpha": mp.get("alpha"),
        "beta": mp.get("beta"),
        "n_groups": mp.get("n_groups"),
        "temperature": mp.get("temperature"),
        "seed": cfg.seed,
        "epochs": cfg.recipe.epochs,
        "model": cfg.model,
        "n_max": cfg.n_max,
        "split_seed": cfg.split_seed,
    }
    for key, value in cfg.method_params.items():
        params.setdefault(key, value)
    for key, value in cfg.recipe.__dict__.items():
        params.setdefault(key, value)
    if cfg.dataset_options:
        params["dataset_options"] = cfg.dataset_options
    return params


def _train_one(tune_config: dict[str, Any]) -> None:
    """The Tune trainable: runs in a Ray worker. Trainer + checkpoint fetch; no MLflow writes."""
    import torch
    from ray import tune

    from orchestrator.tracking import fetch_checkpoint
    from trainer.config import TrialConfig
    from trainer.loop import run_trial

    payload = tune_config["payload"]
    torch.set_num_threads(max(1, int(payload.get("cpus", 1))))
    config = TrialConfig.from_dict(payload["config"])
    teacher_dir = None
    if payload.get("teacher_artifact"):
        teacher_dir = fetch_checkpoint(payload["teacher_artifact"], payload["tracking_uri"])

    def report_epoch(ep) -> None:
        metrics = {"epoch": ep.epoch, "loss": ep.loss, "lr": ep.lr, **(ep.eval.metrics() if ep.eval else {})}
        metrics.update({f"loss_{k}": v for k, v in ep.terms.items()})
        tune.report(metrics)

    started = time.time()
    # Resumable state lives under the resume root keyed by the trial's identity, so a trial stopped
    # by a crash, a preempted node or Ctrl-C continues there when the sweep is run again.
    resume_dir = os.path.join(payload["resume_root"] or _worker_resume_root(), payload["config_hash"])
    with tempfile.TemporaryDirectory(prefix="ltkd-ckpt-") as ckpt:
        result = run_trial(config, report=report_epoch, teacher_checkpoint=teacher_dir, checkpoint_dir=ckpt, resume_dir=resume_dir)
        final = {
            "epoch": result.epochs,
            **result.final.metrics(),
            **{f"best_{k}": v for k, v in result.best.metrics().items()},
            "best_epoch": result.best_epoch,
            "train_seconds": time.time() - started,
            **{f"pg_{split}_{group}": v for split, groups in result.group_probability.items() for group, v in groups.items()},
            FINAL_KEY: {
                "per_class": result.final.per_class,
                "best_per_class": result.best.per_class,
                "class_counts": result.class_counts,
            },
        }
        # The long-tailed choice of images, recorded beside the weights so the split can be rebuilt anywhere.
        with open(os.path.join(ckpt, "long_tailed_split.json"), "w") as f:
            json.dump({"dataset": config.dataset, "gamma": config.gamma, "split_seed": config.split_seed,
                       "class_counts": result.class_counts, "train_indices": result.train_indices}, f)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(ckpt))
    # The final weights now travel to MLflow through the checkpoint; the resumable state is done.
    shutil.rmtree(resume_dir, ignore_errors=True)


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED | FAILED | KILLED
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    artifact_uri: str = ""


def _trial_error_line(trial) -> str:
    """'ExceptionType: message' of the error that ended a trial, from Tune's local error files."""
    import ray.cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            exc = ray.cloudpickle.load(f)
        exc = getattr(exc, "cause", None) or exc  # RayTaskError wraps the trial's own exception
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - best effort: fall back to the last line of the text trace
        try:
            with open(trial.error_file) as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            return lines[-1] if lines else ""
        except Exception:  # noqa: BLE001
            return ""


class MlflowWriter(Callback):
    """Driver-side single writer: Tune trial events -> MLflow runs (one batched call per epoch)."""

    def __init__(self, tracker: Tracker, experiment_id: str, planned: dict[str, Trial], base_tags: dict[str, str],
                 outcomes: dict[str, Outcome], on_done: Callable[[Outcome], None]):
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.planned = planned
        self.base_tags = base_tags
        self.outcomes = outcomes
        self.on_done = on_done
        self.run_of: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.final: dict[str, dict] = {}

    def __getstate__(self):
        # Tune pickles its run config (callbacks included) for experiment restore, which ltkd does
        # not use (a rerun skips finished trials instead): keep the live client and console out.
        return {"run_of": {}, "final": {}}

    def _trial(self, tune_trial) -> Trial:
        return self.planned[tune_trial.config["payload"]["config_hash"]]

    def _record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.trial.config_hash] = outcome
        self.on_done(outcome)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.run_of:
            return
        t = self._trial(trial)
        tags = {**self.base_tags, "config_hash": t.config_hash, "role": t.role, "row": t.row}
        if t.teacher_hash:
            tags["teacher_hash"] = t.teacher_hash
        self.run_of[trial.trial_id] = self.tracker.start_run(self.experiment_id, t.run_name, trial_params(t), tags)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_of.get(trial.trial_id)
        if run_id is None:
            return
        if FINAL_KEY in result:
            self.final[trial.trial_id] = result
            return
        keys = ("loss", "lr", "acc_all", "acc_head", "acc_medium", "acc_tail")
        metrics = {k: result[k] for k in keys if k in result}
        metrics.update({k: v for k, v in result.items() if k.startswith("loss_")})
        self.tracker.log_metrics(run_id, metrics, int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_of.get(trial.trial_id)
        t = self._trial(trial)
        final = self.final.get(trial.trial_id)
        if run_id is None or final is None:
            outcome = Outcome(t, "FAILED", run_id, error="trial ended without a final report")
            if run_id:
                self.tracker.set_tags(run_id, {"error": outcome.error})
                self.tracker.end_run(run_id, "FAILED")
            self._record(outcome)
            return
        payload = final[FINAL_KEY]
        summary = {k: final[k] for k in final if k.startswith(("acc_", "best_", "pg_")) or k == "train_seconds"}
        # acc_* of the last epoch are already logged at that step, and are the runs' latest values.
        self.tracker.log_metrics(run_id, {k: v for k, v in summary.items() if not k.startswith("acc_")}, int(final["epoch"]))
        self.tracker.log_json(run_id, per_class_artifact(payload["per_class"], payload["class_counts"]), "per_class_accuracy.json")
        self.tracker.log_json(run_id, per_class_artifact(payload["best_per_class"], payload["class_counts"]), "best_epoch_per_class_accuracy.json")
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as local:
                self.tracker.log_dir(run_id, local, "checkpoint")
        self.tracker.end_run(run_id, FINISHED)
        artifact_uri = self.tracker.client.get_run(run_id).info.artifact_uri
        self._record(Outcome(t, FINISHED, run_id, summary, artifact_uri=artifact_uri))

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_of.get(trial.trial_id)
        err = _trial_error_line(trial)
        err = err or "trial raised an error (see the Ray logs)"
        if run_id:
            self.tracker.set_tags(run_id, {"error": err[:4000]})
            self.tracker.end_run(run_id, "FAILED")
        self._record(Outcome(self._trial(trial), "FAILED", run_id, error=err))

    def close_open_runs(self) -> None:
        """Runs left open by an interrupt end KILLED, so a rerun retries them and nothing stays RUNNING."""
        closed = {o.run_id for o in self.outcomes.values()}
        for run_id in self.run_of.values():
            if run_id not in closed:
                self.tracker.end_run(run_id, "KILLED")


def default_resume_root(storage_path: str | None) -> str | None:
    """Where trials keep resumable state: beside the Tune storage when it is a path (shared storage
    on a cluster), else None: the worker's own cache (`~` resolved on the node that runs the trial)."""
    if storage_path and "://" not in storage_path:
        return os.path.join(os.path.abspath(storage_path), "ltkd-resume")
    return None  # no storage, or an object-store URI (torch.save needs a filesystem): per node


def _worker_resume_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "resume")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        # Workers fetch teacher checkpoints from MLflow: hand them the driver's MLflow credentials.
        env_vars = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI"}
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": env_vars} if env_vars else None)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def run_trials(
    trials: list[Trial],
    tracker: Tracker,
    experiment_id: str,
    base_tags: dict[str, str],
    resources: dict[str, float],
    teacher_artifacts: dict[str, str],
    on_done: Callable[[Outcome], None],
    storage_path: str | None = None,
    name: str = "ltkd",
    resume_root: str | None = None,
) -> dict[str, Outcome]:
    """Run the given trials (all independent of each other) through Ray Tune; return outcomes by hash."""
    from ray import tune

    if not trials:
        return {}
    by_hash = {t.config_hash: t for t in trials}
    resume_root = resume_root or default_resume_root(storage_path)
    payloads = []
    for t in trials:
        payloads.append({
            "config_hash": t.config_hash,
            "config": t.config.to_dict(),
            "teacher_artifact": teacher_artifacts.get(t.teacher_hash or "", None),
            "tracking_uri": tracker.uri,
            "cpus": resources.get("cpu", 1),
            "resume_root": resume_root,
        })
    outcomes: dict[str, Outcome] = {}
    callback = MlflowWriter(tracker, experiment_id, by_hash, base_tags, outcomes, on_done)
    own_storage = storage_path is None
    storage = storage_path or tempfile.mkdtemp(prefix="ltkd-tune-")
    tuner = tune.Tuner(
        tune.with_resources(_train_one, {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)}),
        param_space={"payload": tune.grid_search(payloads)},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    # Tune logs its own summary of failed trials and missing result files (its file loggers are off);
    # the callback already reports each trial, so keep the console to our lines.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        tuner.fit()
    finally:
        callback.close_open_runs()
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
    if len(outcomes) < len(trials):
        # Tune catches Ctrl-C, stops the trials in flight and returns: only then do trials end
        # without an outcome. Stop the sweep here rather than start the next phase.
        raise KeyboardInterrupt
    return outcomes
