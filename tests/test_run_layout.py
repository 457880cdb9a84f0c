"""The run layout (orchestrator/tracking/layout.py): what a trial's MLflow run is given, decided in one place."""
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.study import expand, load_study, parse_study
from orchestrator.tracking.layout import SUMMARY_METRICS, summary_metrics
from orchestrator.tracking import (dataset_input, epoch_metrics, experiment_url, param_str, run_name, runs_view_state, short_model,
    split_digest, teacher_link_tags, teacher_run_name, trial_params, trial_tags)

STUDY = {
    "name": "layout",
    "dataset": {"name": "digits", "gammas": [50]},
    "pairs": [{"teacher": "cnn_w16", "student": "cnn_w4"}],
    "methods": {"dist": {"beta": 2.0, "gamma": 3.0}, "ltkd": {"alpha": 1.5, "n_groups": 4}},
    "seeds": [7],
}


def _trials():
    return {t.row: t for t in expand(parse_study(STUDY))}


def test_a_method_hyperparameter_named_like_a_schema_param_is_logged_prefixed():
    dist = trial_params(_trials()["DIST"])
    assert dist["gamma"] == 50.0  # the imbalance factor keeps the schema's name
    assert dist["method.gamma"] == 3.0  # DIST's own gamma is not dropped
    assert dist["beta"] == 2.0 and dist["alpha"] is None and dist["seed"] == 7
    assert (dist["role"], dist["method"], dist["teacher"], dist["student"]) == ("distill", "dist", "cnn_w16", "cnn_w4")


def test_schema_params_and_tags_of_teacher_and_distillation_trials():
    trials = _trials()
    ltkd, teacher = trials["LTKD"], trials["Teacher"]
    params = trial_params(ltkd)
    assert (params["alpha"], params["n_groups"], params["dataset"], params["epochs"]) == (1.5, 4, "digits", ltkd.config.recipe.epochs)
    assert "method.alpha" not in params
    tparams = trial_params(teacher)
    assert (tparams["role"], tparams["teacher"], tparams["student"]) == ("teacher", "cnn_w16", None)
    tags = trial_tags(ltkd, {"study": "layout"})
    assert tags == {"study": "layout", "config_hash": ltkd.config_hash, "role": "distill", "row": "LTKD", "teacher_hash": teacher.config_hash,
                    "cell": "LTKD w16>w4 γ50"}
    assert "teacher_hash" not in trial_tags(teacher, {})


def test_epoch_metrics_keep_the_schema_keys_and_loss_terms_only():
    report = {"epoch": 3, "loss": 1.2, "lr": 0.05, "acc_all": 50.0, "acc_tail": 10.0, "loss_ce": 1.0, "loss_ltkd": 0.2,
              "node_id": "abc", "pid": 12, "first_epoch": 3, "system/cpu_utilization_percentage": 97.0}
    assert epoch_metrics(report) == {"loss": 1.2, "lr": 0.05, "acc_all": 50.0, "acc_tail": 10.0, "loss_ce": 1.0, "loss_ltkd": 0.2,
                                     "system/cpu_utilization_percentage": 97.0}


def test_params_read_as_the_study_writes_them():
    assert [param_str(v) for v in (50.0, 2.5, 1e-4, 3, True, None, [20.0, 25.0], "cnn_w4")] == \
        ["50", "2.5", "0.0001", "3", "True", "none", "[20, 25]", "cnn_w4"]
    trials = _trials()
    ltkd = trials["LTKD"]
    assert param_str(trial_params(ltkd)["gamma"]) == "50" and param_str(trial_params(trials["DIST"])["method.gamma"]) == "3"


def test_run_names_are_short_and_complete():
    trials = _trials()
    assert run_name(trials["LTKD"]) == "LTKD w16>w4 γ50 s7"
    assert run_name(trials["Teacher"]) == "Teacher w16 γ50 s7"
    assert run_name(trials["Student"]) == "Student w4 γ50 s7"
    assert teacher_run_name(trials["LTKD"]) == run_name(trials["Teacher"])
    assert [short_model(m) for m in ("resnet32x4", "wrn_40_2", "mobilenet_v2", "shufflenet_v1", "vgg13", "cnn_w32")] == \
        ["r32x4", "wrn40_2", "mnv2", "snv1", "vgg13", "w32"]
    # ~7 px a character in the UI's 190 px Run Name column: a ResNet pair fits, with γ and seed.
    assert len(run_name(trials["LTKD"]).replace("w16>w4", "r32x4>r8x4").replace("γ50", "γ100")) <= 24


def test_a_distillation_run_links_to_its_teacher_run():
    tags = teacher_link_tags("3", "abc123", "f" * 16, "Teacher w16 γ50 s7")
    assert tags["teacher_run_id"] == "abc123"
    assert "[Teacher w16 γ50 s7](#/experiments/3/runs/abc123)" in tags["mlflow.note.content"]
    assert "teacher_run_id" not in teacher_link_tags("3", None, "f" * 16, "Teacher w16 γ50 s7")


