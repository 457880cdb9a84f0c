"""`ltkd search` and `ltkd best`: Optuna proposes a distillation method's hyperparameters, Ray Tune runs
the trials (ASHA stops the weak ones early), MLflow tracks them nested under one parent run per search.

A study's `search:` block (`orchestrator.study.SearchSpec`) names the method, the space, the budget per
(teacher-student pair, γ), the validation metric, Optuna's sampler and the pruner. Each (pair, γ) is one
search: one Optuna study (ask/tell, kept in an Optuna storage beside the tracking store) and one Tune
run. A search trial holds a balanced validation split out of the training set before the long-tailed
cut (`TrialConfig.validation_per_class`) and evaluates on it only: it reports `val_acc_*`, never reads
the test set, and nothing here reads or prints a test metric. Teachers are the study's own teacher
trials (trained by the sweep first when missing), so the grid trials of the same study share them.

Resume: a search stopped midway (Ctrl-C, a lost driver) leaves its unfinished Optuna trials RUNNING;
the next `ltkd search` hands those out again first, with the same number and point, so they continue
from their saved state and their MLflow runs, and asks Optuna for new points only up to the budget.
Finished, pruned and failed trials count toward the budget and are never run again: a search whose
budget is spent does nothing.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import RunFailure, UserError, describe
from orchestrator.study import (FROM_SEARCH, PairSpec, RangeSpec, StudySpec, Trial, config_hash, expand, full_params,
                                load_study)
from orchestrator.tracking import CELL_TAG, FINISHED, PRUNED, NOTE_TAG, Tracker, check_reachable, git_commit, resolve_tracking_uri
from orchestrator.errors import redact_credentials
from trainer.config import TrialConfig
from trainer.methods import METHODS
from trainer.recipes import resolve_recipe

SEARCH_KEY_TAG = "ltkd.search_key"  # the parent run of a search, and its trials, carry the search's key
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names


# ---------------------------------------------------------------------------------------------
# What is searched


@dataclass(frozen=True)
class Target:
    """One search: the study's method over one (teacher-student pair, γ)."""

    pair: PairSpec
    gamma: float
    teacher: Trial  # the study's teacher trial for this pair, γ and the search's seed
    base: TrialConfig  # a search trial's config before the searched values are filled in
    key: str  # identity of the search: base config, teacher, space, sampler, pruner, metric (not the budget)

    @property
    def label(self) -> str:
        return f"{self.base.method} {self.pair.teacher}>{self.pair.student} g{self.gamma:g}"


def fixed_params(study: StudySpec) -> dict[str, Any]:
    """The method's values the study fixes (methods.<m>) and the search does not vary."""
    search = study.search
    given = study.methods.get(search.method, {})
    out = {}
    for key, value in given.items():
        if key in search.space or key == FROM_SEARCH:
            continue
        out[key] = value[0] if isinstance(value, list) else value
    return out


def targets(study: StudySpec, trials: list[Trial] | None = None) -> list[Target]:
    """The study's searches, in the order of its pairs and γ values."""
    search = study.search
    if search is None:
        raise UserError("the study has no search: block (method, space, trials, metric, sampler, pruner)")
    trials = trials if trials is not None else expand(study)
    seed = search.seed if search.seed is not None else study.seeds[0]
    spec_blob = search.model_dump(exclude={"trials"}, mode="json")
    out = []
    for gamma in study.dataset.gammas:
        for pair in study.pairs:
            teacher = _teacher_trial(study, trials, pair, gamma, seed)
            recipe = resolve_recipe(study.recipe.preset, {**study.recipe.overrides(), "eval_every": 1}, student=pair.student)
            params = full_params(study, search.method, fixed_params(study), pair.teacher, pair.student)
            base = replace(teacher.config, role="distill", model=pair.student, teacher=pair.teacher, seed=seed, method=search.method,
                           method_params=params, recipe=recipe, validation_per_class=search.validation_per_class)
            blob = json.dumps({"base": base.identity(), "teacher": teacher.config_hash, "search": spec_blob}, sort_keys=True)
            out.append(Target(pair, float(gamma), teacher, base, hashlib.sha256(blob.encode()).hexdigest()[:16]))
    return out


