"""Running a study's searches: one Tune run over every (pair, γ) search that has trials left."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


from orchestrator.errors import RunFailure
from orchestrator.words import count
from orchestrator.study import StudySpec, Trial
from orchestrator.execution.progress import SweepProgress
from orchestrator.execution.run import TuneRun, fit_trials, interrupted, trial_payload
from orchestrator.execution.trainable import default_resume_root
from orchestrator.tracking import (FINISHED, RunRecord, SpooledWriter, Tracker, TrialRuns, base_tags, driver_calls_fail_fast,
                                   resumable_runs)
from orchestrator.search.optuna_adapter import distributions, open_optuna_study, summarise
from orchestrator.search.parents import (counts_text, log_summary, parent_run, point_text, run_of_number,
                                         search_cell, value_text)
from orchestrator.search.space import PARENT_TAG, SEARCH_KEY_TAG, Target, search_trial
from orchestrator.search.tune import OptunaAskSearcher, PerSearchASHA, Running, SearchCallback


@dataclass
class SearchContext:
    """What the `ltkd search` command has set up for the driver: the store, the Tune storage, the
    FINISHED teachers, and how to start Ray and open the study's leased writer."""

    tracker: Tracker
    exp_id: str
    uri: str
    storage: str | None  # Tune's storage (--storage), None: a temporary folder per run
    done: dict[str, RunRecord]  # config_hash -> FINISHED run: the searches' teachers
    out: TextIO
    outage_limit_s: float
    ensure_ray: Callable[[], None]  # starts (or joins) Ray, once, only when a search has trials to run
    open_writer: Callable[[Callable[[str], None]], SpooledWriter]  # the spooled writer under the study's lease


