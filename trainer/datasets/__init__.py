"""Dataset readers, one module per source, found through the registry `DATASETS`.

A reader returns a `DataSplit` (full training set, balanced test set, targets, shape facts).
`DATASET_INFO` holds what validation needs without reading any file (number of classes); neither it
nor the registry's names import a reader (or PyTorch): a reader's module is imported on first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainer.registry import LazyRegistry

if TYPE_CHECKING:
    from torch.utils.data import Dataset


@dataclass
class DataSplit:
    train: Dataset
    train_targets: list[int]
    test: Dataset
    num_classes: int
    in_channels: int
    # True: `train` is already long-tailed (e.g. the ImageNet-LT list): build_long_tailed keeps it
    # whole, reports its per-class counts and ignores gamma and n_max.
    presplit: bool = False
    # A presplit set's own validation list (ImageNet-LT's): what a search evaluates on. Sets cut to
    # the γ profile hold their validation images out of `train` instead (trainer.data).
    validation: Dataset | None = None


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int | None  # None: set by the dataset's `num_classes` option (see `num_classes_of`)
    in_channels: int
    description: str
    default_num_classes: int | None = None  # with num_classes None: the option's default
    # The training set is read with random crops and flips (unless the reader's `augment: false`).
    augments: bool = False
    # Small enough to be held in memory: the device-resident path (`trainer.device_batches`) serves
    # it by default; False: read per batch by a DataLoader (ImageNet-size folders).
    in_memory: bool = True


# name -> reader(root=..., **options) -> DataSplit
DATASETS = LazyRegistry({
    "digits": "trainer.datasets.digits:load",
    "synthetic": "trainer.datasets.synthetic:load",
    "cifar10": "trainer.datasets.cifar:load_cifar10",
    "cifar100": "trainer.datasets.cifar:load_cifar100",
    "tinyimagenet": "trainer.datasets.tinyimagenet:load",
    "imagenet_lt": "trainer.datasets.imagenet:load_imagenet_lt",
    "imagenet": "trainer.datasets.imagenet:load_imagenet",
    "fashion_mnist": "trainer.datasets.fashion_mnist:load",
})

DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, "scikit-learn's 8x8 handwritten digits, offline (1,797 images)"),
    "synthetic": DatasetInfo(None, 1, "generated in code: learnable class prototypes plus noise, deterministic by seed",
                             default_num_classes=100),
    "cifar10": DatasetInfo(10, 3, "CIFAR-10 via torchvision from <root>/cifar-10-batches-py (50,000 train, 10,000 test, 32x32)", augments=True),
    "cifar100": DatasetInfo(100, 3, "CIFAR-100 via torchvision from <root>/cifar-100-python (50,000 train, 10,000 test, 32x32)", augments=True),
    "tinyimagenet": DatasetInfo(200, 3, "Tiny ImageNet from <root>/tiny-imagenet-200 (100,000 train, 10,000 val as test, 64x64)", augments=True),
    "imagenet_lt": DatasetInfo(1000, 3, "ImageNet-LT: OLTR split lists over ImageNet, already long-tailed (gamma not applied)",
                             augments=True, in_memory=False),
    "imagenet": DatasetInfo(1000, 3, "ImageNet-1k class folders <root>/train and <root>/val, cut to the gamma profile",
                             augments=True, in_memory=False),
    "fashion_mnist": DatasetInfo(10, 1, "Fashion-MNIST idx files, in memory (60,000 train, 10,000 test, 28x28)"),
}


def num_classes_of(name: str, options: dict | None = None) -> int:
    info = DATASET_INFO[name]
    if info.num_classes is not None:
        return info.num_classes
    return int((options or {}).get("num_classes", info.default_num_classes))


def long_tailed_counts(n_max: int, num_classes: int, gamma: float) -> list[int]:
    """Images kept per class: class i of C keeps int(n_max * (1/gamma) ** (i / (C - 1)))."""
    if gamma < 1:
        raise ValueError(f"gamma = {gamma} is not allowed: the imbalance factor must be >= 1")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need n_max >= 1 and num_classes >= 1, got n_max={n_max}, num_classes={num_classes}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / gamma) ** (i / (num_classes - 1))) for i in range(num_classes)]


# Images per class in scikit-learn's digits (all 1,797); the reader holds `test_per_class` of each out as the test set.
DIGITS_CLASS_IMAGES = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def class_counts_of(name: str, options: dict | None = None) -> list[int] | None:
    """Training images per class of the full training set, where the source fixes them (no file is
    read), so that a study's long-tailed profile can be checked against them at validation; None
    where only the files tell (ImageNet folders) or gamma is not applied (ImageNet-LT's list)."""
    options = options or {}
    fixed = {"cifar10": (10, 5000), "cifar100": (100, 500), "tinyimagenet": (200, 500), "fashion_mnist": (10, 6000)}
    if name in fixed:
        classes, per_class = fixed[name]
        return [per_class] * classes
    if name == "digits":
        return [n - int(options.get("test_per_class", 30)) for n in DIGITS_CLASS_IMAGES]
    if name == "synthetic":
        return [int(options.get("train_per_class", 100))] * num_classes_of(name, options)
    return None


DATA_PATHS = ("auto", "device", "loader")


def data_path_of(name: str, requested: str = "auto") -> str:
    """The training data path a trial of dataset `name` takes ("device" or "loader") for the
    recipe's `data_path`: "auto" is the device path for in-memory sets and the loader for the others."""
    if requested not in DATA_PATHS:
        raise ValueError(f"data_path {requested!r}: allowed are {', '.join(DATA_PATHS)}")
    info = DATASET_INFO[name]
    if requested == "device" and not info.in_memory:
        raise ValueError(f"dataset {name!r} is read from image folders per batch, not held in memory: the device path "
                         "cannot serve it; use auto or loader")
    if requested == "auto":
        return "device" if info.in_memory else "loader"
    return requested


def load_dataset(name: str, root: str | None = None, **options) -> DataSplit:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root=root, **options)
