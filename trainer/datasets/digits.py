"""scikit-learn's 8x8 digits (ships inside scikit-learn: no download), with a fixed balanced test set."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

if TYPE_CHECKING:  # annotations only; the readers build DataSplit from a local import
    from trainer.datasets import DataSplit

TEST_PER_CLASS = 30  # 300 balanced test images; the rest (about 150 per class) is the training pool
_SPLIT_SEED = 12345  # fixed: the train/test split is part of the dataset, not of a trial


def load(root: str | None = None, test_per_class: int = TEST_PER_CLASS) -> "DataSplit":
    from sklearn.datasets import load_digits

    from trainer.datasets import DataSplit

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    targets = bunch.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    test_idx = np.concatenate(
        [rng.choice(np.flatnonzero(targets == c), size=test_per_class, replace=False) for c in range(10)]
    )
    test_mask = np.zeros(len(targets), dtype=bool)
    test_mask[test_idx] = True
    mean, std = images[~test_mask].mean(), images[~test_mask].std()
    x = torch.from_numpy((images - mean) / std).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(targets)
    train_mask = torch.from_numpy(~test_mask)
    test_mask_t = torch.from_numpy(test_mask)
    return DataSplit(
        train=TensorDataset(x[train_mask], y[train_mask]),
        train_targets=y[train_mask].tolist(),
        test=TensorDataset(x[test_mask_t], y[test_mask_t]),
        num_classes=10,
        in_channels=1,
    )