def _teacher_trial(study: StudySpec, trials: list[Trial], pair: PairSpec, gamma: float, seed: int) -> Trial:
    for t in trials:
        c = t.config
        if t.role == "teacher" and c.model == pair.teacher and c.gamma == gamma and c.seed == seed:
            return t
    raise UserError(f"search.seed = {seed}: the study has no teacher trial for it; use one of its seeds {study.seeds}")


def distributions(study: StudySpec) -> dict[str, Any]:
    """Optuna's distribution for each dimension of the space (an int hyperparameter's range is an integer range)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    declared = METHODS[study.search.method].params
    out: dict[str, Any] = {}
    for key, dim in study.search.space.items():
        if isinstance(dim, RangeSpec):
            if isinstance(declared[key], int) and not isinstance(declared[key], bool):
                out[key] = IntDistribution(int(math.ceil(dim.low)), int(math.floor(dim.high)), log=dim.log)
            else:
                out[key] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
        else:
            out[key] = CategoricalDistribution(list(dim))
    return out


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        # constant_liar: trials running in parallel are not proposed the same point
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CMA-ES sampler needs it
        except ImportError:
            raise UserError("search.sampler = 'cmaes': Optuna's CMA-ES sampler needs the cmaes package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise UserError(f"search.sampler = {name!r}: allowed: tpe, random, gp, qmc, cmaes")


def optuna_storage_uri(tracking_uri: str, given: str | None) -> str:
    """Where Optuna keeps the searches: `given`, else a SQLite file beside a SQLite tracking store
    (mlflow.db -> mlflow-optuna.db), else one per tracking store in ~/.cache/ltkd/optuna. Not the
    tracking database itself: MLflow and Optuna would both migrate its `alembic_version` table."""
    if given:
        return given
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).expanduser()
        return f"sqlite:///{path.with_name(path.stem + '-optuna.db')}"
    folder = Path.home() / ".cache" / "ltkd" / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (hashlib.sha256(tracking_uri.encode()).hexdigest()[:12] + '.db')}"


# What a database says when another process created Optuna's schema between our check and our CREATE
# (SQLite: "table ... already exists"; its alembic row: "UNIQUE constraint failed"; PostgreSQL: "duplicate key").
_SCHEMA_RACE = ("already exists", "unique constraint", "duplicate key")


def optuna_rdb_storage(storage_uri: str, attempts: int = 5):
    """Optuna's RDBStorage on `storage_uri`. Its constructor creates the schema when the database has
    none, without a lock: two processes opening a fresh database at once (a search and `ltkd best`, or
    anything polling it) can both try, and the loser fails. Its next attempt finds the schema made."""
    import optuna

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage_uri)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors, told apart by their words
            if attempt == attempts - 1 or not any(words in str(exc).lower() for words in _SCHEMA_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_optuna_study(storage_uri: str, target: Target, study: StudySpec):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = target.base.seed
    try:
        storage = optuna_rdb_storage(storage_uri)
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable database: the user's option
        raise UserError(f"--optuna-storage {storage_uri}: cannot use it ({describe(exc)})") from None
    ostudy = optuna.create_study(storage=storage, study_name=f"{study.name} | {target.label} | {target.key}",
                                 sampler=make_sampler(study.search.sampler, seed), direction="maximize", load_if_exists=True)
    ostudy.set_user_attr("metric", study.search.metric)
    return ostudy


def search_trial(target: Target, number: int, params: dict[str, Any], study: StudySpec) -> Trial:
    """The ltkd trial of Optuna's trial `number`: the base config with the proposed values. Its key
    is unique per (search, number), so two trials that propose one point stay two runs."""
    method = target.base.method
    point = {**fixed_params(study), **params}
    cfg = replace(target.base, method_params=full_params(study, method, point, target.pair.teacher, target.pair.student))
    ident = config_hash(cfg, target.teacher.config_hash)
    key = hashlib.sha256(f"{ident}:{target.key}:{number}".encode()).hexdigest()[:16]
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    label = f"{METHODS[method].display or method} #{number} ({shown})"  # the run's name starts with it
    return Trial(cfg, key, target.teacher.config_hash, label, f"search {target.label} #{number}")


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
    asked: int = 0  # new points asked in this run

    @property
    def ended_before(self) -> int:
        return self.before.complete + self.before.pruned + self.before.failed

    def progress(self) -> int:
        return self.ended_before + self.before.running + self.asked

    def can_ask(self) -> bool:
        return self.progress() < self.budget


def make_searcher(searches: list[Running], dists: dict[str, Any], make_trial: Callable[[Running, int, dict], Trial],
                  payload: Callable[[Trial], dict], metric: str):
    from ray.tune.search import Searcher

    class OptunaAskSearcher(Searcher):
        """Hands Tune the trials Optuna proposes (ask) for each search, after the unfinished ones of a
        stopped search; new points go to the search that is least far along, so all progress together."""

        def __init__(self):
            super().__init__(metric=metric, mode="max")
            self.by_trial_id: dict[str, Trial] = {}
            self.search_of: dict[str, Running] = {}
            self.optuna_id: dict[str, int] = {}  # Tune trial id -> Optuna's storage id
            self.number: dict[str, int] = {}
            self.reported: dict[str, set[int]] = {}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str):
            stale = next((s for s in searches if s.stale), None)
            if stale is not None:
                search, frozen = stale, stale.stale.pop(0)
                number, params, optuna_id = frozen.number, dict(frozen.params), frozen._trial_id
                self.reported[trial_id] = set(frozen.intermediate_values)
            else:
                open_ = [s for s in searches if s.can_ask()]
                if not open_:
                    return Searcher.FINISHED
                search = min(open_, key=lambda s: s.progress() / s.budget)
                asked = search.ostudy.ask(dists)
                search.asked += 1
                number, params, optuna_id = asked.number, dict(asked.params), asked._trial_id
                self.reported[trial_id] = set()
            t = make_trial(search, number, params)
            self.by_trial_id[trial_id] = t
            self.search_of[trial_id] = search
            self.optuna_id[trial_id] = optuna_id
            self.number[trial_id] = number
            return {"payload": payload(t)}

        def report(self, trial_id: str, result: dict) -> None:
            """The learning curve on the validation metric, for Optuna's plots (called by the callback:
            Tune does not pass the searcher the result on which its scheduler stopped a trial)."""
            if metric in result and "epoch" in result and trial_id in self.optuna_id:
                step = int(result["epoch"])
                if step not in self.reported[trial_id]:
                    self.reported[trial_id].add(step)
                    self.search_of[trial_id].ostudy._storage.set_trial_intermediate_value(
                        self.optuna_id[trial_id], step, float(result[metric]))

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # see report

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            pass  # the callback tells Optuna: it knows whether ASHA stopped the trial

        def tell(self, trial_id: str, state: str, value: float | None = None) -> None:
            import optuna

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

    return OptunaAskSearcher()


def make_asha(metric: str, epochs: int, grace_period: int, reduction_factor: int):
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    class RecordingASHA(AsyncHyperBandScheduler):
        """Ray Tune's ASHA on the validation metric, which remembers the trials it stopped (those are
        Optuna's PRUNED trials) and never stops one at its last epoch (that trial has finished)."""

        def __init__(self):
            super().__init__(time_attr="epoch", metric=metric, mode="max", max_t=epochs, grace_period=grace_period,
                             reduction_factor=reduction_factor, stop_last_trials=False)
            self.stopped: dict[str, int] = {}  # Tune trial id -> the epoch it was stopped after

        def on_trial_result(self, tune_controller, trial, result):
            if int(result.get("epoch", 0)) >= epochs:
                return TrialScheduler.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP:
                self.stopped[trial.trial_id] = int(result.get("epoch", 0))
            return action

    return RecordingASHA()


