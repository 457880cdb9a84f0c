"""A sweep's trials as runs: what the Tune side reports becomes queued writes of the run layout."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from orchestrator.tracking.layout import (BEST_PER_CLASS_FILE, CHECKPOINT_DIR, GROUP_CURVES_PLOT, MODEL_DIR, PER_CLASS_FILE, PER_CLASS_PLOT,
    SPLIT_FILE, dataset_input, epoch_metrics, group_curve_metrics, per_class_artifact, run_name, summary_metrics, teacher_run_name,
    trial_params, trial_tags)
from orchestrator.tracking.records import FINISHED



@dataclass
class ResumableRun:
    """A trial's run left RUNNING or KILLED by a sweep that stopped: the next sweep continues it."""

    run_id: str
    last_epoch: int
    attempts: int


def resumable_runs(states: dict, hashes: set[str]) -> dict[str, ResumableRun]:
    """The runs of these trials that a stopped sweep or search left RUNNING or KILLED: continued, not
    duplicated. `states`: config_hash -> RunState (`Tracker.run_states`)."""
    return {h: ResumableRun(s.run_id, s.last_epoch, s.attempts) for h, s in states.items()
            if h in hashes and s.status in ("RUNNING", "KILLED")}


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
        self.writer.log_metrics(key, summary_metrics(summary), step)
        self.writer.log_json(key, per_class_artifact(per_class, class_counts), PER_CLASS_FILE)
        self.writer.log_json(key, per_class_artifact(best_per_class, class_counts), BEST_PER_CLASS_FILE)
        if trial.role == "distill" and not trial.config.validation_per_class:
            self.writer.log_per_class_plot(key, per_class, class_counts, f"{run_name(trial)}: per-class test accuracy (final epoch)",
                                           PER_CLASS_PLOT)
        self.writer.log_group_curves(key, group_curve_metrics(bool(trial.config.validation_per_class)),
                                     f"{run_name(trial)}: accuracy per epoch", GROUP_CURVES_PLOT)
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
