"""Which trial runs next (teachers first, a student once its teacher is done), and the callback that moves Tune's events to the run layout and the progress view."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from orchestrator.errors import error_line
from orchestrator.execution.trainable import ERROR_KEY, FINAL_KEY
from orchestrator.study import Trial
from orchestrator.tracking import FINISHED, TrialRuns


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED | FAILED | KILLED | SKIPPED | PRUNED
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


# ---------------------------------------------------------------------------------------------
# The schedule: which trial runs next.


class Schedule:
    """The sweep's trials and their dependencies; shared by the searcher and the callback (both run
    on Tune's event loop, so no lock)."""

    def __init__(self, trials: list[Trial], teacher_artifacts: dict[str, str], payload: Callable[[Trial, dict], dict],
                 on_skip: Callable[[Trial, str], None]):
        # teachers first (they unblock students), distillation next, Student baselines fill slots
        rank = {"teacher": 0, "distill": 1, "student": 2}
        self.pending = sorted(trials, key=lambda t: rank[t.role])
        self.payload = payload
        self.on_skip = on_skip
        self.teacher_sources: dict[str, dict] = {h: {"teacher_artifact": uri, "teacher_hash": h} for h, uri in teacher_artifacts.items()}
        self.failed: set[str] = set()
        self.by_trial_id: dict[str, Trial] = {}

    def next_trial(self) -> Trial | None:
        """The first pending trial that can run now (removed from pending), or None."""
        self.skip_blocked()
        for t in self.pending:
            if t.role != "distill" or t.teacher_hash in self.teacher_sources:
                self.pending.remove(t)
                return t
        return None

    def teacher_done(self, trial: Trial, checkpoint) -> None:
        if trial.role == "teacher" and checkpoint is not None:
            self.teacher_sources[trial.config_hash] = {"teacher_checkpoint": checkpoint}

    def trial_failed(self, trial: Trial) -> None:
        self.failed.add(trial.config_hash)
        self.skip_blocked()

    def skip_blocked(self) -> None:
        """The students of a failed teacher are skipped at once, not when a slot frees."""
        for t in [t for t in self.pending if t.role == "distill" and t.teacher_hash in self.failed]:
            self.pending.remove(t)
            self.on_skip(t, "its teacher did not finish")


class DependencySearcher(Searcher):
    """Releases a trial to Tune only when it can run; FINISHED once every trial is released."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        trial = self.schedule.next_trial()
        if trial is None:
            return Searcher.FINISHED if not self.schedule.pending else None
        self.schedule.by_trial_id[trial_id] = trial
        sources = self.schedule.teacher_sources.get(trial.teacher_hash or "", {})
        return {"payload": self.schedule.payload(trial, sources)}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass  # the callback records outcomes: it sees the checkpoint and the reported error

    # ltkd does not restore Tune experiments (a rerun skips finished trials and resumes the others),
    # and the schedule holds live references: nothing to save.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self):
        return {}


class OutageStopper(Stopper):
    """Stops the whole Tune run when `should_stop()` says so (tracking down past its limit, Ctrl-C)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.should_stop()

    def __getstate__(self):
        return {}


def _trial_error_line(trial) -> str:
    """'ExceptionType: message' of the error that ended a trial, from Tune's local error files."""
    import ray.cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            exc = ray.cloudpickle.load(f)
        exc = getattr(exc, "cause", None) or exc  # RayTaskError wraps the trial's own exception
        return error_line(exc)
    except Exception:  # noqa: BLE001 - best effort: fall back to the last line of the text trace
        try:
            with open(trial.error_file) as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith((" ", "Traceback"))]
            return lines[-1][:600] if lines else ""
        except Exception:  # noqa: BLE001
            return ""