def _open_searches(study: StudySpec, chosen: list[Target], ostorage: str, ctx: SearchContext) -> list[Running]:
    """Each search's Optuna study and parent run; a search whose budget is spent is summarised (once)
    and left out, the others are returned with what they had before."""
    search = study.search
    tracker, exp_id, out = ctx.tracker, ctx.exp_id, ctx.out
    searches: list[Running] = []
    for target in chosen:
        ostudy, curve = open_optuna_study(ostorage, target, study)
        before = summarise(ostudy)
        ended = before.complete + before.pruned + before.failed
        parent, finished = parent_run(tracker, exp_id, study, target, search.trials)
        if finished or (ended >= search.trials and not before.running):
            if not finished:
                log_summary(tracker, parent, ostudy, before, search.metric, run_of_number(tracker, exp_id, target, before.best_number))
                tracker.end_run(parent, FINISHED)
            print(f"search {target.label}: done ({counts_text(before)}); best {search.metric} {value_text(before.best_value)} at "
                  f"{point_text(before.best_params)}", file=out, flush=True)
            continue
        stale = [t for t in ostudy.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        searches.append(Running(target, ostudy, parent, search.trials, before, stale, curve))
        print(f"search {target.label}: {count(search.trials - ended, 'trial')} to run ({ended} ended before"
              + (f", {before.running} to continue" if before.running else "") + f"); parent run {parent}", file=out, flush=True)
    return searches


def _close_searches(searches: list[Running], metric: str, ctx: SearchContext, elapsed: float) -> None:
    """Each search's summary, best point and plots on its parent run, which ends FINISHED once its
    budget is spent (else KILLED: the next `ltkd search` continues it)."""
    tracker, exp_id = ctx.tracker, ctx.exp_id
    for r in searches:
        summary = summarise(r.ostudy)
        log_summary(tracker, r.parent, r.ostudy, summary, metric, run_of_number(tracker, exp_id, r.target, summary.best_number))
        complete = summary.complete + summary.pruned + summary.failed >= r.budget and not summary.running
        tracker.end_run(r.parent, FINISHED if complete else "KILLED")
        print(f"search {r.target.label}: {counts_text(summary)} ({elapsed:.0f} s for the searches of this run); "
              f"best {metric} {value_text(summary.best_value)} at {point_text(summary.best_params)}", file=ctx.out, flush=True)


def shown_metrics(metric: str) -> tuple[str, ...]:
    """The live view's accuracy columns for a search: overall validation accuracy and the searched
    metric (its tail accuracy, when overall is the one searched); a search trial has no acc_*."""
    return ("val_acc_all", metric) if metric != "val_acc_all" else ("val_acc_all", "val_acc_tail")


class _SearchTrials:
    """The ltkd trials of the points Optuna proposes in one Tune run, and what each belongs to."""

    def __init__(self, study: StudySpec, done: dict[str, RunRecord], payload_of: Callable[[Trial, dict], dict]):
        self.study = study
        self.done = done  # the searches' FINISHED teachers
        self.payload_of = payload_of
        self.made: list[Trial] = []  # grows as Optuna proposes: fit_trials closes those still running when it stops
        self.numbers: dict[str, int] = {}  # trial key -> its Optuna number
        self.search_of: dict[str, Running] = {}  # trial key -> its search

    def make(self, run: Running, number: int, params: dict) -> Trial:
        t = search_trial(run.target, number, params, self.study)
        self.made.append(t)
        self.numbers[t.config_hash] = number
        self.search_of[t.config_hash] = run
        return t

    def payload(self, t: Trial) -> dict:
        teacher = self.search_of[t.config_hash].target.teacher.config_hash
        return self.payload_of(t, {"teacher_artifact": self.done[teacher].artifact_uri + "/checkpoint", "teacher_hash": teacher})

    def parent_tags(self, t: Trial) -> dict[str, str]:
        """A search trial's run is nested under its search's parent run and carries the search's key."""
        run = self.search_of[t.config_hash]
        return {PARENT_TAG: run.parent, SEARCH_KEY_TAG: run.target.key}

    def search_key_of(self, tune_trial) -> str:
        return self.search_of[tune_trial.config["payload"]["config_hash"]].target.key

    def cell(self, key: str, pruned: bool) -> str:
        return search_cell(self.search_of[key].target, pruned)


def search_all(study: StudySpec, study_path: str, chosen: list[Target], ostorage: str, ctx: SearchContext) -> int:
    """The study's (pair, γ) searches that have trials left, in one Tune run (each with its own Optuna
    study, ASHA and parent run); returns how many of their trials failed in this run."""
    tracker, exp_id, uri, storage, done, out, outage_limit_s = (ctx.tracker, ctx.exp_id, ctx.uri, ctx.storage, ctx.done, ctx.out,
                                                                ctx.outage_limit_s)
    search = study.search
    searches = _open_searches(study, chosen, ostorage, ctx)
    if not searches:
        return 0

    ctx.ensure_ray()
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    resume_root = default_resume_root(storage)
    trials = _SearchTrials(study, done, lambda t, source: trial_payload(t, source, uri, resources, resume_root, keep_checkpoint=False))
    # Runs of the trials that a stopped search left RUNNING or KILLED are continued (a pruned trial's run
    # ended FINISHED, and Optuna has it PRUNED: it is never handed out again).
    states = tracker.run_states(exp_id)
    stale_keys = {search_trial(r.target, t.number, dict(t.params), study).config_hash for r in searches for t in r.stale}
    resumable = resumable_runs(states, stale_keys)
    driver_calls_fail_fast()
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # epoch reports without the metric (final, errors)
    notes: list[str] = []
    # Under the study's lease, as the sweep's: a search that lost it (paused past its expiry while
    # another took the study over) writes nothing more and stops its trials.
    writer = ctx.open_writer(notes.append)

    def outage_exceeded() -> bool:
        return writer.fenced is not None or writer.down_longer_than(outage_limit_s)

    runs = TrialRuns(writer, exp_id, base_tags(study.name, str(Path(study_path))), resumable, tags_of=trials.parent_tags)
    progress = SweepProgress(sum(r.budget - r.ended_before for r in searches), out=out, label="search",
                             columns=shown_metrics(search.metric), goal=f"maximising {search.metric} (validation split)")
    searcher = OptunaAskSearcher(searches, distributions(study), trials.make, trials.payload, search.metric)
    scheduler = None
    if search.pruner == "asha":
        scheduler = PerSearchASHA(searches, search.metric, search.grace_period, search.reduction_factor,
                                  key_of=trials.search_key_of)
    outcomes: dict = {}
    callback = SearchCallback(searcher, scheduler, search.metric, trials.numbers, trials.cell, runs, progress, outcomes,
                              study.resources.max_retries + 1)
    started = time.time()
    stopped = False
    try:
        fit_trials(trials.made, runs, outcomes, searcher, scheduler, callback,
                   TuneRun(f"{study.name}-search", resources, study.resources.max_retries, storage, uri, should_stop=outage_exceeded,
                           max_concurrent=sum(r.budget for r in searches)))
        stopped = interrupted(trials.made, outcomes, outage_exceeded)
    finally:
        progress.close()
        writer.flush(timeout=60)
        writer.close()
    for note in notes:
        print(note, file=out)
    if writer.fenced is not None:
        raise RunFailure(writer.fenced)
    _close_searches(searches, search.metric, ctx, time.time() - started)
    if stopped or outage_exceeded():
        raise KeyboardInterrupt
    return sum(1 for o in outcomes.values() if o.status == "FAILED")
