"""Dataset readers, one module per source, found through the plain dict `DATASETS`.

A reader returns a `DataSplit` (full training set, balanced test set, targets, shape facts).
`DATASET_INFO` holds what validation needs without reading any file (number of classes).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class DataSplit:
    train: Dataset
    train_targets: list[int]
    test: Dataset
    num_classes: int
    in_channels: int


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int | None  # None: set by the dataset's options (see `num_classes_of`)
    in_channels: int
    description: str


from trainer.datasets import digits, synthetic  # noqa: E402  (registry entries below need the modules)

DATASETS: dict[str, Callable[..., DataSplit]] = {
    "digits": digits.load,
    "synthetic": synthetic.load,
}

DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, "scikit-learn's 8x8 handwritten digits, offline (1,797 images)"),
    "synthetic": DatasetInfo(None, 1, "generated in code: learnable class prototypes plus noise, deterministic by seed"),
}


def num_classes_of(name: str, options: dict | None = None) -> int:
    info = DATASET_INFO[name]
    if info.num_classes is not None:
        return info.num_classes
    return int((options or {}).get("num_classes", synthetic.DEFAULT_NUM_CLASSES))


def load_dataset(name: str, root: str | None = None, **options) -> DataSplit:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root=root, **options)
