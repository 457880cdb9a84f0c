"""A search's parent run in MLflow: created or continued, its summary, best point and Optuna's plots."""
from __future__ import annotations

import json
from typing import Any


from orchestrator.study import StudySpec
from orchestrator.tracking import CELL_TAG, FINISHED, NOTE_TAG, Tracker, git_commit, short_model
from trainer.methods import METHODS
from orchestrator.search.optuna_adapter import SearchSummary, optuna_plots
from orchestrator.search.space import SEARCH_KEY_TAG, Target, fixed_params




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
                       "nested below, each with its outcome in the tag search_state (complete, pruned, failed); pruned ones end "
                       f"FINISHED with the tag pruned = true, grouped apart as '{search_cell(target, pruned=True)}'.")}
    return tracker.create_run(exp_id, f"search {target.label}", params, tags), False


def find_parent(tracker: Tracker, exp_id: str, key: str):
    """The parent run (an MLflow Run) of the search `key`, or None; its trials carry the key too, with role distill."""
    found = tracker.runs_tagged(exp_id, {SEARCH_KEY_TAG: key, "role": "search"})
    return found[0] if found else None


def search_cell(target: Target, pruned: bool = False) -> str:
    """The `cell` tag of a search's parent and trials (the UI's group), e.g. "search LTKD w32>w8 γ10";
    its pruned trials form a group of their own ("... γ10 pruned"), out of the mean of the completed."""
    method = METHODS[target.base.method].display or target.base.method
    cell = f"search {method} {short_model(target.pair.teacher)}>{short_model(target.pair.student)} γ{target.gamma:g}"
    return cell + " pruned" if pruned else cell


def _budget_of(run) -> int:
    try:
        return int(run.data.tags.get("budget", "0"))
    except ValueError:
        return 0





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
    for name, png in optuna_plots(ostudy, metric).items():
        tracker.log_png(run_id, png, f"search/{name}.png")




def run_of_number(tracker: Tracker, exp_id: str, target: Target, number: int | None) -> str | None:
    if number is None:
        return None
    found = tracker.runs_tagged(exp_id, {SEARCH_KEY_TAG: target.key, "search_trial": str(number)})
    return found[0].info.run_id if found else None


def counts_text(s: SearchSummary) -> str:
    return f"{s.complete} complete, {s.pruned} pruned, {s.failed} failed"


def value_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def point_text(params: dict[str, Any]) -> str:
    if not params:
        return "(no completed trial)"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
