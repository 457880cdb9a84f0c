"""Evaluation summary by hand, and real (tiny) trials on the offline digits data: teacher, then KD and
LTKD students from its checkpoint. One teacher is trained per module; the whole file takes seconds."""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from trainer.config import Recipe, TrialConfig
from trainer.data import build_long_tailed, make_loader
from trainer.evaluate import evaluate, summarize
from trainer.loop import CHECKPOINT_FILE, load_checkpoint, run_trial, save_checkpoint
from trainer.models import build_model

EPOCHS = 8
RECIPE = Recipe(epochs=EPOCHS, batch_size=16, lr=0.05, lr_schedule="cosine")


# ---------------------------------------------------------------------------------------------
# summarize (by hand)
# ---------------------------------------------------------------------------------------------

def test_summarize_by_hand():
    class_counts = [100, 80, 60, 40, 20, 10]  # 3 groups of 2: {0,1} head, {2,3} medium, {4,5} tail
    correct = torch.tensor([10, 9, 5, 4, 1, 0])
    total = torch.tensor([10, 10, 10, 10, 10, 10])
    r = summarize(correct, total, class_counts)
    assert r.acc_head == pytest.approx(95.0, abs=1e-12)  # 19 / 20
    assert r.acc_medium == pytest.approx(45.0, abs=1e-12)  # 9 / 20
    assert r.acc_tail == pytest.approx(5.0, abs=1e-12)  # 1 / 20
    assert r.acc_all == pytest.approx(100 * 29 / 60, abs=1e-12)
    assert r.per_class == pytest.approx([100.0, 90.0, 50.0, 40.0, 10.0, 0.0], abs=1e-12)
    assert r.metrics() == {"acc_all": r.acc_all, "acc_head": r.acc_head, "acc_medium": r.acc_medium, "acc_tail": r.acc_tail}


def test_summarize_groups_by_training_count_not_index():
    # 7 classes: cuts 0, 2, 5, 7 -> head 2 classes, medium 3, tail 2 (ranked by count)
    class_counts = [5, 50, 1, 40, 30, 3, 20]  # ranked: 1, 3 | 4, 6, 0 | 5, 2
    correct = torch.tensor([2, 20, 0, 19, 15, 4, 12])
    total = torch.tensor([20] * 7)
    r = summarize(correct, total, class_counts)
    assert r.acc_head == pytest.approx(100 * (20 + 19) / 40, abs=1e-12)  # 97.5
    assert r.acc_medium == pytest.approx(100 * (15 + 12 + 2) / 60, abs=1e-12)  # 48.333...
    assert r.acc_tail == pytest.approx(100 * (4 + 0) / 40, abs=1e-12)  # 10.0
    assert r.acc_all == pytest.approx(100 * 72 / 140, abs=1e-12)
    assert r.per_class[1] == 100.0 and r.per_class[2] == 0.0 and r.per_class[4] == 75.0


