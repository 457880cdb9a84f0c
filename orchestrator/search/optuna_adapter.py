"""The Optuna side: the space as its distributions, the sampler, the storage beside the tracking store, a study per search and its summary and plots."""
from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.errors import UserError, describe
from orchestrator.study import RangeSpec, StudySpec
from trainer.methods import METHODS
from orchestrator.search.space import Target


def distributions(study: StudySpec) -> dict[str, Any]:
    """Optuna's distribution for each dimension of the space (an int hyperparameter's range is an integer range)."""
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
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage_uri)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors, told apart by their words
            if attempt == attempts - 1 or not any(words in str(exc).lower() for words in _SCHEMA_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class LearningCurve:
    """Writes a search trial's validation curve into Optuna's storage, for its plots, by the trial's
    number. Through the storage's public API: `optuna.Trial.report` needs the live Trial object, which a
    trial handed out again after a stopped search (a FrozenTrial) does not have."""

    def __init__(self, storage, study_name: str):
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)

    def report(self, number: int, step: int, value: float) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_intermediate_value(trial_id, step, value)


def open_optuna_study(storage_uri: str, target: Target, study: StudySpec) -> tuple[optuna.Study, LearningCurve]:
    """The search's Optuna study (created on first use), and where its trials' curves go."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = target.base.seed
    try:
        storage = optuna_rdb_storage(storage_uri)
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable database: the user's option
        raise UserError(f"--optuna-storage {storage_uri}: cannot use it ({describe(exc)})") from None
    ostudy = optuna.create_study(storage=storage, study_name=f"{study.name} | {target.label} | {target.key}",
                                 sampler=make_sampler(study.search.sampler, seed), direction="maximize", load_if_exists=True)
    ostudy.set_user_attr("metric", study.search.metric)
    return ostudy, LearningCurve(storage, ostudy.study_name)




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
    S = optuna.trial.TrialState
    trials = ostudy.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == S.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return SearchSummary(len(complete), sum(t.state == S.PRUNED for t in trials), sum(t.state == S.FAIL for t in trials),
                         sum(t.state == S.RUNNING for t in trials), best.value if best else None,
                         dict(best.params) if best else {}, best.number if best else None)



def optuna_figures(ostudy, metric: str) -> dict:
    """Optuna's optimisation history, parameter importances and parallel coordinates (matplotlib
    figures), their value axis named after the search's metric. Optuna's history shows completed
    trials only: the pruned ones are added at their last validation value, marked as pruned."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    out = {}
    plots = {"optimization_history": ovm.plot_optimization_history, "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = plot(ostudy, target_name=metric)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # too few completed trials for this plot (importances need two and a varying value)
        if name == "optimization_history":
            _add_pruned(ax, ostudy)
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        out[name] = fig
    return out


COMPLETED_LABEL = "completed"
PRUNED_LABEL = "pruned (last value before ASHA stopped it)"


def _add_pruned(ax, ostudy) -> None:
    pruned = [t for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)) if t.intermediate_values]
    if not pruned:
        return
    numbers = [t.number for t in pruned]
    values = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
    for points in ax.collections:  # Optuna labels the completed trials' points with the metric, as the axis
        if points.get_label() == ax.get_ylabel():
            points.set_label(COMPLETED_LABEL)
    ax.scatter(numbers, values, marker="x", color="tab:gray", zorder=3, label=PRUNED_LABEL)
    ax.legend(loc="best")


def optuna_plots(ostudy, metric: str) -> dict[str, bytes]:
    """`optuna_figures` as PNG."""
    figures = optuna_figures(ostudy, metric)
    import matplotlib.pyplot as plt

    out = {}
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out
