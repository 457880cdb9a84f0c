"""Long-tailed profile, subset draw, dataset cut and the batch loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from trainer.data import build_long_tailed, long_tailed_counts, long_tailed_indices, make_loader


def _formula(n_max: int, C: int, gamma: float) -> list[int]:
    """DESIGN.md: class i of C keeps int(n_max * (1 / gamma) ** (i / (C - 1)))."""
    return [int(n_max * (1 / gamma) ** (i / (C - 1))) for i in range(C)]


# ---------------------------------------------------------------------------------------------
# long_tailed_counts
# ---------------------------------------------------------------------------------------------

def test_cifar100_gamma100():
    counts = long_tailed_counts(500, 100, 100)
    assert isinstance(counts, list) and len(counts) == 100
    assert all(isinstance(c, int) for c in counts)
    assert sum(counts) == 10_847
    assert counts[0] == 500 and counts[-1] == 5
    assert counts == sorted(counts, reverse=True)
    assert counts == _formula(500, 100, 100)


def test_gamma1_keeps_all():
    assert long_tailed_counts(500, 100, 1) == [500] * 100
    assert sum(long_tailed_counts(500, 100, 1.0)) == 50_000


def test_cifar10_gamma100():
    counts = long_tailed_counts(5000, 10, 100)
    assert counts == _formula(5000, 10, 100)
    # by hand: 5000 * 10 ** (-2 i / 9), truncated
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12_406


@pytest.mark.parametrize("n_max,C,gamma", [(5000, 10, 10), (5000, 10, 50), (500, 100, 10), (500, 100, 50), (144, 10, 10), (600, 200, 100)])
def test_counts_follow_formula(n_max, C, gamma):
    counts = long_tailed_counts(n_max, C, gamma)
    assert counts == _formula(n_max, C, gamma)
    assert counts[0] == n_max
    assert counts[-1] == int(n_max / gamma + 1e-9) or counts[-1] == int(n_max / gamma)


@pytest.mark.parametrize("gamma", [0.5, 0.99, 0, -3])
def test_gamma_below_one_raises(gamma):
    with pytest.raises(ValueError, match="gamma"):
        long_tailed_counts(500, 100, gamma)


# ---------------------------------------------------------------------------------------------
# long_tailed_indices
# ---------------------------------------------------------------------------------------------

def _targets() -> list[int]:
    rng = np.random.default_rng(0)
    t = np.repeat(np.arange(6), 40)
    return rng.permutation(t).tolist()


def test_indices_exact_per_class_counts_unique_sorted():
    targets = _targets()
    counts = long_tailed_counts(40, 6, 10)
    idx = long_tailed_indices(targets, counts, seed=0)
    assert len(idx) == sum(counts)
    assert len(set(idx)) == len(idx)
    assert idx == sorted(idx)
    assert all(isinstance(i, int) for i in idx)
    per_class = np.bincount(np.asarray(targets)[idx], minlength=6).tolist()
    assert per_class == counts


def test_indices_same_seed_same_different_seed_different():
    targets = _targets()
    counts = long_tailed_counts(40, 6, 10)
    a = long_tailed_indices(targets, counts, seed=3)
    b = long_tailed_indices(list(targets), list(counts), seed=3)
    c = long_tailed_indices(targets, counts, seed=4)
    assert a == b
    assert a != c
    assert np.bincount(np.asarray(targets)[c], minlength=6).tolist() == counts


def test_indices_too_many_requested_raises():
    with pytest.raises(ValueError):
        long_tailed_indices([0, 0, 1], [1, 2])


# ---------------------------------------------------------------------------------------------
# build_long_tailed
# ---------------------------------------------------------------------------------------------

def _class_hist(dataset, C) -> list[int]:
    ys = dataset.tensors[1] if isinstance(dataset, TensorDataset) else torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return torch.bincount(ys, minlength=C).tolist()


def test_digits_long_tailed():
    data = build_long_tailed("digits", 10)
    assert data.num_classes == 10 and data.in_channels == 1
    # the smallest digits class in the training pool is n_max
    from trainer.datasets import load_dataset

    pool = load_dataset("digits")
    n_min = int(np.bincount(pool.train_targets, minlength=10).min())
    assert data.class_counts == long_tailed_counts(n_min, 10, 10)
    assert _class_hist(data.train, 10) == data.class_counts
    assert len(data.train) == sum(data.class_counts) == len(data.train_indices)
    assert _class_hist(data.test, 10) == [30] * 10

    # the test set is the same whatever gamma; the train set shrinks
    other = build_long_tailed("digits", 100)
    assert other.class_counts == long_tailed_counts(n_min, 10, 100)
    assert torch.equal(other.test.tensors[0], data.test.tensors[0])
    assert torch.equal(other.test.tensors[1], data.test.tensors[1])
    assert sum(other.class_counts) < sum(data.class_counts)

    # deterministic split
    again = build_long_tailed("digits", 10)
    assert again.train_indices == data.train_indices
    assert torch.equal(again.train.tensors[0], data.train.tensors[0])


def test_synthetic_with_options():
    data = build_long_tailed("synthetic", 10, options={"num_classes": 20})
    assert data.num_classes == 20
    assert data.class_counts == long_tailed_counts(100, 20, 10)  # 100 training images per class by default
    assert _class_hist(data.train, 20) == data.class_counts
    hist = _class_hist(data.test, 20)
    assert len(set(hist)) == 1 and hist[0] > 0


# ---------------------------------------------------------------------------------------------
# make_loader
# ---------------------------------------------------------------------------------------------

def _dataset(n=103):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1) * 2.0
    y = torch.arange(n)
    return TensorDataset(x, y)


def _epoch(loader) -> list[int]:
    out = []
    for x, y in loader:
        assert torch.equal(x[:, 0], y.float() * 2.0)  # x and y stay paired
        out.extend(y.tolist())
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_every_sample_once_per_epoch(shuffle):
    loader = make_loader(_dataset(), batch_size=16, shuffle=shuffle, seed=0)
    assert len(loader) == 7
    for _ in range(3):
        order = _epoch(loader)
        assert sorted(order) == list(range(103))
    if not shuffle:
        assert _epoch(loader) == list(range(103))


def test_loader_same_seed_same_order_different_seed_different():
    a = make_loader(_dataset(), 16, True, seed=7)
    b = make_loader(_dataset(), 16, True, seed=7)
    c = make_loader(_dataset(), 16, True, seed=8)
    a1, a2 = _epoch(a), _epoch(a)
    b1, b2 = _epoch(b), _epoch(b)
    assert a1 == b1 and a2 == b2
    assert a1 != a2  # reshuffled every epoch
    assert a1 != list(range(103))
    assert _epoch(c) != a1


def test_loader_generic_dataset():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 37

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i

    a = [int(v) for _, y in make_loader(Plain(), 8, True, seed=1) for v in y]
    b = [int(v) for _, y in make_loader(Plain(), 8, True, seed=1) for v in y]
    assert sorted(a) == list(range(37)) and a == b