def test_summarize_c100_three_group_split():
    from trainer.data import long_tailed_counts

    counts = long_tailed_counts(500, 100, 100)
    correct = torch.tensor([100] * 33 + [50] * 34 + [0] * 33)
    total = torch.full((100,), 100)
    r = summarize(correct, total, counts)
    assert (r.acc_head, r.acc_medium, r.acc_tail) == (100.0, 50.0, 0.0)
    assert r.acc_all == pytest.approx(100 * (3300 + 1700) / 10000, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# run_trial
# ---------------------------------------------------------------------------------------------

def _config(role, model, method="ce", seed=0, epochs=EPOCHS, **params):
    recipe = Recipe(**{**RECIPE.__dict__, "epochs": epochs})
    return TrialConfig(
        role=role, dataset="digits", gamma=10, model=model, seed=seed, method=method, method_params=params,
        teacher="cnn_w16" if role == "distill" else None, recipe=recipe, device="cpu",
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("teacher"))
    reports = []
    result = run_trial(_config("teacher", "cnn_w16"), report=reports.append, checkpoint_dir=ckpt)
    return ckpt, result, reports


@pytest.fixture(scope="module")
def students(teacher):
    ckpt = teacher[0]
    out = {}
    for method in ("kd", "ltkd"):
        reports = []
        result = run_trial(_config("distill", "cnn_w8", method), report=reports.append, teacher_checkpoint=ckpt)
        out[method] = (result, reports)
    return out


def _check_reports(result, reports):
    assert [r.epoch for r in reports] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(r.loss) and r.loss > 0 for r in reports)
    assert all(r.lr > 0 for r in reports)
    # the final result is the last epoch's evaluation; best is the max over epochs, reported apart
    assert result.final.acc_all == reports[-1].eval.acc_all
    assert result.final.per_class == reports[-1].eval.per_class
    assert result.best_epoch in range(1, EPOCHS + 1)
    assert result.best.acc_all >= result.final.acc_all
    assert result.best.acc_all == max(r.eval.acc_all for r in reports)
    assert reports[result.best_epoch - 1].eval.acc_all == result.best.acc_all
    assert result.epochs == EPOCHS


def test_teacher_learns(teacher):
    ckpt, result, reports = teacher
    _check_reports(result, reports)
    assert result.final.acc_all > 50.0, result.final
    assert result.final.acc_head > 50.0
    assert reports[-1].loss < reports[0].loss
    assert len(result.final.per_class) == 10
    assert os.path.isfile(os.path.join(ckpt, CHECKPOINT_FILE))
    assert result.class_counts == build_long_tailed("digits", 10).class_counts


@pytest.mark.parametrize("method", ["kd", "ltkd"])
def test_students_learn_from_teacher(students, method):
    result, reports = students[method]
    _check_reports(result, reports)
    assert result.final.acc_all > 50.0, (method, result.final)
    terms = reports[-1].terms
    assert set(terms) == {"ce", method}
    assert all(math.isfinite(v) for v in terms.values())
    assert terms[method] > 0
    # the reported loss is the sum of the terms
    assert reports[-1].loss == pytest.approx(sum(terms.values()), rel=1e-5)


def test_same_config_twice_is_identical(teacher, students):
    result, reports = students["ltkd"]
    again_reports = []
    again = run_trial(_config("distill", "cnn_w8", "ltkd"), report=again_reports.append, teacher_checkpoint=teacher[0])
    assert again.final.metrics() == result.final.metrics()
    assert again.final.per_class == result.final.per_class
    assert again.best_epoch == result.best_epoch
    assert [r.loss for r in again_reports] == [r.loss for r in reports]
    assert again.train_indices == result.train_indices


def test_different_seed_differs():
    runs = []
    for seed in (0, 1):
        reports = []
        result = run_trial(_config("student", "cnn_w8", seed=seed, epochs=2), report=reports.append)
        runs.append((result, [r.loss for r in reports]))
    (a, la), (b, lb) = runs
    assert la != lb or a.final.per_class != b.final.per_class
    # the long-tailed split does not depend on the training seed
    assert a.train_indices == b.train_indices and a.class_counts == b.class_counts


def test_distill_without_teacher_checkpoint_raises():
    with pytest.raises(ValueError, match="teacher"):
        run_trial(_config("distill", "cnn_w8", "kd", epochs=1))


def test_checkpoint_reproduces_the_trained_teacher(teacher):
    ckpt, result, _ = teacher
    model = load_checkpoint(ckpt)
    data = build_long_tailed("digits", 10)
    loader = make_loader(data.test, 256, False, 0)
    reloaded = evaluate(model, loader, data.class_counts, torch.device("cpu"))
    assert reloaded.per_class == result.final.per_class
    assert reloaded.acc_all == result.final.acc_all
    # a path to the file works as well as the folder
    same = load_checkpoint(os.path.join(ckpt, CHECKPOINT_FILE)).eval()
    x = data.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), same(x))


