"""Long-tailed training subsets (the LDAM-DRW profile) over any dataset the registry knows."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

# long_tailed_counts lives with the datasets' declarations (no PyTorch): study validation checks the
# profile against the class counts with it. It is this module's contract too (`trainer.data.long_tailed_counts`).
from trainer.datasets import DataSplit, load_dataset, long_tailed_counts  # noqa: F401

# The split seed is fixed and separate from the training seed: every trial, seed and machine trains
# on the same long-tailed subset, so seeds vary only the optimisation.
DEFAULT_SPLIT_SEED = 0


def long_tailed_indices(targets: Sequence[int], counts: Sequence[int], seed: int = DEFAULT_SPLIT_SEED) -> list[int]:
    """Indices of a long-tailed subset: for class c, `counts[c]` images drawn without replacement.

    The draw uses its own NumPy generator seeded with `seed` and visits classes in order, so the
    same targets and counts give the same subset on every machine. Returned sorted.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls, keep in enumerate(counts):
        members = np.flatnonzero(targets == cls)
        if keep > len(members):
            raise ValueError(f"class {cls} has {len(members)} training images, the profile asks for {keep}")
        chosen.append(rng.choice(members, size=keep, replace=False))
    return sorted(int(i) for i in np.concatenate(chosen)) if chosen else []


def balanced_indices(targets: Sequence[int], per_class: int, num_classes: int, seed: int) -> list[int]:
    """Indices of a balanced subset: `per_class` images of every class, drawn as `long_tailed_indices`
    draws (its own generator, classes in order), so the same set on every machine. Sorted."""
    have = np.bincount(np.asarray(targets), minlength=num_classes)
    short = np.flatnonzero(have < per_class)
    if short.size:
        cls = int(short[0])
        raise ValueError(f"class {cls} has {int(have[cls])} training images; a validation split of {per_class} per class "
                         "would leave it none to train on")
    return long_tailed_indices(targets, [per_class] * num_classes, seed=seed)


# The validation draw has its own seed stream, apart from the long-tailed cut's (split_seed).
VALIDATION_SEED_OFFSET = 7919


@dataclass
class LongTailedData:
    """The data of one trial: long-tailed train subset, balanced test set, and their bookkeeping."""

    train: Dataset
    test: Dataset
    class_counts: list[int]  # training images per class after the long-tailed cut
    train_indices: list[int]  # which images of the full training set were kept (recorded for reproducibility)
    num_classes: int
    in_channels: int
    # A balanced validation set (searches choose on it, never on the test set), or None.
    validation: Dataset | None = None
    validation_indices: list[int] | None = None  # indices into the full training set; None for an official list


def build_long_tailed(
    dataset: str,
    gamma: float,
    root: str | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    n_max: int | None = None,
    options: dict | None = None,
    validation_per_class: int = 0,
) -> LongTailedData:
    """Load `dataset` from the registry and cut its training set to the gamma profile.

    A split marked `presplit` (already long-tailed, e.g. ImageNet-LT's list) is kept whole: its
    per-class counts are reported as they are, and gamma and n_max are not applied.

    validation_per_class > 0 holds a balanced validation set out of the full training set before
    the long-tailed cut (that many images of every class, drawn with a fixed seed), and the cut is
    drawn from the rest; a presplit set uses its own validation list instead.
    """
    split: DataSplit = load_dataset(dataset, root=root, **(options or {}))
    per_class = np.bincount(np.asarray(split.train_targets), minlength=split.num_classes)
    if validation_per_class < 0:
        raise ValueError(f"validation_per_class must be >= 0, got {validation_per_class}")
    if split.presplit:
        validation = None
        if validation_per_class:
            if split.validation is None:
                raise ValueError(f"dataset {dataset!r} is already long-tailed and has no validation list here "
                                 "(ImageNet-LT: ImageNet_LT_val.txt beside the train list, with test_split: test)")
            validation = split.validation
        return LongTailedData(
            split.train, split.test, [int(c) for c in per_class], list(range(len(split.train_targets))),
            split.num_classes, split.in_channels, validation,
        )
    targets = np.asarray(split.train_targets)
    val_indices: list[int] | None = None
    if validation_per_class:
        val_indices = balanced_indices(targets, validation_per_class, split.num_classes,
                                       seed=split_seed + VALIDATION_SEED_OFFSET)
        targets = targets.copy()
        targets[val_indices] = -1  # not drawable by the long-tailed cut
        per_class = np.bincount(targets[targets >= 0], minlength=split.num_classes)
    top = int(n_max if n_max is not None else per_class.min())
    counts = long_tailed_counts(top, split.num_classes, gamma)
    indices = long_tailed_indices(targets, counts, seed=split_seed)
    train, validation = _subset(split.train, indices), None
    if val_indices is not None:
        validation = without_augmentation(_subset(split.train, val_indices), split.test)
    return LongTailedData(train, split.test, counts, indices, split.num_classes, split.in_channels, validation, val_indices)


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    if isinstance(dataset, TensorDataset):
        # Materialise in-memory subsets so batches are one tensor index, not B item lookups.
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices)


def without_augmentation(train: Dataset, test: Dataset) -> Dataset:
    """The training images as the test set sees them: the train set's view with the test transform.

    On-disk readers (torchvision datasets, image lists) hold a `transform`; a shallow copy of the
    training dataset with the test set's transform shares the images and changes only how they are
    read. In-memory tensor datasets have no augmentation and are returned as they are."""
    import copy

    base, indices = (train.dataset, train.indices) if isinstance(train, Subset) else (train, None)
    if not hasattr(base, "transform") or not hasattr(test, "transform"):
        return train
    plain = copy.copy(base)
    plain.transform = test.transform
    if hasattr(plain, "transforms") and hasattr(test, "transforms"):  # torchvision's VisionDataset keeps both
        plain.transforms = test.transforms
    return Subset(plain, indices) if indices is not None else plain


class _TensorBatches:
    """Batches of an in-memory TensorDataset by tensor indexing: far cheaper than a DataLoader here."""

    def __init__(self, dataset: TensorDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None):
        self.tensors = dataset.tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return (len(self.tensors[0]) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, pin_memory: bool = False,
                device: torch.device | str | None = None, path: str = "loader"):
    """An iterable of (x, y) batches, shuffled by a generator seeded from the trial's seed.

    path: "loader" (a DataLoader, or tensor indexing for in-memory tensors), "device" (the
    device-resident path on `device`, `trainer.device_batches`; ValueError when the set is not an
    in-memory image set it reads exactly) or "auto" (the device path where it applies, else the
    loader: for passes that draw nothing, where both give the same batches)."""
    if path not in ("loader", "device", "auto"):
        raise ValueError(f"data path {path!r}: allowed are loader, device, auto")
    if path != "loader":
        from trainer.device_batches import device_batches

        batches = device_batches(dataset, batch_size, shuffle, seed, device if device is not None else "cpu")
        if batches is not None:
            return batches
        if path == "device":
            raise ValueError(f"the device data path cannot read this {type(dataset).__name__} (it reads in-memory tensors and "
                             "image sets whose transform is [RandomCrop] [RandomHorizontalFlip] ToTensor Normalize)")
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset):
        return _TensorBatches(dataset, batch_size, shuffle, generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=False,
    )