def make_routing_asha(searches: list[Running], metric: str, grace_period: int, reduction_factor: int,
                      key_of: Callable[[Any], str]):
    """One ASHA per search inside one Tune run: a trial is compared only with the trials of its own
    (pair, γ), whose accuracies are on its own scale. `key_of(tune_trial)` names its search."""
    from ray.tune.schedulers import FIFOScheduler

    class PerSearchASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.subs = {s.target.key: make_asha(metric, s.target.base.recipe.epochs, grace_period, reduction_factor)
                         for s in searches}

        @property
        def stopped(self) -> dict[str, int]:
            return {k: v for sub in self.subs.values() for k, v in sub.stopped.items()}

        def _sub(self, trial):
            return self.subs[key_of(trial)]

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

    return PerSearchASHA()


class _SearchSchedule:
    """What SweepCallback asks of a schedule, for a search: trials by Tune id, no dependencies."""

    def __init__(self, searcher):
        self.by_trial_id = searcher.by_trial_id

    def trial_failed(self, trial) -> None:
        pass

    def teacher_done(self, trial, checkpoint) -> None:
        pass


def make_callback(searcher, asha, runs, progress, outcomes, max_attempts: int, poll, metric: str, numbers: dict[str, int],
                  cell_of: Callable[[str], str]):
    from orchestrator.execution.trainable import ERROR_KEY, FINAL_KEY
    from orchestrator.execution.schedule import Outcome, SweepCallback

    class SearchCallback(SweepCallback):
        """SweepCallback's tracking, plus the outcome told to Optuna: COMPLETE with the final
        validation metric, PRUNED (the run ends KILLED, tagged pruned) or FAIL."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            super().on_trial_result(iteration, trials, trial, result, **info)
            searcher.report(trial.trial_id, result)

        def on_trial_start(self, iteration, trials, trial, **info):
            super().on_trial_start(iteration, trials, trial, **info)
            t = self._trial(trial)
            if t is not None:
                # The study's runs view groups by cell: a search's trials (and its parent) form one group.
                self.runs.set_tags(t, {"search_trial": numbers[t.config_hash], CELL_TAG: cell_of(t.config_hash)})

        def on_trial_complete(self, iteration, trials, trial, **info):
            t = self._trial(trial)
            if t is None:
                return
            stopped_after = asha.stopped.get(trial.trial_id) if asha is not None else None
            final = self.final.get(trial.trial_id)
            if final is None and stopped_after is not None and trial.trial_id not in self.errors:
                self.runs.set_tags(t, {"pruned": "true", "pruned_after_epoch": stopped_after,
                                       NOTE_TAG: f"Pruned by ASHA after epoch {stopped_after} of {t.config.recipe.epochs}."})
                self.runs.ended(t, "KILLED")
                searcher.tell(trial.trial_id, PRUNED)
                self._record(Outcome(t, PRUNED), f"pruned by ASHA after epoch {stopped_after}")
                return
            value = final.get(metric) if final is not None and ERROR_KEY not in final and FINAL_KEY in final else None
            super().on_trial_complete(iteration, trials, trial, **info)
            searcher.tell(trial.trial_id, FINISHED if value is not None else "FAIL", value)

        def on_trial_error(self, iteration, trials, trial, **info):
            super().on_trial_error(iteration, trials, trial, **info)
            searcher.tell(trial.trial_id, "FAIL")

    return SearchCallback(_SearchSchedule(searcher), runs, progress, outcomes, max_attempts, poll)


# ---------------------------------------------------------------------------------------------
# The parent run: the search's summary, best point and Optuna's plots


def parent_run(tracker: Tracker, exp_id: str, study: StudySpec, target: Target, budget: int) -> tuple[str, bool]:
    """The search's parent run (created on first use, RUNNING again when continued), and whether it
    had already FINISHED (its budget spent and summarised)."""
    run = find_parent(tracker, exp_id, target.key)
    if run is not None:
        if run.info.status == FINISHED and _budget_of(run) >= budget:
            return run.info.run_id, True
        tracker.reopen_run(run.info.run_id, {"budget": str(budget)})
        return run.info.run_id, False
    search = study.search
    params = {"dataset": target.base.dataset, "gamma": target.gamma, "role": "search", "method": search.method,
              "teacher": target.pair.teacher, "student": target.pair.student, "seed": target.base.seed,
              "epochs": target.base.recipe.epochs, "metric": search.metric, "sampler": search.sampler, "pruner": search.pruner,
              "validation_per_class": search.validation_per_class,
              "space": json.dumps(search.model_dump(mode="json")["space"], sort_keys=True),
              **({"grace_period": search.grace_period, "reduction_factor": search.reduction_factor} if search.pruner == "asha" else {}),
              **{f"fixed.{k}": v for k, v in fixed_params(study).items()}}
    tags = {"study": study.name, "role": "search", SEARCH_KEY_TAG: target.key, "teacher_hash": target.teacher.config_hash,
            CELL_TAG: search_cell(target),
            "git_commit": git_commit(), "budget": str(budget),
            NOTE_TAG: (f"Optuna search ({search.sampler}, {'ASHA' if search.pruner == 'asha' else 'no pruning'}) of "
                       f"{search.method}'s {', '.join(search.space)} for {target.pair.teacher}→{target.pair.student} at γ = "
                       f"{target.gamma:g}: {budget} trials, maximising {search.metric} on a balanced validation split "
                       f"({search.validation_per_class} images per class held out of the training set). Trials are "
                       "nested below; pruned ones end KILLED and carry the tag pruned = true.")}
    return tracker.create_run(exp_id, f"search {target.label}", params, tags), False


def find_parent(tracker: Tracker, exp_id: str, key: str):
    """The parent run (an MLflow Run) of the search `key`, or None; its trials carry the key too, with role distill."""
    from orchestrator.tracking import filter_literal

    found = tracker.client.search_runs([exp_id], f"tags.`{SEARCH_KEY_TAG}` = {filter_literal(key)} and tags.role = 'search'",
                                       max_results=1)
    return found[0] if found else None


def search_cell(target: Target) -> str:
    """The `cell` tag of a search's parent and trials (the UI's group), e.g. "search LTKD w32>w8 γ10"."""
    from orchestrator.tracking import short_model

    method = METHODS[target.base.method].display or target.base.method
    return f"search {method} {short_model(target.pair.teacher)}>{short_model(target.pair.student)} γ{target.gamma:g}"


def _budget_of(run) -> int:
    try:
        return int(run.data.tags.get("budget", "0"))
    except ValueError:
        return 0


@dataclass
class SearchSummary:
    complete: int
    pruned: int
    failed: int
    running: int
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None


def summarise(ostudy) -> SearchSummary:
    import optuna

    S = optuna.trial.TrialState
    trials = ostudy.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == S.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return SearchSummary(len(complete), sum(t.state == S.PRUNED for t in trials), sum(t.state == S.FAIL for t in trials),
                         sum(t.state == S.RUNNING for t in trials), best.value if best else None,
                         dict(best.params) if best else {}, best.number if best else None)


def log_summary(tracker: Tracker, run_id: str, ostudy, summary: SearchSummary, metric: str, best_run: str | None) -> None:
    """Best point and score, trial counts and Optuna's plots on the parent run."""
    metrics = {"trials_complete": summary.complete, "trials_pruned": summary.pruned, "trials_failed": summary.failed}
    if summary.best_value is not None:
        metrics[f"best_{metric}"] = summary.best_value
    tracker.log_metrics(run_id, metrics, step=summary.complete + summary.pruned + summary.failed)
    tags = {"best_params": json.dumps(summary.best_params, sort_keys=True), "best_trial": str(summary.best_number)}
    tags.update({f"best.{k}": str(v) for k, v in summary.best_params.items()})
    if best_run:
        tags["best_run_id"] = best_run
    tracker.set_tags(run_id, tags)
    tracker.log_json(run_id, {"metric": metric, "best_value": summary.best_value, "best_params": summary.best_params,
                              "best_trial": summary.best_number, "best_run_id": best_run,
                              "complete": summary.complete, "pruned": summary.pruned, "failed": summary.failed},
                     "search/best.json")
    for name, png in optuna_plots(ostudy).items():
        tracker.log_png(run_id, png, f"search/{name}.png")


