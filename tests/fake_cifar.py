"""Small fake copies of torchvision's CIFAR files, for the readers' and the data paths' tests."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np


def write_pickle(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(base: Path, train_labels, train_pixels: np.ndarray, test_labels, test_pixels: np.ndarray) -> None:
    """cifar-10-batches-py as torchvision reads it: the training set in five batches (in order), the
    test batch and batches.meta. Pixels are uint8 rows of 3072 values (CHW flattened)."""
    per_batch = len(train_labels) // 5
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        write_pickle(base / f"data_batch_{b + 1}", {"batch_label": f"batch {b + 1}", "labels": list(train_labels[part]),
                                                    "data": train_pixels[part], "filenames": [""] * per_batch})
    write_pickle(base / "test_batch", {"batch_label": "test", "labels": list(test_labels), "data": test_pixels,
                                       "filenames": [""] * len(test_labels)})
    write_pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                                         "num_vis": 3072})
