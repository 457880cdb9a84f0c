"""The Tune trainable: one trial in a Ray worker (the trainer's loop, its resume state, its teacher's checkpoint)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

from orchestrator.errors import error_line
from orchestrator.execution.packing import cap_gpu_memory
from orchestrator.tracking import SPLIT_FILE, fetch_checkpoint, logged_value, split_digest, system_sampler, write_manifest
from trainer.config import TrialConfig

FINAL_KEY = "ltkd_final"
ERROR_KEY = "ltkd_error"
# Errors that would happen again on a retry: the trial is failed at once, not retried.
DETERMINISTIC_ERRORS = (FloatingPointError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, AssertionError)


def train_trial(tune_config: dict[str, Any], tracking_uri: str | None = None) -> None:
    """The Tune trainable: runs in a Ray worker. Trainer + teacher fetch; no MLflow writes.
    `tracking_uri`: the store's URI with its password, through Ray's object store (`fit_trials`)."""
    import ray
    import torch
    from ray import tune
    from trainer.loop import run_trial  # PyTorch: imported where a trial trains, not where the driver plans

    payload = tune_config["payload"]
    torch.set_num_threads(max(1, int(payload.get("cpus", 1))))
    cap_gpu_memory(payload.get("gpus", 0))  # a packed trial keeps to its share of the GPU's memory
    system_metrics = system_sampler()
    started = time.time()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    first = True

    # A search trial evaluates on its validation split: its accuracies are val_acc_*, never acc_*.
    prefix = "val_" if payload["config"].get("validation_per_class") else ""

    # Accuracies and lr as the run records them (`logged_value`): the run, the search's sampler and pruner,
    # and the console see one value.
    def epoch_metrics(ep) -> dict:
        metrics = {"epoch": ep.epoch, "loss": ep.loss, "lr": logged_value("lr", ep.lr),
                   **(_accuracies(ep.eval, prefix) if ep.eval else {})}
        metrics.update({f"loss_{k}": v for k, v in ep.terms.items()})
        return metrics

    def report_epoch(ep) -> None:
        nonlocal first
        metrics = {**epoch_metrics(ep), **system_metrics()}
        if first:  # where this attempt runs, and the epoch it resumed after
            metrics.update(where, first_epoch=ep.epoch)
            first = False
        tune.report(metrics)

    def report_saved_epoch(ep) -> None:  # an epoch of the resumed state: the driver keeps it if it lacks it
        tune.report(epoch_metrics(ep))

    # Resumable state lives under the resume root keyed by the trial's identity, so a trial whose
    # worker died (retried by Tune) or whose sweep stopped (run again) continues there.
    resume_dir = os.path.join(payload["resume_root"] or _worker_resume_root(), payload["config_hash"])
    try:
        config = TrialConfig.from_dict(payload["config"])
        teacher_dir = _teacher_dir(payload, tracking_uri)
        keep = payload.get("keep_checkpoint", True)  # a search trial's weights are not kept
        with tempfile.TemporaryDirectory(prefix="ltkd-ckpt-") as ckpt:
            result = run_trial(config, report=report_epoch, teacher_checkpoint=teacher_dir, checkpoint_dir=ckpt if keep else None,
                               resume_dir=resume_dir, saved_report=report_saved_epoch,
                               teacher_logits_dir=_worker_teacher_logits_root())
            final = _final_report(result, config, prefix, time.time() - started, ckpt if keep else None)
            if first:  # the attempt resumed a state saved after the last epoch: nothing was left to train
                final.update(where, first_epoch=result.epochs + 1)
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(ckpt) if keep else None)
    except DETERMINISTIC_ERRORS as exc:
        # Reported, not raised: Tune retries what raises, and this would fail the same way again.
        tune.report({ERROR_KEY: error_line(exc, 2000), **where})
        return
    # The final weights now travel through the Tune checkpoint; the resumable state is done.
    shutil.rmtree(resume_dir, ignore_errors=True)


def _teacher_dir(payload: dict, tracking_uri: str | None) -> str | None:
    """The teacher's checkpoint folder on this node: from this sweep's Tune checkpoint, else fetched
    from the tracking store; None for a trial without a teacher."""
    if payload.get("teacher_checkpoint") is not None:
        return _local_checkpoint(payload["teacher_checkpoint"], payload["config_hash"])
    if payload.get("teacher_artifact"):
        return fetch_checkpoint(payload["teacher_artifact"], tracking_uri or payload["tracking_uri"],
                                teacher_hash=payload.get("teacher_hash"))
    return None


def _final_report(result, config: TrialConfig, prefix: str, train_seconds: float, ckpt: str | None) -> dict:
    """The trial's last report: final and best metrics, and (under FINAL_KEY) what the driver logs as
    artifacts. With a checkpoint folder the split is written there beside the weights."""
    final = {
        "epoch": result.epochs,
        **_accuracies(result.final, prefix),
        **_accuracies(result.best, f"best_{prefix}"),
        "best_epoch": result.best_epoch,
        "train_seconds": train_seconds,
        "teacher_logits": result.teacher_logits,  # live, or its table built here or read from the node's cache
        **{f"pg_{split}_{group}": v for split, groups in result.group_probability.items() for group, v in groups.items()},
        FINAL_KEY: {
            "per_class": result.final.per_class,
            "best_per_class": result.best.per_class,
            "class_counts": result.class_counts,
            "split_digest": split_digest(result.train_indices),
        },
    }
    # The long-tailed choice of images, recorded beside the weights so the split can be rebuilt anywhere
    # (a search trial keeps no weights: its split, with the held-out validation images, goes to its run).
    split = {"dataset": config.dataset, "gamma": config.gamma, "split_seed": config.split_seed,
             "class_counts": result.class_counts, "train_indices": result.train_indices}
    if config.validation_per_class:
        split.update(validation_per_class=config.validation_per_class, validation_indices=result.validation_indices)
    if ckpt is not None:
        with open(os.path.join(ckpt, SPLIT_FILE), "w") as f:
            json.dump(split, f)
        write_manifest(ckpt)
    else:
        final[FINAL_KEY]["split"] = split
    return final


def _accuracies(evaluation, prefix: str) -> dict[str, float]:
    """An evaluation's head / medium / tail / all accuracies, named with `prefix`, as the run records them."""
    return {prefix + k: logged_value(prefix + k, v) for k, v in evaluation.metrics().items()}


def _local_checkpoint(checkpoint, key: str) -> str:
    """A teacher's Tune checkpoint as a local folder: the path itself on a local or shared
    filesystem, else a download (object-store storage) into this node's cache."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and os.path.isdir(checkpoint.path):
        return checkpoint.path
    target = os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "tune-checkpoints", key)
    if not (os.path.isdir(target) and os.listdir(target)):
        checkpoint.to_directory(target)
    return target


def _worker_resume_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "resume")


def _worker_teacher_logits_root() -> str:
    """This node's teacher-logit tables (`trainer.teacher_logits`): the students of a teacher that run
    on the node share the one its first student built."""
    return os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "teacher-logits")


def default_resume_root(storage_path: str | None) -> str | None:
    """Where trials keep resumable state: beside the Tune storage when it is a path (shared storage
    on a cluster, so a retry on another node resumes too), else None: the worker's own cache."""
    if storage_path and "://" not in storage_path:
        return os.path.join(os.path.abspath(storage_path), "ltkd-resume")
    return None  # no storage, or an object-store URI (torch.save needs a filesystem): per node