def test_save_load_checkpoint_same_logits(tmp_path):
    torch.manual_seed(3)
    model = build_model("cnn_w8", 10, in_channels=1).eval()
    config = _config("student", "cnn_w8")
    save_checkpoint(str(tmp_path / "ck"), model, config, 10, 1)
    loaded = load_checkpoint(str(tmp_path / "ck")).eval()
    assert type(loaded) is type(model)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    state = torch.load(tmp_path / "ck" / CHECKPOINT_FILE, weights_only=True)
    assert TrialConfig.from_dict(state["config"]) == config


def test_eval_every_skips_test_passes_but_not_the_result():
    every_epoch = TrialConfig("student", "digits", 10.0, "cnn_w8", 0, recipe=Recipe(epochs=5, batch_size=64))
    sparse = TrialConfig("student", "digits", 10.0, "cnn_w8", 0, recipe=Recipe(epochs=5, batch_size=64, eval_every=3))
    reports = []
    dense_result = run_trial(every_epoch)
    sparse_result = run_trial(sparse, report=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3, 4, 5]
    assert [r.epoch for r in reports if r.eval is not None] == [3, 5]
    # Evaluation draws no randomness and changes no weights: the final result is the same.
    assert sparse_result.final == dense_result.final
    assert sparse_result.best_epoch in (3, 5)


# ---------------------------------------------------------------------------------------------
# search trials: a balanced validation split, and the test set never read
# ---------------------------------------------------------------------------------------------

class _Untouchable(torch.utils.data.Dataset):
    """A test set that fails the trial if anything reads it."""

    def __len__(self):
        raise AssertionError("a search trial read the test set")

    def __getitem__(self, i):
        raise AssertionError("a search trial read the test set")


def test_search_trial_evaluates_on_validation_and_never_reads_the_test_set(teacher, monkeypatch):
    import trainer.data
    import trainer.loop

    seen = {}

    def guarded(*args, **kwargs):
        data = trainer.data.build_long_tailed(*args, **kwargs)
        seen["data"] = data
        data.test = _Untouchable()
        return data

    monkeypatch.setattr(trainer.loop, "build_long_tailed", guarded)
    config = dataclasses.replace(_config("distill", "cnn_w8", "ltkd"), validation_per_class=5)
    reports = []
    result = run_trial(config, report=reports.append, teacher_checkpoint=teacher[0])
    data = seen["data"]
    assert result.evaluated_on == "val" and set(result.group_probability) == {"val", "train"}
    assert np.bincount(data.validation.tensors[1].numpy(), minlength=10).tolist() == [5] * 10
    assert not set(data.validation_indices) & set(data.train_indices)
    # n_max is what the held-out draw leaves of the smallest class; the cut follows the profile from there
    full = np.bincount(trainer.data.load_dataset("digits").train_targets, minlength=10)
    assert data.class_counts == trainer.data.long_tailed_counts(int(full.min()) - 5, 10, 10)
    # every evaluation is over the 50 validation images: accuracies are multiples of 2 %
    assert all(abs(r.eval.acc_all / 2 - round(r.eval.acc_all / 2)) < 1e-9 for r in reports)
    assert result.final.acc_all == reports[-1].eval.acc_all


def test_validation_split_is_fixed_and_leaves_grid_trials_alone():
    from trainer.data import build_long_tailed

    plain = build_long_tailed("digits", 10)
    a = build_long_tailed("digits", 10, validation_per_class=5)
    b = build_long_tailed("digits", 10, validation_per_class=5)
    assert a.validation_indices == b.validation_indices and a.train_indices == b.train_indices
    assert plain.validation is None and plain.validation_indices is None
    cfg = _config("distill", "cnn_w8", "ltkd")
    assert "validation_per_class" not in cfg.identity()  # grid trials' hashes did not move
    assert dataclasses.replace(cfg, validation_per_class=5).identity()["validation_per_class"] == 5
    with pytest.raises(ValueError, match="would leave it none"):
        build_long_tailed("digits", 10, validation_per_class=10_000)
