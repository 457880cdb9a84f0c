"""The run layout: what a trial's run holds (its name, params, tags, metrics and artifacts), decided in one place."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any



# MLflow 3.17's UI picks its GenAI or model-training view from the `workflowType` URL parameter, else
# from the browser's own choice (localStorage `mlflow.workflowType_v1`, set by the sidebar's switch,
# "genai" until then); this tag only labels the experiment's kind. See `experiment_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
NOTE_TAG = "mlflow.note.content"  # an experiment's or a run's description in the UI (Markdown)
VIEW_STATE_KEY = "ltkd"  # the runs table's shared view, opened with ?viewStateShareKey=ltkd
VIEW_STATE_TAG = "mlflow.sharedViewState." + VIEW_STATE_KEY


def git_commit() -> str:
    """The commit of the ltkd source that runs, with '-dirty' when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"




PARAM_DIGITS = 12  # significant digits of a float param: 0.05 * 0.1 ** 2 reads 0.0005, as a study writes it


def _plain(value: Any) -> Any:
    """Numbers as a study writes them: a whole float is an int (γ 50, not 50.0), any other float
    to 12 significant digits (float noise such as 0.0005000000000000001 dropped; every value a
    study file can hold with fewer digits keeps its string)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{PARAM_DIGITS}g}")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def param_str(value: Any) -> str:
    """A param's string in MLflow: `50` for γ 50 (so `params.gamma = '50'` finds it), `0.5`, `true`
    stays `True`, lists and dicts as JSON. Only the string: a trial's identity (config_hash) is
    computed from the config itself."""
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)




# ---------------------------------------------------------------------------------------------
# The run layout: what a trial's run holds. The Ray adapter only moves events; every name of a
# param, tag, metric and artifact is decided here.

SCHEMA_METHOD_PARAMS = ("alpha", "beta", "n_groups", "temperature")
# plus loss_<term> per loss term, and system/<...> (CPU, memory, GPU: the UI's System metrics tab)
SPLIT_FILE = "long_tailed_split.json"
EPOCH_METRICS = ("loss", "lr", "acc_all", "acc_head", "acc_medium", "acc_tail",
                 # a search trial's accuracies, on its validation split (it has no acc_*)
                 "val_acc_all", "val_acc_head", "val_acc_medium", "val_acc_tail")
SYSTEM_PREFIX = "system/"
PER_CLASS_FILE = "per_class_accuracy.json"
BEST_PER_CLASS_FILE = "best_epoch_per_class_accuracy.json"
PER_CLASS_PLOT = "per_class_accuracy.png"  # distillation runs: the final per-class accuracy, drawn
# Every trial run: head / medium / tail / all accuracy per epoch on one figure, drawn from the run's
# metric history in the store (the run page charts each metric alone; this is the one to read).
GROUP_CURVES_PLOT = "group_accuracy.png"
CHECKPOINT_DIR = "checkpoint"  # what a student's teacher is fetched from (with its MANIFEST.json)
MODEL_DIR = "model"  # the final weights as an MLflow PyTorch model: mlflow.pytorch.load_model("runs:/ID/model")
CELL_TAG = "cell"  # one value per table cell (row, pair, γ): the UI's "Group by" puts its seeds together
TEACHER_RUN_TAG = "teacher_run_id"

# Model names shortened in run names so that method, pair, γ and seed fit the UI's Run Name column
# (190 px): resnet32x4 -> r32x4, wrn_40_2 -> wrn40_2, mobilenet_v2 -> mnv2, cnn_w32 -> w32.
_SHORT_MODELS = (("resnet", "r"), ("wrn_", "wrn"), ("mobilenet_v", "mnv"), ("shufflenet_v", "snv"), ("cnn_w", "w"))


def short_model(name: str) -> str:
    for prefix, short in _SHORT_MODELS:
        if name.startswith(prefix) and len(name) > len(prefix):
            return short + name[len(prefix):]
    return name


def _gamma(value: float) -> str:
    return "γ" + param_str(value)


def _who(trial) -> str:
    """The run's row and models: 'Teacher w32', 'Student w8', 'LTKD w32>w8'."""
    cfg = trial.config
    if cfg.role == "distill":
        return f"{trial.row} {short_model(cfg.teacher)}>{short_model(cfg.model)}"
    return f"{trial.row} {short_model(cfg.model)}"


