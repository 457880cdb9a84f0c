"""Periodic resume state in run_trial: a trial stopped after epoch k and run again with the same
resume folder ends exactly where an uninterrupted run ends (weights and metrics, on the CPU)."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from trainer.config import Recipe, TrialConfig
from trainer.loop import CHECKPOINT_FILE, RESUME_FILE, run_trial

EPOCHS = 6
# cosine + momentum + weight decay: the lr schedule and the optimizer state must both carry over
RECIPE = Recipe(epochs=EPOCHS, batch_size=64, lr=0.1, lr_schedule="cosine", checkpoint_every=1)


class Stop(Exception):
    """Stands for a pre-empted node or Ctrl-C after the report of some epoch."""


CASES = {
    "ce": dict(),
    "ltkd": dict(role="distill", method="ltkd"),
    # learnable connectors (built in setup) whose weights and momentum must carry over
    "reviewkd": dict(role="distill", method="reviewkd", method_params={"warmup": 2}),
}


def _config(role="student", model="cnn_w8", method="ce", method_params=None, **recipe):
    return TrialConfig(
        role=role, dataset="digits", gamma=10, model=model, seed=0, method=method, method_params=method_params or {},
        teacher="cnn_w16" if role == "distill" else None,
        recipe=dataclasses.replace(RECIPE, **recipe), device="cpu",
    )


def _stop_after(k, reports):
    def report(ep):
        reports.append(ep)
        if ep.epoch == k:
            raise Stop
    return report


def _weights(folder) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True)["state_dict"]


def _state(folder) -> dict:
    return torch.load(os.path.join(folder, RESUME_FILE), weights_only=True)


def _assert_same(a, b):
    """Two (TrialResult, weights) pairs are identical: metrics, per-class accuracies, weights."""
    (ra, wa), (rb, wb) = a, b
    for field in ("acc_all", "acc_head", "acc_medium", "acc_tail", "per_class"):
        assert getattr(ra.final, field) == getattr(rb.final, field), field
        assert getattr(ra.best, field) == getattr(rb.best, field), field
    assert ra.best_epoch == rb.best_epoch and ra.epochs == rb.epochs
    assert ra.train_indices == rb.train_indices and ra.class_counts == rb.class_counts
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("teacher"))
    run_trial(_config("teacher", "cnn_w16", epochs=2), checkpoint_dir=ckpt)
    return ckpt


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, teacher):
    """Per case: the uninterrupted run's result, weights and reports (no resume folder)."""
    out = {}
    for name, kwargs in CASES.items():
        config = _config(**kwargs)
        ckpt = str(tmp_path_factory.mktemp(f"full-{name}"))
        reports = []
        result = run_trial(config, report=reports.append, teacher_checkpoint=teacher, checkpoint_dir=ckpt)
        out[name] = (result, _weights(ckpt), reports)
    return out


@pytest.mark.parametrize("case,every,stop,saved", [
    ("ce", 1, 3, 3),  # stopped after a checkpointed epoch: continues at k + 1
    ("ce", 2, 3, 2),  # stopped between checkpoints: epoch 3 is run again
    ("ltkd", 1, 4, 4),  # distillation, from the teacher checkpoint
    ("reviewkd", 2, 5, 4),
])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, teacher, uninterrupted, case, every, stop, saved):
    config = _config(**CASES[case])
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, checkpoint_every=every))
    resume, ckpt = str(tmp_path / "resume"), str(tmp_path / "ckpt")

    first = []
    with pytest.raises(Stop):
        run_trial(config, report=_stop_after(stop, first), teacher_checkpoint=teacher, checkpoint_dir=ckpt, resume_dir=resume)
    assert [r.epoch for r in first] == list(range(1, stop + 1))
    assert not os.path.exists(os.path.join(ckpt, CHECKPOINT_FILE))  # the final checkpoint only at the end
    assert _state(resume)["epoch"] == saved
    assert os.listdir(resume) == [RESUME_FILE]  # no temp file left behind

    second = []
    result = run_trial(config, report=second.append, teacher_checkpoint=teacher, checkpoint_dir=ckpt, resume_dir=resume)
    assert [r.epoch for r in second] == list(range(saved + 1, EPOCHS + 1))

    full, full_weights, full_reports = uninterrupted[case]
    _assert_same((result, _weights(ckpt)), (full, full_weights))
    # the epochs run after the resume are the uninterrupted run's epochs, loss for loss
    assert [(r.loss, r.lr, r.terms, r.eval) for r in second] == [(r.loss, r.lr, r.terms, r.eval) for r in full_reports[saved:]]
    if case != "ce":
        assert set(second[-1].terms) == {"ce", case}
    if case == "reviewkd":  # the connectors are saved with the method and were trained
        method_state = _state(resume)["method"]
        assert method_state and all(k.startswith("fusions.") for k in method_state)

    state = _state(resume)  # the final state: done; running it again trains nothing
    assert state["epoch"] == EPOCHS
    for k, v in full_weights.items():
        assert torch.equal(state["model"][k], v), k
    again = []
    rerun = run_trial(config, report=again.append, teacher_checkpoint=teacher, resume_dir=resume)
    assert again == []
    _assert_same((rerun, state["model"]), (full, full_weights))


def test_checkpoint_every_zero_writes_only_at_the_end(tmp_path):
    resume = str(tmp_path / "resume")
    config = _config(checkpoint_every=0, epochs=3)
    reports = []
    with pytest.raises(Stop):
        run_trial(config, report=_stop_after(2, reports), resume_dir=resume)
    assert not os.path.exists(os.path.join(resume, RESUME_FILE))
    # nothing saved: the next call starts from epoch 1
    reports = []
    run_trial(config, report=reports.append, resume_dir=resume)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert _state(resume)["epoch"] == 3