def optuna_plots(ostudy) -> dict[str, bytes]:
    """Optuna's optimisation history, parameter importances and parallel coordinates (matplotlib), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = {}
    plots = {"optimization_history": ovm.plot_optimization_history, "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = plot(ostudy)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # too few completed trials for this plot (importances need two and a varying value)
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


# ---------------------------------------------------------------------------------------------
# `ltkd search`


def run_search(study_path: str, tracking_uri: str | None, address: str | None, storage: str | None,
               optuna_storage: str | None = None, out=None, outage_limit_s: float = 30 * 60.0) -> int:
    from orchestrator.execution import leftovers
    from orchestrator.sweep import run_sweep, spool_folder, start_ray
    from orchestrator.tracking import Lease

    out = out or sys.stdout
    study = load_study(study_path, search_results_needed=False)
    if study.search is None:
        raise UserError(f"{study_path}: the study has no search: block; add one (method, space, trials, metric, sampler, "
                        "pruner) or run its grid with `ltkd sweep`")
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    trials = expand(study)
    chosen = targets(study, trials)
    ostorage = optuna_storage_uri(uri, optuna_storage)
    search = study.search
    make_sampler(search.sampler, 0)  # a sampler whose package is missing: refused before anything runs
    for target in chosen:
        if search.pruner == "asha" and search.grace_period >= target.base.recipe.epochs:
            raise UserError(f"search.grace_period = {search.grace_period}: the trials run {target.base.recipe.epochs} epochs; "
                            "ASHA can stop a trial only after its grace period: lower it, or use pruner: none")
    # The teachers first, through the sweep (they are the study's own teacher trials, shared with its grid).
    teachers = {t.teacher.config_hash for t in chosen}
    run_sweep(study_path, tracking_uri, address, False, storage, out=out, outage_limit_s=outage_limit_s, only=teachers,
              tables_every_s=0)
    from orchestrator.tables.plots import run_per_class_png

    tracker = Tracker(uri, draw_per_class=run_per_class_png)
    exp_id = tracker.experiment_id(study.name, create=True)
    done = tracker.final_metrics_by_hash(exp_id, keys=[])
    missing = [t.teacher.run_name for t in chosen if t.teacher.config_hash not in done]
    if missing:
        raise RunFailure(f"no FINISHED teacher for {', '.join(missing)}; rerun `ltkd search` to train it again")
    lease = Lease(tracker, exp_id, study.name)
    lease.claim()
    try:
        lease.confirm()
        print(f"search {study.name}: {len(chosen)} search(es) of {search.method} ({search.sampler}, "
              f"{'ASHA' if search.pruner == 'asha' else 'no pruning'}), {search.trials} trials each, maximising "
              f"{search.metric}; optuna storage {ostorage}", file=out, flush=True)
        ray_ready = [False]

        def ensure_ray() -> None:  # only when a search has trials to run (joined already if the sweep ran teachers)
            if not ray_ready[0]:
                for line in leftovers.clean_after_killed_sweeps():
                    print(line, file=out, flush=True)
                start_ray(address, study.resources.cpu, study.resources.gpu, 0.0, out)
                ray_ready[0] = True

        failures = _search_all(study, study_path, chosen, tracker, exp_id, uri, ostorage, storage,
                               spool_folder(storage, uri, study.name, exp_id), done, out, outage_limit_s, ensure_ray, lease)
    finally:
        lease.release()
        leftovers.forget()
    from orchestrator.sweep import browse_hint

    print(browse_hint(uri, study.name, exp_id) + " (each search is a parent run; expand it for its trials)", file=out)
    print(f"best points: ltkd best {study_path}" + (f" --tracking-uri {redact_credentials(uri)}" if tracking_uri else ""), file=out)
    if failures:
        raise RunFailure(f"{failures} search trial(s) failed (their errors are on their runs); rerun to fill the budget "
                         "only if you raised it: failed trials count toward it")
    return 0


def _search_all(study: StudySpec, study_path: str, chosen: list[Target], tracker: Tracker, exp_id: str, uri: str, ostorage: str,
                storage: str | None, spool: str, done: dict, out, outage_limit_s: float, ensure_ray: Callable[[], None],
                lease) -> int:
    """The study's (pair, γ) searches that have trials left, in one Tune run (each with its own Optuna
    study, ASHA and parent run); returns how many of their trials failed in this run."""
    from orchestrator.execution.progress import SweepProgress
    from orchestrator.execution.trainable import default_resume_root
    from orchestrator.execution.run import fit_trials, interrupted, trial_payload
    from orchestrator.sweep import leased_writer
    from orchestrator.tracking import ResumableRun, TrialRuns

    search = study.search
    searches: list[Running] = []
    for target in chosen:
        ostudy = open_optuna_study(ostorage, target, study)
        before = summarise(ostudy)
        ended = before.complete + before.pruned + before.failed
        parent, finished = parent_run(tracker, exp_id, study, target, search.trials)
        if finished or (ended >= search.trials and not before.running):
            if not finished:
                log_summary(tracker, parent, ostudy, before, search.metric, _run_of_number(tracker, exp_id, target, before.best_number))
                tracker.end_run(parent, FINISHED)
            print(f"search {target.label}: done ({_counts(before)}); best {search.metric} {_value(before.best_value)} at "
                  f"{_point(before.best_params)}", file=out, flush=True)
            continue
        stale = [t for t in ostudy.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        searches.append(Running(target, ostudy, parent, search.trials, before, stale))
        print(f"search {target.label}: {search.trials - ended} trial(s) to run ({ended} ended before"
              + (f", {before.running} to continue" if before.running else "") + f"); parent run {parent}", file=out, flush=True)
    if not searches:
        return 0

    ensure_ray()
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    resume_root = default_resume_root(storage)
    made: list[Trial] = []  # grows as Optuna proposes: fit_trials closes those still running when it stops
    numbers: dict[str, int] = {}
    search_of: dict[str, Running] = {}  # trial key -> its search

    def make_trial(run: Running, number: int, params: dict) -> Trial:
        t = search_trial(run.target, number, params, study)
        made.append(t)
        numbers[t.config_hash] = number
        search_of[t.config_hash] = run
        return t

    def payload(t: Trial) -> dict:
        teacher = search_of[t.config_hash].target.teacher.config_hash
        source = {"teacher_artifact": done[teacher].artifact_uri + "/checkpoint", "teacher_hash": teacher}
        return trial_payload(t, source, uri, resources, resume_root, keep_checkpoint=False)

    # Runs of the trials that a stopped search left RUNNING or KILLED (not pruned) are continued.
    states = tracker.run_states(exp_id)
    stale_keys = {search_trial(r.target, t.number, dict(t.params), study).config_hash for r in searches for t in r.stale}
    resumable = {h: ResumableRun(st.run_id, st.last_epoch, st.attempts) for h, st in states.items()
                 if h in stale_keys and st.status in ("RUNNING", "KILLED")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # epoch reports without the metric (final, errors)
    notes: list[str] = []
    # Under the study's lease, as the sweep's: a search that lost it (paused past its expiry while
    # another took the study over) writes nothing more and stops its trials.
    writer = leased_writer(tracker, uri, spool, spool, lease, notes.append)

    def outage_exceeded() -> bool:
        down = writer.down_since
        return writer.fenced is not None or (down is not None and time.time() - down > outage_limit_s)

    base_tags = {"study": study.name, "git_commit": git_commit(), "study_file": str(Path(study_path))}
    runs = TrialRuns(writer, exp_id, base_tags, resumable,
                     tags_of=lambda t: {PARENT_TAG: search_of[t.config_hash].parent, SEARCH_KEY_TAG: search_of[t.config_hash].target.key})
    progress = SweepProgress(sum(r.budget - r.ended_before for r in searches), out=out)
    searcher = make_searcher(searches, distributions(study), make_trial, payload, search.metric)
    scheduler = None
    if search.pruner == "asha":
        scheduler = make_routing_asha(searches, search.metric, search.grace_period, search.reduction_factor,
                                      key_of=lambda trial: search_of[trial.config["payload"]["config_hash"]].target.key)
    outcomes: dict = {}
    callback = make_callback(searcher, scheduler, runs, progress, outcomes, study.resources.max_retries + 1, None, search.metric,
                             numbers, lambda key: search_cell(search_of[key].target))
    started = time.time()
    stopped = False
    try:
        fit_trials(made, runs, outcomes, searcher, scheduler, callback, resources, study.resources.max_retries, storage,
                   f"{study.name}-search", outage_exceeded, max_concurrent=sum(r.budget for r in searches), tracking_uri=uri)
        stopped = interrupted(made, outcomes, outage_exceeded)
    finally:
        progress.close()
        writer.flush(timeout=60)
        writer.close()
    for note in notes:
        print(note, file=out)
    if writer.fenced is not None:
        raise RunFailure(writer.fenced)
    for r in searches:
        summary = summarise(r.ostudy)
        log_summary(tracker, r.parent, r.ostudy, summary, search.metric, _run_of_number(tracker, exp_id, r.target, summary.best_number))
        complete = summary.complete + summary.pruned + summary.failed >= r.budget and not summary.running
        tracker.end_run(r.parent, FINISHED if complete else "KILLED")
        print(f"search {r.target.label}: {_counts(summary)} ({time.time() - started:.0f} s for the searches of this run); "
              f"best {search.metric} {_value(summary.best_value)} at {_point(summary.best_params)}", file=out, flush=True)
    if stopped or outage_exceeded():
        raise KeyboardInterrupt
    return sum(1 for o in outcomes.values() if o.status == "FAILED")


def _run_of_number(tracker: Tracker, exp_id: str, target: Target, number: int | None) -> str | None:
    if number is None:
        return None
    from orchestrator.tracking import filter_literal

    found = tracker.client.search_runs([exp_id], f"tags.`{SEARCH_KEY_TAG}` = {filter_literal(target.key)} and "
                                                 f"tags.search_trial = {filter_literal(str(number))}", max_results=1)
    return found[0].info.run_id if found else None


def _counts(s: SearchSummary) -> str:
    return f"{s.complete} complete, {s.pruned} pruned, {s.failed} failed"


def _value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _point(params: dict[str, Any]) -> str:
    if not params:
        return "(no completed trial)"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------
# `ltkd best`


def best_points(study_path: str, tracking_uri: str | None, out_file: str | None, out=None) -> int:
    """Print the best point of each of the study's searches (from their parent runs) and write the
    file a grid study names with `methods: {<method>: {from_search: <this study's name>}}`."""
    from orchestrator.paths import write_text

    out = out or sys.stdout
    study = load_study(study_path, search_results_needed=False)
    if study.search is None:
        raise UserError(f"{study_path}: the study has no search: block; `ltkd best` reads the searches of a study that has one")
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    from orchestrator.sweep import store_exists

    if not store_exists(uri):  # reading creates nothing
        raise UserError(f"{study_path}: no search of this study has a completed trial in {uri} (no store there); "
                        f"run `ltkd search {study_path}` first")
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(study.name, create=False)
    metric = study.search.metric
    points, missing = [], []
    for target in targets(study):
        run = find_parent(tracker, exp_id, target.key) if exp_id is not None else None
        best = json.loads(run.data.tags.get("best_params", "{}")) if run else {}
        if not best:
            missing.append(target.label)
            continue
        value = run.data.metrics.get(f"best_{metric}")
        counts = {k: int(run.data.metrics.get(f"trials_{k}", 0)) for k in ("complete", "pruned", "failed")}
        points.append({"teacher": target.pair.teacher, "student": target.pair.student, "gamma": target.gamma,
                       "params": best, metric: value, "trials": counts, "status": run.info.status, "parent_run_id": run.info.run_id})
        print(f"{target.label}: {metric} {_value(value)} at {_point(best)} ({counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed; {run.info.status.lower()})", file=out)
    if not points:
        raise UserError(f"{study_path}: no search of this study has a completed trial in {uri}; run `ltkd search {study_path}` first")
    target_file = Path(out_file) if out_file else Path(study_path).with_name(f"{study.name}.best.yaml")
    body = {"search": study.name, "method": study.search.method, "metric": metric, "tracking_uri": redact_credentials(uri),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"), "points": points}
    header = (f"# Written by `ltkd best`: the best {study.search.method} hyperparameters of study {study.name!r} per pair and γ, "
              f"chosen on {metric}\n# (a balanced validation split; no test metric was read). A grid study takes them with\n"
              f"#   methods: {{{study.search.method}: {{from_search: {study.name}}}}}\n")
    write_text(target_file, header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    if missing:
        print(f"no completed trial yet: {', '.join(missing)}", file=out)
    print(f"wrote {target_file}", file=out)
    return 0
