"""The teacher-logit table: its rows are the live teacher's logits, the batches gather the device path's
draws, trials with it train as with the live teacher, resume stays exact, a bad table is rebuilt."""
from __future__ import annotations

import dataclasses
import json
import os
import threading

import numpy as np
import pytest
import torch

from fake_cifar import write_cifar10
from trainer.config import Recipe, TrialConfig
from trainer.data import build_long_tailed, make_loader
from trainer.device_batches import Augmentation, DeviceBatches, image_tensors
from trainer.loop import CHECKPOINT_FILE, load_checkpoint, run_trial
from trainer.teacher_logits import (
    MANIFEST_FILE, TABLE_FILE, TeacherTable, cached_table, compute_table, table_key, variants_of,
)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A small CIFAR-10 in torchvision's format (random pixels, read with check_md5: false)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    train = rng.permutation(np.repeat(np.arange(10), 12))
    test = rng.permutation(np.repeat(np.arange(10), 2))
    write_cifar10(root / "cifar-10-batches-py", train.tolist(), rng.integers(0, 256, (len(train), 3072), dtype=np.uint8),
                  test.tolist(), rng.integers(0, 256, (len(test), 3072), dtype=np.uint8))
    return str(root)


def _teacher(tmp_path_factory, dataset: str, model: str, **kw) -> str:
    folder = str(tmp_path_factory.mktemp(f"teacher-{dataset}") / "teacher")
    config = TrialConfig(role="teacher", dataset=dataset, gamma=4, model=model, seed=0, device="cpu",
                         recipe=Recipe(epochs=1, batch_size=32), **kw)
    run_trial(config, checkpoint_dir=folder)
    return folder


@pytest.fixture(scope="module")
def cifar_teacher(tmp_path_factory, cifar_root):
    return _teacher(tmp_path_factory, "cifar10", "cnn_w8", data_root=cifar_root, dataset_options={"check_md5": False})


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    return _teacher(tmp_path_factory, "digits", "cnn_w16")


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory):
    """One table cache for the CIFAR tests: its table (162 variants per image) is built once."""
    return str(tmp_path_factory.mktemp("cifar-table-cache"))


def test_variants_cover_every_crop_offset_and_flip():
    cifar = variants_of(Augmentation((32, 32), 4, 0.5), (32, 32))
    assert (cifar.tops, cifar.lefts, cifar.flips, len(cifar)) == (9, 9, 2, 162)
    numbers = cifar.variant(torch.tensor([0, 8, 3]), torch.tensor([0, 8, 5]), torch.tensor([False, True, True]))
    assert numbers.tolist() == [0, 161, (3 * 9 + 5) * 2 + 1]
    assert [cifar.draws(v) for v in numbers.tolist()] == [(0, 0, False), (8, 8, True), (3, 5, True)]
    assert len(variants_of(None, (8, 8))) == 1
    assert len(variants_of(Augmentation(None, 0, 0.5), (28, 28))) == 2  # a flip alone
    assert len(variants_of(Augmentation((24, 24), 0, 0.0), (28, 28))) == 25  # a crop alone


def test_the_rows_gathered_for_a_batch_are_the_live_teachers_logits_for_its_draws(cifar_root, cifar_teacher, cifar_cache):
    data = build_long_tailed("cifar10", 4, root=cifar_root, options={"check_md5": False})
    teacher = load_checkpoint(cifar_teacher).eval()
    loader = make_loader(data.train, 16, True, seed=3, path="device")
    assert isinstance(loader, DeviceBatches) and loader.augmentation == Augmentation((32, 32), 4, 0.5)
    rows, _ = cached_table(cifar_cache, os.path.join(cifar_teacher, CHECKPOINT_FILE), teacher, loader, 10, False,
                           torch.contiguous_format)
    table = TeacherTable(rows, variants_of(loader.augmentation, loader.image_hw), torch.device("cpu"), "built")
    # its first rows as compute_table gives them outside the cache
    small = DeviceBatches(dataclasses.replace(image_tensors(data.train), images=image_tensors(data.train).images[:4],
                                              targets=image_tensors(data.train).targets[:4]),
                          4, False, None, "cpu", torch.Generator())
    torch.testing.assert_close(compute_table(teacher, small, 10, autocast=False), rows[:4], rtol=1e-5, atol=1e-5)
    assert table.rows.shape == (len(data.train), 162, 10)
    # keyed() gives the batches that iteration gives, for the same streams
    plain = make_loader(data.train, 16, True, seed=3, path="device")
    seen = 0
    for (x, y, index, draws), (x2, y2) in zip(loader.keyed(), plain):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        with torch.no_grad():
            live = teacher(x)
        torch.testing.assert_close(table.logits(index, draws), live, rtol=1e-5, atol=1e-5)
        seen += len(y)
    assert seen == len(data.train)