def test_state_of_another_config_raises(tmp_path):
    resume = str(tmp_path / "resume")
    config = _config(epochs=2)
    with pytest.raises(Stop):
        run_trial(config, report=_stop_after(1, []), resume_dir=resume)
    before = _state(resume)["epoch"]

    with pytest.raises(ValueError, match=r"another trial config.*recipe\.lr: 0\.1 in the saved state, 0\.05 here"):
        run_trial(dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, lr=0.05)), resume_dir=resume)
    with pytest.raises(ValueError, match=r"seed: 0 in the saved state, 1 here"):
        run_trial(dataclasses.replace(config, seed=1), resume_dir=resume)
    with pytest.raises(ValueError, match=r"gamma: 10 in the saved state, 20 here"):
        run_trial(dataclasses.replace(config, gamma=20), resume_dir=resume)
    assert _state(resume)["epoch"] == before  # left as it was

    # what does not decide the result may differ: device spelling, data root, checkpoint period
    reports = []
    same = dataclasses.replace(config, data_root=str(tmp_path / "data"), recipe=dataclasses.replace(config.recipe, checkpoint_every=5))
    run_trial(same, report=reports.append, resume_dir=resume)
    assert [r.epoch for r in reports] == [2]


def test_negative_checkpoint_every_raises():
    with pytest.raises(ValueError, match="checkpoint_every"):
        run_trial(_config(checkpoint_every=-1, epochs=1))


def test_a_resumed_trial_can_report_again_the_epochs_its_state_holds(tmp_path, uninterrupted):
    """A report can be lost with the process that took it after the state was saved: on resume,
    `saved_report` receives every saved epoch's report, equal to the original one (per-class left out)."""
    resume = str(tmp_path / "resume")
    config = _config()
    first = []
    with pytest.raises(Stop):
        run_trial(config, report=_stop_after(3, first), resume_dir=resume)
    replayed, live = [], []
    run_trial(config, report=live.append, resume_dir=resume, saved_report=replayed.append)
    assert [r.epoch for r in replayed] == [1, 2, 3] and [r.epoch for r in live] == list(range(4, EPOCHS + 1))
    for again, original in zip(replayed, first):
        assert (again.loss, again.lr, again.terms) == (original.loss, original.lr, original.terms)
        assert again.eval.metrics() == original.eval.metrics() and again.eval.per_class == []


def test_resume_check_and_config_hash_share_one_identity(tmp_path, teacher):
    """The saved state holds `TrialConfig.identity()`, the dict `config_hash` hashes; a state written
    before the identity was defined once (identity-neutral `ce: standard` kept in it) still resumes,
    and a state of an earlier method revision does not."""
    import json

    from orchestrator.study import config_hash
    from trainer.loop import _write_resume_state

    resume = str(tmp_path / "resume")
    config = _config("distill", method="kd", method_params={"ce": "standard"}, epochs=2)
    with pytest.raises(Stop):
        run_trial(config, report=_stop_after(1, []), teacher_checkpoint=teacher, resume_dir=resume)
    state = _state(resume)
    assert state["config"] == config.identity() and "ce" not in state["config"]["method_params"]
    blob = json.dumps({**config.identity(), "teacher_hash": None}, sort_keys=True, separators=(",", ":"))
    assert config_hash(config) == __import__("hashlib").sha256(blob.encode()).hexdigest()[:16]

    old = dict(state, config={**state["config"], "method_params": {**state["config"]["method_params"], "ce": "standard"}})
    _write_resume_state(resume, old)
    reports = []
    run_trial(config, report=reports.append, teacher_checkpoint=teacher, resume_dir=resume)
    assert [r.epoch for r in reports] == [2]

    revised = _config("distill", method="reviewkd", epochs=2)
    assert revised.identity()["method_revision"] == 1 and "method_revision" not in config.identity()
    stale = dict(state, config={k: v for k, v in revised.identity().items() if k != "method_revision"})
    _write_resume_state(resume, stale)
    with pytest.raises(ValueError, match="method_revision: absent in the saved state, 1 here"):
        run_trial(revised, teacher_checkpoint=teacher, resume_dir=resume)


@pytest.mark.integration
def test_a_trial_that_finds_its_state_complete_is_tagged_as_resumed(ray_local, tmp_path, capsys):
    """A trial whose saved state is already past its last epoch (a killed sweep's orphaned worker
    trained to the end) has nothing left to train: its run still says it resumed, and after which epoch."""
    import mlflow

    from orchestrator.cli import main
    from orchestrator.execution.trainable import default_resume_root
    from orchestrator.study import expand, load_study

    study = tmp_path / "complete.yaml"
    study.write_text("name: complete_state\ndataset: {name: digits, gammas: [10]}\npairs: [{teacher: cnn_w16, student: cnn_w4}]\n"
                     "student_baseline: false\nseeds: [0]\nrecipe: {epochs: 2, batch_size: 64, lr: 0.05}\n")
    (teacher,) = expand(load_study(study))
    storage = tmp_path / "tune"
    saved = run_trial(teacher.config, resume_dir=os.path.join(default_resume_root(str(storage)), teacher.config_hash))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["sweep", str(study), "--tracking-uri", uri, "--storage", str(storage), "--tables-every", "0"]) == 0
    capsys.readouterr()
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("complete_state").experiment_id], "tags.role = 'teacher'")
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "2"
    assert run.data.metrics["acc_all"] == saved.final.acc_all  # the saved result, not a new training