def _run_name(who: str, gamma: float, seed: int) -> str:
    return f"{who} {_gamma(gamma)} s{seed}"


def run_name(trial) -> str:
    """Short and complete: 'LTKD w32>w8 γ50 s0', 'Teacher r32x4 γ100 s1'."""
    return _run_name(_who(trial), trial.config.gamma, trial.config.seed)


def cell_label(trial) -> str:
    """The table cell a run counts in, without the seed: 'LTKD w32>w8 γ50' (the `cell` tag)."""
    return f"{_who(trial)} {_gamma(trial.config.gamma)}"


def teacher_run_name(trial) -> str:
    """The run name of a distillation trial's teacher (same γ and seed)."""
    cfg = trial.config
    return _run_name(f"Teacher {short_model(cfg.teacher)}", cfg.gamma, cfg.seed)


def teacher_link_tags(experiment_id: str, teacher_run: str | None, teacher_hash: str, teacher_name: str) -> dict[str, str]:
    """The `teacher_run_id` tag and the run's description (Markdown) linking to the teacher's run page."""
    if teacher_run is None:
        return {NOTE_TAG: f"Distilled from teacher **{teacher_name}** (config_hash `{teacher_hash}`; its run was not found)."}
    return {TEACHER_RUN_TAG: teacher_run,
            NOTE_TAG: f"Distilled from teacher run [{teacher_name}](#/experiments/{experiment_id}/runs/{teacher_run}) "
                      f"(config_hash `{teacher_hash}`)."}


