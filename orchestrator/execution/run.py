"""One Ray Tune run over a sweep's trials."""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import redact_credentials
from orchestrator.execution import leftovers
from orchestrator.execution.cluster import cluster_slots
from orchestrator.execution.schedule import DependencySearcher, OutageStopper, Outcome, Schedule, SweepCallback
from orchestrator.execution.trainable import default_resume_root, train_trial
from orchestrator.study import Trial
from orchestrator.tracking import SKIPPED, TrialRuns


def trial_payload(t: Trial, sources: dict, tracking_uri: str, resources: dict[str, float], resume_root: str | None,
                  **extra: Any) -> dict:
    """What `train_trial` receives for a trial: its config, identity, where to resume and its teacher's source.
    Tune writes it into its experiment state on the storage: the tracking URI without its password."""
    return {
        "config_hash": t.config_hash,
        "config": t.config.to_dict(),
        "tracking_uri": redact_credentials(tracking_uri),
        "cpus": resources.get("cpu", 1),
        "gpus": resources.get("gpu", 0),
        "resume_root": resume_root,
        **sources,
        **extra,
    }


@dataclass(frozen=True)
class TuneRun:
    """How one Tune run goes: its name, each trial's resources, retries, storage and when to stop."""

    name: str
    resources: dict[str, float]  # per trial: cpu, gpu
    max_retries: int
    storage_path: str | None  # Tune's storage; None: a temporary folder, removed after the run
    tracking_uri: str  # with its password: reaches the trials through Ray's object store only
    should_stop: Callable[[], bool] = lambda: False
    max_concurrent: int | None = None  # at most this many trials at once (else what the cluster holds)


def run_trials(trials: list[Trial], runs: TrialRuns, progress, teacher_artifacts: dict[str, str], tune_run: TuneRun,
               poll: Callable[[], None] | None = None) -> dict[str, Outcome]:
    """Run the trials in one Tune run, each as soon as its teacher is done; return outcomes by hash
    (FINISHED, FAILED, SKIPPED, or KILLED when the sweep was stopped)."""
    if not trials:
        return {}
    resume_root = default_resume_root(tune_run.storage_path)
    outcomes: dict[str, Outcome] = {}

    def payload(t: Trial, sources: dict) -> dict:
        return trial_payload(t, sources, tune_run.tracking_uri, tune_run.resources, resume_root)

    def on_skip(t: Trial, reason: str) -> None:
        outcomes[t.config_hash] = Outcome(t, SKIPPED, error=reason)
        progress.trial_skipped(t.run_name, reason)

    schedule = Schedule(trials, teacher_artifacts, payload, on_skip)
    callback = SweepCallback(schedule, runs, progress, outcomes, tune_run.max_retries + 1, poll)
    fit_trials(trials, runs, outcomes, DependencySearcher(schedule), None, callback, tune_run)
    if interrupted(trials, outcomes, tune_run.should_stop):
        raise KeyboardInterrupt  # stop the sweep here
    return outcomes


def fit_trials(trials, runs: TrialRuns, outcomes: dict[str, Outcome], search_alg, scheduler, callback, tune_run: TuneRun) -> None:
    """One Tune run of `train_trial` trials that `search_alg` hands out, `callback` tracks and
    `scheduler` (None: first in, first out) may stop early. Trials in flight when it stops (Ctrl-C,
    `should_stop`) end KILLED; the next sweep continues them from their saved state. The tracking URI
    reaches the trials through Ray's object store (`tune.with_parameters`), not their persisted config."""
    from ray import tune

    cpu, gpu = tune_run.resources.get("cpu", 1), tune_run.resources.get("gpu", 0)
    slots = max(1, cluster_slots(cpu, gpu))
    if tune_run.max_concurrent is not None:
        slots = max(1, min(slots, tune_run.max_concurrent))
    own_storage = tune_run.storage_path is None
    storage = tune_run.storage_path or tempfile.mkdtemp(prefix="ltkd-tune-")
    if own_storage:
        leftovers.record(tune_dir=storage)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, tracking_uri=tune_run.tracking_uri), {"cpu": cpu, "gpu": gpu}),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=-1, reuse_actors=True,
                                    max_concurrent_trials=slots),
        run_config=tune.RunConfig(
            name=tune_run.name, storage_path=storage, callbacks=[callback], verbose=0, stop=OutageStopper(tune_run.should_stop),
            failure_config=tune.FailureConfig(max_failures=tune_run.max_retries),
        ),
    )
    # Tune logs its own summary of failed trials and missing result files (its file loggers are off);
    # the callback already reports each trial, so keep the console to our lines.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        tuner.fit()
    finally:
        # Tune stops the trials in flight on Ctrl-C or a stop without telling the callbacks: their
        # runs end KILLED here, and the next sweep continues them from their saved state.
        for t in trials:
            if t.config_hash in runs.key_of and t.config_hash not in outcomes:
                runs.ended(t, "KILLED", "stopped with the sweep")
                outcomes[t.config_hash] = Outcome(t, "KILLED", error="stopped with the sweep")
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)


def interrupted(trials, outcomes: dict[str, Outcome], should_stop: Callable[[], bool]) -> bool:
    """Whether the Tune run ended before every trial had an outcome (Tune caught Ctrl-C and
    returned), rather than because `should_stop` asked it to."""
    return (len(outcomes) < len(trials) or any(o.status == "KILLED" for o in outcomes.values())) and not should_stop()
