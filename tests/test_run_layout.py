"""The run layout (orchestrator/tracking.py): what a trial's MLflow run is given, decided in one place."""
from orchestrator.study import expand, parse_study
from orchestrator.tracking import epoch_metrics, trial_params, trial_tags

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
    assert tags == {"study": "layout", "config_hash": ltkd.config_hash, "role": "distill", "row": "LTKD", "teacher_hash": teacher.config_hash}
    assert "teacher_hash" not in trial_tags(teacher, {})


def test_epoch_metrics_keep_the_schema_keys_and_loss_terms_only():
    report = {"epoch": 3, "loss": 1.2, "lr": 0.05, "acc_all": 50.0, "acc_tail": 10.0, "loss_ce": 1.0, "loss_ltkd": 0.2,
              "node_id": "abc", "pid": 12, "first_epoch": 3}
    assert epoch_metrics(report) == {"loss": 1.2, "lr": 0.05, "acc_all": 50.0, "acc_tail": 10.0, "loss_ce": 1.0, "loss_ltkd": 0.2}
