"""The Tune side of a search: the searcher (Optuna's ask), the per-search ASHA scheduler and the callback (MLflow, and Optuna's tell)."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from orchestrator.execution.schedule import Outcome, SweepCallback
from orchestrator.execution.trainable import ERROR_KEY, FINAL_KEY
from orchestrator.search.optuna_adapter import LearningCurve, SearchSummary
from orchestrator.search.space import SEARCH_STATE_TAG, Target
from orchestrator.study import Trial
from orchestrator.tracking import CELL_TAG, FINISHED, NOTE_TAG, PRUNED


# ---------------------------------------------------------------------------------------------
# Tune side: the searcher (Optuna ask), the scheduler (ASHA) and the callback (MLflow + Optuna tell)


@dataclass
class Running:
    """One (pair, γ) search of a Tune run that serves all of a study's searches: its Optuna study,
    parent run, and what it had before this run (ended trials, trials a stopped search left RUNNING)."""

    target: Target
    ostudy: Any
    parent: str
    budget: int
    before: "SearchSummary"
    stale: list  # Optuna's FrozenTrials left RUNNING: handed out again first, same number and point
    curve: LearningCurve  # where its trials' validation curves go, for Optuna's plots
    asked: int = 0  # new points asked in this run

    @property
    def ended_before(self) -> int:
        return self.before.complete + self.before.pruned + self.before.failed

    def progress(self) -> int:
        return self.ended_before + self.before.running + self.asked

    def can_ask(self) -> bool:
        return self.progress() < self.budget


class OptunaAskSearcher(Searcher):
    """Hands Tune the trials Optuna proposes (ask) for each search, after the unfinished ones of a
    stopped search; new points go to the search that is least far along, so all progress together."""

    def __init__(self, searches: list[Running], dists: dict[str, Any], make_trial: Callable[[Running, int, dict], Trial],
                 payload: Callable[[Trial], dict], metric: str):
        super().__init__(metric=metric, mode="max")
        self.searches = searches
        self.dists = dists
        self.make_trial = make_trial
        self.payload = payload
        self.by_trial_id: dict[str, Trial] = {}
        self.search_of: dict[str, Running] = {}
        self.number: dict[str, int] = {}
        self.reported: dict[str, set[int]] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        stale = next((s for s in self.searches if s.stale), None)
        if stale is not None:
            search, frozen = stale, stale.stale.pop(0)
            number, params = frozen.number, dict(frozen.params)
            self.reported[trial_id] = set(frozen.intermediate_values)
        else:
            open_ = [s for s in self.searches if s.can_ask()]
            if not open_:
                return Searcher.FINISHED
            search = min(open_, key=lambda s: s.progress() / s.budget)
            asked = search.ostudy.ask(self.dists)
            search.asked += 1
            number, params = asked.number, dict(asked.params)
            self.reported[trial_id] = set()
        t = self.make_trial(search, number, params)
        self.by_trial_id[trial_id] = t
        self.search_of[trial_id] = search
        self.number[trial_id] = number
        return {"payload": self.payload(t)}

    def report(self, trial_id: str, result: dict) -> None:
        """The learning curve on the validation metric, for Optuna's plots (called by the callback:
        Tune does not pass the searcher the result on which its scheduler stopped a trial)."""
        if self.metric in result and "epoch" in result and trial_id in self.number:
            step = int(result["epoch"])
            if step not in self.reported[trial_id]:
                self.reported[trial_id].add(step)
                self.search_of[trial_id].curve.report(self.number[trial_id], step, float(result[self.metric]))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # see report

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass  # the callback tells Optuna: it knows whether ASHA stopped the trial

    def tell(self, trial_id: str, state: str, value: float | None = None) -> None:
        number = self.number.get(trial_id)
        if number is None:
            return
        kind = {FINISHED: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED}.get(
            state, optuna.trial.TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.search_of[trial_id].ostudy.tell(number, value if kind == optuna.trial.TrialState.COMPLETE else None,
                                                 state=kind, skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        pass  # resuming is Optuna's storage's business, not Tune's experiment restore

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self):
        return {}


class RecordingASHA(AsyncHyperBandScheduler):
    """Ray Tune's ASHA on the validation metric, which remembers the trials it stopped (those are
    Optuna's PRUNED trials) and never stops one at its last epoch (that trial has finished)."""

    def __init__(self, metric: str, epochs: int, grace_period: int, reduction_factor: int):
        super().__init__(time_attr="epoch", metric=metric, mode="max", max_t=epochs, grace_period=grace_period,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self.epochs = epochs
        self.stopped: dict[str, int] = {}  # Tune trial id -> the epoch it was stopped after

    def on_trial_result(self, tune_controller, trial, result):
        if int(result.get("epoch", 0)) >= self.epochs:
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = int(result.get("epoch", 0))
        return action


class PerSearchASHA(FIFOScheduler):
    """One ASHA per search inside one Tune run: a trial is compared only with the trials of its own
    (pair, γ), whose accuracies are on its own scale. `key_of(tune_trial)` names its search."""

    def __init__(self, searches: list[Running], metric: str, grace_period: int, reduction_factor: int,
                 key_of: Callable[[Any], str]):
        super().__init__()
        self.key_of = key_of
        self.subs = {s.target.key: RecordingASHA(metric, s.target.base.recipe.epochs, grace_period, reduction_factor)
                     for s in searches}

    @property
    def stopped(self) -> dict[str, int]:
        return {k: v for sub in self.subs.values() for k, v in sub.stopped.items()}

    def _sub(self, trial):
        return self.subs[self.key_of(trial)]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial):
        self._sub(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._sub(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._sub(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._sub(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._sub(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return ""


class _SearchSchedule:
    """What SweepCallback asks of a schedule, for a search: trials by Tune id, no dependencies."""

    def __init__(self, searcher: OptunaAskSearcher):
        self.by_trial_id = searcher.by_trial_id

    def trial_failed(self, trial) -> None:
        pass

    def teacher_done(self, trial, checkpoint) -> None:
        pass


class SearchCallback(SweepCallback):
    """SweepCallback's tracking, plus the outcome told to Optuna: COMPLETE with the final
    validation metric, PRUNED or FAIL, and written on the run as its `search_state` tag.

    A pruned trial's run ends FINISHED, not KILLED: MLflow has no status of its own for it, and KILLED
    is what the UI marks in red beside failures and what a stopped sweep leaves for the next one to
    continue; a pruned trial is neither. It carries `pruned = true`, `search_state = pruned` and a cell
    of its own (`search_cell(..., pruned=True)`), so the runs view's group of the search averages
    completed trials only. Its config_hash is a search trial's key, which no planned trial has: a
    table cell or a sweep's plan never takes it for a finished trial; `ltkd status` counts it as
    pruned by its tag."""

    def __init__(self, searcher: OptunaAskSearcher, asha: PerSearchASHA | None, metric: str, numbers: dict[str, int],
                 cell_of: Callable[[str, bool], str], runs, progress, outcomes, max_attempts: int, poll=None):
        super().__init__(_SearchSchedule(searcher), runs, progress, outcomes, max_attempts, poll)
        self.searcher = searcher
        self.asha = asha
        self.metric = metric
        self.numbers = numbers
        self.cell_of = cell_of  # (trial key, pruned) -> the run's cell tag
        self.latest: dict[str, tuple[int, float]] = {}  # Tune trial id -> (epoch, metric) of its latest report

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        self.searcher.report(trial.trial_id, result)
        if self.metric in result and "epoch" in result:
            self.latest[trial.trial_id] = (int(result["epoch"]), float(result[self.metric]))

    def on_trial_start(self, iteration, trials, trial, **info):
        super().on_trial_start(iteration, trials, trial, **info)
        t = self._trial(trial)
        if t is not None:
            # The study's runs view groups by cell: a search's trials (and its parent) form one group.
            self.runs.set_tags(t, {"search_trial": self.numbers[t.config_hash], CELL_TAG: self.cell_of(t.config_hash, False)})

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        stopped_after = self.asha.stopped.get(trial.trial_id) if self.asha is not None else None
        final = self.final.get(trial.trial_id)
        if final is None and stopped_after is not None and trial.trial_id not in self.errors:
            epoch, value = self.latest.get(trial.trial_id, (stopped_after, None))
            last = "" if value is None else f" ({self.metric} {value:.1f} at epoch {epoch})"
            self.runs.set_tags(t, {"pruned": "true", "pruned_after_epoch": stopped_after, SEARCH_STATE_TAG: "pruned",
                                   CELL_TAG: self.cell_of(t.config_hash, True),
                                   NOTE_TAG: f"Pruned by ASHA after epoch {stopped_after} of {t.config.recipe.epochs}{last}."})
            self.runs.ended(t, FINISHED)
            self.searcher.tell(trial.trial_id, PRUNED)
            self._record(Outcome(t, PRUNED), f"pruned by ASHA after epoch {stopped_after}{last}")
            return
        value = final.get(self.metric) if final is not None and ERROR_KEY not in final and FINAL_KEY in final else None
        self.runs.set_tags(t, {SEARCH_STATE_TAG: "complete" if value is not None else "failed"})  # before its run ends
        super().on_trial_complete(iteration, trials, trial, **info)
        self.searcher.tell(trial.trial_id, FINISHED if value is not None else "FAIL", value)

    def on_trial_error(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is not None:
            self.runs.set_tags(t, {SEARCH_STATE_TAG: "failed"})
        super().on_trial_error(iteration, trials, trial, **info)
        self.searcher.tell(trial.trial_id, "FAIL")