def test_the_training_data_as_a_dataset_input():
    ltkd = _trials()["LTKD"]
    digest = split_digest([5, 1, 3])
    assert digest == split_digest([1, 3, 5]) and len(digest) == 16
    data = dataset_input(ltkd, [100, 30, 2], digest)
    assert (data["name"], data["digest"], data["context"]) == ("digits-LT γ50", digest, "train")
    assert data["source"]["gamma"] == 50 and data["profile"] == {"num_images": 132, "num_classes": 3, "class_counts": [100, 30, 2]}


def test_the_printed_link_opens_the_model_training_view_on_the_shared_view():
    assert experiment_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=ltkd"
    view = runs_view_state()
    assert view["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "cell"}]}
    assert view["selectedColumns"] == ["metrics.`acc_tail`", "metrics.`acc_all`", "metrics.`acc_head`", "metrics.`acc_medium`",
                                       "params.`method`", "params.`gamma`"]
    assert view["columnOrder"] == ["attributes.`Run Name`", *view["selectedColumns"]]


def test_the_runs_view_sorts_teacher_and_student_first_opens_the_runs_without_a_cell_and_shows_no_seed_mean():
    view = runs_view_state()
    # 'Teacher w16 γ50' > 'Student w4 γ50' > 'LTKD w16>w4 γ50' > 'KD …' > 'DKD …': the baselines' rows first
    assert (view["orderByKey"], view["orderByAsc"]) == ("tags.`cell`", False)
    assert view["groupsExpanded"] == {"tag.cell": True}  # the UI's id of the "Additional runs" group (the tables run)
    assert not [c for c in view["selectedColumns"] if "seed" in c]  # a group's mean of seeds 0 and 1 would read 0.5
    searched = runs_view_state(searched=True)["selectedColumns"]
    assert searched[:4] == ["metrics.`val_acc_tail`", "metrics.`val_acc_all`", "metrics.`val_acc_head`", "metrics.`val_acc_medium`"]
    assert searched[4:8] == view["selectedColumns"][:4]


def test_the_charts_put_head_medium_and_tail_on_one_chart_and_leave_out_the_one_point_summaries():
    charts = runs_view_state()["compareRunCharts"]
    shown = [c for c in charts if not c["deleted"]]
    assert [(c["type"], c["metricKey"], c["selectedMetricKeys"]) for c in shown] == [
        ("LINE", "acc_head", ["acc_head", "acc_medium", "acc_tail"]), ("LINE", "val_acc_head", ["val_acc_head", "val_acc_medium", "val_acc_tail"])]
    # The UI draws a chart for every metric without a card: each summary has one, deleted.
    deleted = {c["metricKey"] for c in charts if c["deleted"]}
    assert deleted == {*SUMMARY_METRICS, "acc_medium", "acc_tail", "val_acc_medium", "val_acc_tail"}
    assert {"best_acc_tail", "best_val_acc_all", "best_epoch", "train_seconds", "pg_test_head", "pg_train_tail"} <= set(SUMMARY_METRICS)
    sections = {s["uuid"] for s in runs_view_state()["compareRunSections"]}
    assert {c["metricSectionId"] for c in charts} <= sections


def test_accuracies_are_logged_to_four_decimals_and_the_learning_rate_without_float_noise():
    report = {"epoch": 3, "loss": 1 / 3, "lr": 0.05 * 0.1 * 0.1, "acc_all": 100 * 166 / 300, "acc_tail": 100 * 2 / 3,
              "val_acc_head": 100 / 7, "loss_ce": 2 / 3}
    assert 0.05 * 0.1 * 0.1 == 0.0005000000000000001
    assert epoch_metrics(report) == {"loss": 1 / 3, "lr": 0.0005, "acc_all": 55.3333, "acc_tail": 66.6667, "val_acc_head": 14.2857,
                                     "loss_ce": 2 / 3}
    summary = {"acc_all": 55.333333, "val_acc_tail": 1.0, "best_acc_tail": 100 * 5 / 9, "best_val_acc_all": 100 / 3, "best_epoch": 2,
               "train_seconds": 1.23456789, "pg_test_tail": 0.123456789}
    # acc_* / val_acc_* are the last epoch's, logged with it; group probabilities and times are not ratios: kept as measured
    assert summary_metrics(summary) == {"best_acc_tail": 55.5556, "best_val_acc_all": 33.3333, "best_epoch": 2, "train_seconds": 1.23456789,
                                        "pg_test_tail": 0.123456789}


def test_every_param_string_that_read_well_is_unchanged_and_float_noise_is_dropped():
    assert param_str(0.05 * 0.1 * 0.1) == "0.0005" and param_str([0.1 + 0.2, 1.0]) == "[0.3, 1]" and param_str(1 / 3) == "0.333333333333"
    checked = 0
    for path in sorted(Path(__file__).resolve().parents[1].glob("studies/*.yaml")):
        try:
            trials = expand(load_study(str(path)))
        except UserError:  # a grid study that takes its values from a search not yet run
            continue
        for trial in trials:
            for key, value in trial_params(trial).items():
                if isinstance(value, float) and len(repr(value)) <= 14:  # what a person writes: 0.05, 1e-05, 2.5, 50.0
                    assert param_str(value) == (str(int(value)) if value.is_integer() else repr(value)), (path.name, key, value)
                    checked += 1
    assert checked > 1000