def _kd(dataset: str, method: str, teacher: str, teacher_logits: str, epochs: int = 2, **kw) -> TrialConfig:
    return TrialConfig(role="distill", dataset=dataset, gamma=4, model="cnn_w4" if dataset == "digits" else "cnn_w8",
                       teacher="cnn_w16" if dataset == "digits" else "cnn_w8", method=method, seed=0, device="cpu",
                       recipe=Recipe(epochs=epochs, batch_size=64, lr=0.05, teacher_logits=teacher_logits), **kw)


@pytest.mark.parametrize("method", ["kd", "ltkd"])
def test_a_distillation_trial_with_the_table_trains_as_with_the_live_teacher(method, digits_teacher, tmp_path):
    cache = str(tmp_path / "cache")
    live = run_trial(_kd("digits", method, "cnn_w16", "live"), teacher_checkpoint=digits_teacher)
    table = run_trial(_kd("digits", method, "cnn_w16", "table"), teacher_checkpoint=digits_teacher, teacher_logits_dir=cache)
    again = run_trial(_kd("digits", method, "cnn_w16", "auto"), teacher_checkpoint=digits_teacher, teacher_logits_dir=cache)
    assert (live.teacher_logits, table.teacher_logits, again.teacher_logits) == ("live", "table:built", "table:read")
    # The same logits up to reassociation: the same training to within far less than seed noise.
    assert abs(table.final.acc_all - live.final.acc_all) <= 1.0, (table.final.acc_all, live.final.acc_all)
    assert again.final == table.final  # a table read back is the one built
    assert len(os.listdir(cache)) == 1  # one key: one teacher, one training set


def test_auto_takes_the_table_by_default_and_the_cache_sits_beside_the_checkpoint(digits_teacher):
    result = run_trial(_kd("digits", "kd", "cnn_w16", "auto", epochs=1), teacher_checkpoint=digits_teacher)
    assert result.teacher_logits in ("table:built", "table:read")
    assert os.path.isdir(os.path.join(os.path.dirname(digits_teacher), "teacher_logits"))


def test_auto_keeps_the_live_teacher_where_a_table_costs_more_than_it_saves(cifar_root, cifar_teacher, tmp_path):
    # 162 variants for 2 epochs: building the table would take 81 times the teacher passes it saves
    config = _kd("cifar10", "kd", "cnn_w8", "auto", epochs=2, data_root=cifar_root, dataset_options={"check_md5": False})
    result = run_trial(config, teacher_checkpoint=cifar_teacher, teacher_logits_dir=str(tmp_path / "cache"))
    assert result.teacher_logits == "live" and not os.path.exists(tmp_path / "cache")


def test_feature_methods_keep_the_live_teacher_and_refuse_an_explicit_table(digits_teacher, tmp_path):
    ok = run_trial(_kd("digits", "catkd", "cnn_w16", "auto", epochs=1), teacher_checkpoint=digits_teacher)
    assert ok.teacher_logits == "live"
    with pytest.raises(ValueError, match="recipe.teacher_logits = table: method 'catkd' .* logit-based methods"):
        run_trial(_kd("digits", "catkd", "cnn_w16", "table", epochs=1), teacher_checkpoint=digits_teacher)


def test_a_resumed_trial_with_the_table_equals_an_uninterrupted_one(cifar_root, cifar_teacher, cifar_cache, tmp_path):
    class Stop(Exception):
        pass

    config = _kd("cifar10", "ltkd", "cnn_w8", "table", epochs=3, data_root=cifar_root, dataset_options={"check_md5": False})
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, checkpoint_every=1))
    cache = cifar_cache
    full_reports: list = []
    full = run_trial(config, report=full_reports.append, teacher_checkpoint=cifar_teacher, teacher_logits_dir=cache)

    def stop_after_1(ep):
        if ep.epoch == 1:
            raise Stop

    resume = str(tmp_path / "resume")  # the table was built by the rows test (or the run above)
    with pytest.raises(Stop):
        run_trial(config, report=stop_after_1, teacher_checkpoint=cifar_teacher, resume_dir=resume, teacher_logits_dir=cache)
    rest: list = []
    result = run_trial(config, report=rest.append, teacher_checkpoint=cifar_teacher, resume_dir=resume, teacher_logits_dir=cache)
    assert [r.epoch for r in rest] == [2, 3]
    assert [(r.loss, r.eval) for r in rest] == [(r.loss, r.eval) for r in full_reports[1:]]
    assert result.final == full.final and (full.teacher_logits, result.teacher_logits) != ("live", "live")


def _cifar_batches(cifar_root) -> DeviceBatches:
    data = build_long_tailed("cifar10", 4, root=cifar_root, options={"check_md5": False})
    return make_loader(data.train, 16, True, seed=0, path="device")