def system_sampler():
    """A function giving the trial's system metrics at each epoch (CPU, memory, GPU memory), named
    as MLflow's own system metrics so the UI's System metrics tab shows them. Cheap: a few
    microseconds of psutil and torch counters per epoch, no thread; {} where psutil is missing."""
    try:
        import psutil
    except ImportError:
        return lambda: {}
    proc = psutil.Process()
    proc.cpu_percent(None)  # the first call starts the interval

    def sample() -> dict[str, float]:
        out = {
            SYSTEM_PREFIX + "cpu_utilization_percentage": proc.cpu_percent(None),
            SYSTEM_PREFIX + "process_memory_rss_megabytes": proc.memory_info().rss / 2**20,
            SYSTEM_PREFIX + "system_memory_usage_percentage": psutil.virtual_memory().percent,
        }
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[SYSTEM_PREFIX + f"gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_reserved(i) / 2**20
                out[SYSTEM_PREFIX + f"gpu_{i}_max_memory_allocated_megabytes"] = torch.cuda.max_memory_allocated(i) / 2**20
        return out

    return sample


def split_digest(train_indices: list[int]) -> str:
    """The long-tailed split's fingerprint: sha256 of its sorted training indices (16 hex digits)."""
    import hashlib

    return hashlib.sha256(json.dumps(sorted(train_indices), separators=(",", ":")).encode()).hexdigest()[:16]


def dataset_input(trial, class_counts: list[int], digest: str) -> dict[str, Any]:
    """The training data of a run as `Tracker.log_input` logs it: the long-tailed split of the
    dataset at γ, named 'digits-LT γ50', with its digest and class counts."""
    cfg = trial.config
    return {
        "name": f"{cfg.dataset}-LT {_gamma(cfg.gamma)}",
        "digest": digest,
        "source_type": "ltkd",
        "source": {"dataset": cfg.dataset, "gamma": _plain(cfg.gamma), "n_max": cfg.n_max, "split_seed": cfg.split_seed,
                   **({"options": cfg.dataset_options} if cfg.dataset_options else {})},
        "schema": {"classes": len(class_counts), "split": "train"},
        "profile": {"num_images": int(sum(class_counts)), "num_classes": len(class_counts), "class_counts": list(class_counts)},
        "context": "train",
    }


GROUP_NAMES = ("head", "medium", "tail")


def group_curve_metrics(validation: bool) -> tuple[str, ...]:
    """The metrics that `GROUP_CURVES_PLOT` draws: acc_* (val_acc_* for a search trial)."""
    prefix = "val_" if validation else ""
    return tuple(f"{prefix}acc_{group}" for group in ("all", *GROUP_NAMES))


# End-of-trial summaries, logged once at the last step (sortable columns, read by tables, status and
# best): single points, so the study's charts leave them out.
SUMMARY_METRICS = (*(f"best_{prefix}acc_{group}" for prefix in ("", "val_") for group in ("all", *GROUP_NAMES)),
                   "best_epoch", "train_seconds", *(f"pg_{split}_{group}" for split in ("test", "train") for group in GROUP_NAMES))
_MODEL_SECTION, _SYSTEM_SECTION = "ltkd-model-metrics", "ltkd-system-metrics"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def _chart(key: str, deleted: bool = False, **fields: Any) -> dict[str, Any]:
    """One chart card of MLflow 3.17's chart view (its RunsChartsCardConfig, serialised); a deleted
    one needs only what identifies it."""
    card = {"uuid": "ltkd-" + key, "type": "LINE", "metricKey": key, "metricSectionId": _MODEL_SECTION, "isGenerated": True, "deleted": deleted}
    if deleted:
        return {**card, **fields}
    return {**card, "runsCountToCompare": 10, "lineSmoothness": 0, "xAxisKey": "step", "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True, **fields}


def _charts() -> list[dict[str, Any]]:
    """Head, medium and tail on one chart (test accuracy, and a search trial's validation accuracy);
    the summaries' charts and the separate medium / tail ones deleted (the UI adds a chart for every
    metric that has none, deleted or not, so a deleted card is how a chart stays away). acc_all, loss,
    lr and the loss terms get the UI's own charts."""
    charts = []
    for prefix in ("", "val_"):  # titled by the UI "acc_head vs acc_medium vs acc_tail"
        keys = [f"{prefix}acc_{group}" for group in GROUP_NAMES]
        charts.append(_chart(keys[0], selectedMetricKeys=keys))
        charts += [_chart(key, deleted=True) for key in keys[1:]]
    return charts + [_chart(key, type="BAR", deleted=True) for key in SUMMARY_METRICS]


def runs_view_state(searched: bool = False) -> dict[str, Any]:
    """The runs table as the study's link opens it (MLflow 3.17's shared view: its search facets and
    the table's and charts' state; runs hidden, pinned or expanded are not shared).
    - Grouped by table cell, each group's row the mean over its seeds (the UI aggregates by min, mean
      or max only: no spread; the tables give mean ± std). Params are aggregated too (seed 0 and 1
      show 0.5), so the seed is not a column: the run name ends with it.
    - Columns: tail, all, head, medium accuracy, method, γ; in a study with a search (`searched`) the
      val_acc_* of its trials first, then the teachers' acc_*. The tables run and a search's parent
      runs (no cell) are in the "Additional runs" group, opened.
    - Sorted by the cell tag, descending: the Teacher's and the Student's rows first, then the methods.
    - Charts: head / medium / tail on one chart; end-of-trial summaries (best_*, pg_*, train_seconds)
      are columns, not one-point charts."""
    test = [_column("metrics", f"acc_{g}") for g in ("tail", "all", "head", "medium")]
    validation = [_column("metrics", f"val_acc_{g}") for g in ("tail", "all", "head", "medium")]
    # A grid study's runs never have val_acc_* (the values it takes from a search come from `ltkd best`).
    columns = [*(validation + test if searched else test), _column("params", "method"), _column("params", "gamma")]
    name_column = "attributes.`Run Name`"
    return {
        "orderByKey": _column("tags", CELL_TAG),
        "orderByAsc": False,
        "selectedColumns": columns,
        # The UI orders a kind's columns by name unless ordered here, and applies a width only to the columns it orders.
        "columnOrder": [name_column, *columns],
        # Room for the groups' names ("Group: LTKD w32>w8 γ50") and their means ("55.3333 (average)").
        "columnWidths": {name_column: 240, **{column: 140 for column in columns if column.startswith("metrics.")}},
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": CELL_TAG}]},
        "groupsExpanded": {f"tag.{CELL_TAG}": True},  # the group of runs without a cell ("Additional runs")
        "runListHidden": False,
        "viewMaximized": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "isAccordionReordered": False,
        "compareRunSections": [{"uuid": _MODEL_SECTION, "name": "Model metrics", "display": True, "isReordered": False, "deleted": False, "isGenerated": True},
                               {"uuid": _SYSTEM_SECTION, "name": "System metrics", "display": True, "isReordered": False, "deleted": False, "isGenerated": True}],
        "compareRunCharts": _charts(),
    }


def experiment_url(base: str, experiment_id: str, shared_view: bool = True) -> str:
    """The experiment's runs table in the model-training view (MLflow 3.17 reads `workflowType`
    from the URL before the browser's stored choice), opened on the study's shared view."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={VIEW_STATE_KEY}" if shared_view else "")
    return f"{base.rstrip('/')}{'/' if base else ''}#/experiments/{experiment_id}/runs?{query}"


def trial_params(trial) -> dict[str, Any]:
    """MLflow params of a trial, per the tracking schema, plus the method's other hyperparameters
    and the rest of the recipe. A hyperparameter whose name is taken by a schema param with another
    meaning (DIST's `gamma` beside the imbalance factor γ) is logged as `method.<name>`."""
    cfg = trial.config
    mp = cfg.method_params
    params: dict[str, Any] = {
        "dataset": cfg.dataset,
        "gamma": cfg.gamma,
        "role": cfg.role,
        "method": cfg.method,
        "teacher": cfg.teacher if cfg.role == "distill" else (cfg.model if cfg.role == "teacher" else None),
        "student": cfg.model if cfg.role != "teacher" else None,
        **{key: mp.get(key) for key in SCHEMA_METHOD_PARAMS},
        "seed": cfg.seed,
        "epochs": cfg.recipe.epochs,
        "model": cfg.model,
        "n_max": cfg.n_max,
        "split_seed": cfg.split_seed,
        **({"validation_per_class": cfg.validation_per_class} if cfg.validation_per_class else {}),
    }
    for key, value in mp.items():
        if key not in SCHEMA_METHOD_PARAMS:
            params["method." + key if key in params else key] = value
    for key, value in cfg.recipe.__dict__.items():
        params.setdefault(key, value)
    if cfg.dataset_options:
        params["dataset_options"] = cfg.dataset_options
    return params


def base_tags(study: str, study_file: str) -> dict[str, str]:
    """The tags every trial run of a sweep or search starts with (`trial_tags` adds the trial's own)."""
    return {"study": study, "git_commit": git_commit(), "study_file": study_file}


def trial_tags(trial, base_tags: dict[str, str]) -> dict[str, str]:
    tags = {**base_tags, "config_hash": trial.config_hash, "role": trial.role, "row": trial.row, CELL_TAG: cell_label(trial)}
    if trial.teacher_hash:
        tags["teacher_hash"] = trial.teacher_hash
    return tags


ACCURACY_DECIMALS = 4  # an accuracy is correct / total * 100: 55.3333, not 55.33333333333333


def logged_value(key: str, value: float) -> float:
    """A metric's value as the run records it: accuracies (acc_*, val_acc_*, best_*acc_*) to 4
    decimals, which moves a mean over seeds by at most 0.00005 (the tables print 2); the learning
    rate to 12 significant digits (its schedule's float noise dropped); the rest as measured."""
    if "acc_" in key:
        return round(float(value), ACCURACY_DECIMALS)
    if key == "lr":
        return float(f"{value:.{PARAM_DIGITS}g}")
    return value


def epoch_metrics(report: dict[str, Any]) -> dict[str, float]:
    """What a run records per epoch (step = epoch) from a trial's epoch report."""
    out = {k: report[k] for k in EPOCH_METRICS if k in report}
    out.update({k: v for k, v in report.items() if k.startswith(("loss_", SYSTEM_PREFIX)) and isinstance(v, (int, float))})
    return {k: logged_value(k, v) for k, v in out.items()}


def summary_metrics(summary: dict[str, float]) -> dict[str, float]:
    """What a run records at its last step from a trial's end-of-trial summary (best_*, pg_*,
    train_seconds): acc_* and val_acc_* of the last epoch are already logged at that step."""
    return {k: logged_value(k, v) for k, v in summary.items() if not k.startswith(("acc_", "val_acc_"))}


def per_class_artifact(per_class: list[float], class_counts: list[int]) -> dict[str, Any]:
    return {"per_class_accuracy": per_class, "class_counts": class_counts}
