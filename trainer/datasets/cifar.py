"""CIFAR-10 and CIFAR-100 read with torchvision from its usual on-disk layout.

`root` is the folder that holds `cifar-10-batches-py/` or `cifar-100-python/` (torchvision's
layout, the unpacked python tarballs). Nothing is downloaded unless the option `download: true`
is given. The full, balanced training set is returned; `trainer.data.build_long_tailed` cuts it
to the gamma profile. The test set (10,000 images) stays balanced.

torchvision checks every file's md5 before reading it: a copy that is present but altered is
refused with a RuntimeError, re-raised here with the dataset's name and root. The option
`check_md5: false` reads the files without that check (re-packed copies, and the small fake copies
the tests write in torchvision's format); the files must still exist.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; the readers build DataSplit from a local import
    from trainer.datasets import DataSplit

# Per-channel statistics of the training images (the values used throughout the CIFAR literature).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _transforms(mean, std, augment: bool):
    from torchvision import transforms as T

    normalise = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []) + normalise)
    return train, T.Compose(normalise)


def _expected_files(cls) -> list[str]:
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [os.path.join(cls.base_folder, name) for name in names]


def _without_md5(cls):
    """The torchvision class with its md5 checks turned into existence checks."""

    class Unchecked(cls):
        def _check_integrity(self) -> bool:
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Unchecked.__name__ = cls.__name__
    return Unchecked


def _load(name: str, label: str, cls, num_classes: int, mean, std, root: str | None, download: bool, augment: bool,
          check_md5: bool = True) -> "DataSplit":
    from trainer.datasets import DataSplit

    files = _expected_files(cls)
    if root is None:
        raise FileNotFoundError(
            f"{name}: no data root given (data_root is unset): expected <root>/{cls.base_folder}/"
            f"{{{','.join(os.path.basename(f) for f in files)}}} (torchvision's layout); "
            f"set data_root and pass download: true to fetch them"
        )
    root = os.path.expanduser(str(root))
    if not download:
        missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
        if missing:
            raise FileNotFoundError(
                f"{name}: no {label} files under {root}: expected {os.path.join(root, cls.base_folder)}/"
                f"{{{','.join(os.path.basename(f) for f in files)}}} (torchvision's layout; missing: "
                f"{', '.join(os.path.basename(f) for f in missing)}); pass download: true to fetch them"
            )
    train_tf, test_tf = _transforms(mean, std, augment)
    if not check_md5:
        cls = _without_md5(cls)
    try:
        train = cls(root, train=True, transform=train_tf, download=download)
        test = cls(root, train=False, transform=test_tf, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" (md5 mismatch)
        raise RuntimeError(f"{name}: {label} files under {root} failed torchvision's md5 check: {err}") from err
    return DataSplit(
        train=train,
        train_targets=[int(t) for t in train.targets],
        test=test,
        num_classes=num_classes,
        in_channels=3,
    )


def load_cifar10(root: str | None = None, download: bool = False, augment: bool = True, check_md5: bool = True) -> "DataSplit":
    """CIFAR-10: 50,000 training and 10,000 test images, 10 classes, 3x32x32."""
    from torchvision.datasets import CIFAR10

    return _load("cifar10", "CIFAR-10", CIFAR10, 10, CIFAR10_MEAN, CIFAR10_STD, root, download, augment, check_md5)


def load_cifar100(root: str | None = None, download: bool = False, augment: bool = True, check_md5: bool = True) -> "DataSplit":
    """CIFAR-100: 50,000 training and 10,000 test images, 100 fine classes, 3x32x32."""
    from torchvision.datasets import CIFAR100

    return _load("cifar100", "CIFAR-100", CIFAR100, 100, CIFAR100_MEAN, CIFAR100_STD, root, download, augment, check_md5)