def _digits_batches() -> DeviceBatches:
    return make_loader(build_long_tailed("digits", 4).train, 64, True, seed=0, path="device")


def test_a_partial_or_corrupt_table_is_rebuilt_never_used(digits_teacher, tmp_path):
    teacher = load_checkpoint(digits_teacher).eval()
    batches = _digits_batches()
    file = os.path.join(digits_teacher, CHECKPOINT_FILE)
    cache = str(tmp_path / "cache")
    args = (cache, file, teacher, batches, 10, False, torch.contiguous_format)
    good, source = cached_table(*args)
    assert source == "built"
    folder = os.path.join(cache, table_key(file, batches, False, torch.device("cpu")))
    table_file = os.path.join(folder, TABLE_FILE)
    with open(table_file, "r+b") as f:  # cut short, as a crash mid-write would leave it
        f.truncate(os.path.getsize(table_file) // 2)
    again, source = cached_table(*args)
    assert source == "built" and torch.equal(again, good)
    with open(table_file, "r+b") as f:  # one byte flipped: the digest no longer matches
        f.seek(os.path.getsize(table_file) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert cached_table(*args)[1] == "built"
    os.remove(os.path.join(folder, MANIFEST_FILE))  # a table without its manifest is not known whole
    assert cached_table(*args)[1] == "built"
    assert json.load(open(os.path.join(folder, MANIFEST_FILE)))["shape"] == list(good.shape)
    assert cached_table(*args)[1] == "read"


def test_concurrent_trials_build_a_table_once_and_the_others_read_it(digits_teacher, tmp_path):
    teacher = load_checkpoint(digits_teacher).eval()
    file = os.path.join(digits_teacher, CHECKPOINT_FILE)
    sources: list[str] = []
    tables: list[torch.Tensor] = []

    def one():
        table, source = cached_table(str(tmp_path / "cache"), file, teacher, _digits_batches(), 10, False,
                                     torch.contiguous_format)
        sources.append(source)
        tables.append(table)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sources) == ["built", "read", "read"]
    assert all(torch.equal(t, tables[0]) for t in tables)


def test_another_teacher_or_training_set_gets_another_table(cifar_root, cifar_teacher, digits_teacher, tmp_path):
    batches = _cifar_batches(cifar_root)
    file = os.path.join(cifar_teacher, CHECKPOINT_FILE)
    key = table_key(file, batches, False, torch.device("cpu"))
    other = build_long_tailed("cifar10", 2, root=cifar_root, options={"check_md5": False})
    assert table_key(file, make_loader(other.train, 16, True, seed=0, path="device"), False, torch.device("cpu")) != key
    assert table_key(os.path.join(digits_teacher, CHECKPOINT_FILE), batches, False, torch.device("cpu")) != key
    assert table_key(file, batches, True, torch.device("cpu")) != key  # autocast
    assert table_key(file, _cifar_batches(cifar_root), False, torch.device("cpu")) == key


def test_the_plan_line_counts_the_teacher_forwards_the_tables_save(tmp_path):
    from orchestrator.study.plan import AUGMENTED_VARIANTS, teacher_logits_line
    from orchestrator.study import expand, load_study
    from trainer.datasets import class_counts_of, long_tailed_counts

    study = load_study("studies/smoke.yaml")  # digits (no augmentation), γ 10 and 50, KD and LTKD, 3 seeds, 30 epochs
    trials = expand(study)
    counts = class_counts_of("digits")
    images = {g: sum(long_tailed_counts(min(counts), len(counts), g)) for g in (10, 50)}
    tables = 3 * (images[10] + images[50])  # one table per teacher (3 seeds x 2 γ), one row per image
    live = 30 * 2 * 3 * (images[10] + images[50])  # 2 methods x 3 seeds per γ, a teacher pass per epoch
    assert teacher_logits_line(trials) == (f"teacher logits: 12 students read 6 tables ({tables} teacher forwards per node "
                                           f"that trains them) instead of {live / 1e3:.1f}k live forwards")
    assert teacher_logits_line([t for t in trials if t.role != "distill"]) is None
    # CIFAR at 240 epochs: 162 rows per image; ReviewKD and CAT-KD keep the live teacher
    main = expand(load_study("studies/cifar100_lt_main.yaml"))
    line = teacher_logits_line(main)
    logit = [t for t in main if t.role == "distill" and t.config.method not in ("reviewkd", "catkd")]
    assert line.startswith(f"teacher logits: {len(logit)} students read ")
    # the plan's count of rows per image is the readers' own augmentation
    from trainer.datasets.cifar import CIFAR100_MEAN, CIFAR100_STD, _transforms
    from trainer.device_batches import parse_transform

    augmentation, _, _ = parse_transform(_transforms(CIFAR100_MEAN, CIFAR100_STD, True)[0])
    assert len(variants_of(augmentation, (32, 32))) == AUGMENTED_VARIANTS == 162