class SweepCallback(Callback):
    """Driver side: Tune trial events -> the trial runs (tracking) and the progress view."""

    def __init__(self, schedule: Schedule, runs: TrialRuns, progress, outcomes: dict[str, Outcome], max_attempts: int,
                 poll: Callable[[], None] | None = None):
        self.schedule = schedule
        self.runs = runs
        self.progress = progress
        self.outcomes = outcomes
        self.max_attempts = max_attempts
        self.poll = poll or (lambda: None)
        self.final: dict[str, dict] = {}
        self.errors: dict[str, dict] = {}
        self.tries: dict[str, int] = {}  # attempts in this sweep (the run's `attempts` tag counts all)

    def __getstate__(self):
        # Tune pickles its run config (callbacks included) for experiment restore, which ltkd does
        # not use: keep the live writer and console out.
        return {}

    def _trial(self, tune_trial) -> Trial | None:
        return self.schedule.by_trial_id.get(tune_trial.trial_id)

    def _record(self, outcome: Outcome, detail: str) -> None:
        self.outcomes[outcome.trial.config_hash] = outcome
        self.progress.trial_done(outcome.trial.config_hash, outcome.status, detail)

    def on_step_begin(self, iteration, trials, **info):
        self.poll()

    def on_trial_start(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        self.runs.started(t)
        self.progress.trial_started(t.config_hash, t.run_name, t.config.recipe.epochs, self.tries.get(t.config_hash, 1))

    def on_trial_recover(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        reason = _trial_error_line(trial) or "the trial's worker died"
        self.runs.retried(t, reason)
        self.tries[t.config_hash] = self.tries.get(t.config_hash, 1) + 1
        self.progress.trial_retry(t.config_hash, self.tries[t.config_hash], self.max_attempts, reason)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self._trial(trial)
        if t is None:
            return
        if "first_epoch" in result:  # the attempt's first report (its final one, when it resumed a finished state)
            attempt = self.runs.attempts.get(t.config_hash, 1)
            where = {"node_id": result.get("node_id"), "pid": result.get("pid"), f"attempt_{attempt}_node_id": result.get("node_id")}
            if result["first_epoch"] > 1:
                where["resumed_after_epoch"] = result["first_epoch"] - 1
            self.runs.set_tags(t, where)
        if FINAL_KEY in result:
            self.final[trial.trial_id] = result
            return
        if ERROR_KEY in result:
            self.errors[trial.trial_id] = result
            return
        if self.runs.epoch(t, result):
            self.progress.trial_epoch(t.config_hash, int(result["epoch"]), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        final = self.final.pop(trial.trial_id, None)
        error = self.errors.pop(trial.trial_id, None)
        if final is None:
            reason = error[ERROR_KEY] if error else "trial ended without a final report"
            self.runs.ended(t, "FAILED", reason)
            self.schedule.trial_failed(t)
            self._record(Outcome(t, "FAILED", error=reason), reason)
            return
        payload = final[FINAL_KEY]
        summary = {k: final[k] for k in final if k.startswith(("acc_", "val_", "best_", "pg_")) or k == "train_seconds"}
        if t.role == "distill" and "teacher_logits" in final:
            self.runs.set_tags(t, {"teacher_logits": final["teacher_logits"]})
        # the checkpoint is copied into the spool while it is a local folder (a download for remote storage)
        with trial.checkpoint.as_directory() if trial.checkpoint is not None else contextlib.nullcontext() as local:
            self.runs.finished(t, summary, int(final["epoch"]), payload["per_class"], payload["best_per_class"],
                               payload["class_counts"], local, digest=payload.get("split_digest"), split=payload.get("split"))
        self.schedule.teacher_done(t, trial.checkpoint)
        p = "val_" if "val_acc_all" in summary else ""  # a search trial: validation accuracy
        detail = (f"{'val ' if p else ''}all {summary.get(p + 'acc_all', math.nan):5.1f}  tail {summary.get(p + 'acc_tail', math.nan):5.1f}  "
                  f"({summary.get('train_seconds', 0):.1f} s)")
        self._record(Outcome(t, FINISHED, summary), detail)

    def on_trial_error(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        err = _trial_error_line(trial) or "trial raised an error (see the Ray logs)"
        attempts = self.runs.attempts.get(t.config_hash, 1)
        if attempts > 1:
            err = f"{err} (after {attempts} attempts)"
        self.runs.ended(t, "FAILED", err)
        self.schedule.trial_failed(t)
        self._record(Outcome(t, "FAILED", error=err), err)


# ---------------------------------------------------------------------------------------------
