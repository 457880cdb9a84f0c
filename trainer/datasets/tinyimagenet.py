"""Tiny ImageNet (200 classes, 64x64) from the standard `tiny-imagenet-200` folder, read lazily.

Layout (`root` may be the `tiny-imagenet-200` folder itself or the folder that holds it):

    wnids.txt                          the 200 class ids, one a line
    train/<wnid>/images/*.JPEG         500 training images per class
    val/images/*.JPEG                  10,000 validation images, 50 per class: the test set here
    val/val_annotations.txt            `filename<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h` per line

Class index = position of the wnid in sorted(wnids.txt), the order ImageFolder would give.
The balanced training set is cut to the gamma profile by `trainer.data.build_long_tailed`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; the readers build DataSplit from a local import
    from trainer.datasets import DataSplit

FOLDER = "tiny-imagenet-200"
NUM_CLASSES = 200
# Per-channel statistics of the Tiny ImageNet training images.
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)
LAYOUT = (
    "expected {d}/wnids.txt, {d}/train/<wnid>/images/*.JPEG, {d}/val/images/*.JPEG and "
    "{d}/val/val_annotations.txt (the standard tiny-imagenet-200 layout)"
)
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _find_folder(root: str) -> str | None:
    for candidate in (root, os.path.join(root, FOLDER)):
        if os.path.isfile(os.path.join(candidate, "wnids.txt")):
            return candidate
    return None


def _missing(name: str, root: str, folder: str, detail: str) -> FileNotFoundError:
    return FileNotFoundError(f"{name}: {detail} under {root}: {LAYOUT.format(d=folder)}")


def load(root: str | None = None, augment: bool = True) -> "DataSplit":
    from torchvision import transforms as T

    from trainer.datasets import DataSplit
    from trainer.datasets.imagenet import ImageList

    if root is None:
        raise FileNotFoundError(
            f"tinyimagenet: no data root given (data_root is unset): {LAYOUT.format(d='<root>/' + FOLDER)}"
        )
    root = os.path.expanduser(str(root))
    folder = _find_folder(root)
    if folder is None:
        raise _missing("tinyimagenet", root, os.path.join(root, FOLDER), "no Tiny ImageNet files (wnids.txt)")
    with open(os.path.join(folder, "wnids.txt"), encoding="utf-8") as f:
        wnids = sorted({line.strip() for line in f if line.strip()})
    if len(wnids) != NUM_CLASSES:
        raise ValueError(f"tinyimagenet: {folder}/wnids.txt lists {len(wnids)} classes, expected {NUM_CLASSES}")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    train_samples: list[tuple[str, int]] = []
    for wnid in wnids:
        images = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(images):
            raise _missing("tinyimagenet", root, folder, f"no training folder {images}")
        names = sorted(n for n in os.listdir(images) if n.lower().endswith(_IMAGE_EXTENSIONS))
        if not names:
            raise _missing("tinyimagenet", root, folder, f"no images in {images}")
        train_samples.extend((os.path.join(images, n), index[wnid]) for n in names)

    annotations = os.path.join(folder, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise _missing("tinyimagenet", root, folder, f"no validation annotations {annotations}")
    test_samples: list[tuple[str, int]] = []
    with open(annotations, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(f"{annotations}:{lineno}: expected 'filename<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h' "
                                 f"with a wnid of wnids.txt, got {line.strip()!r}")
            test_samples.append((os.path.join(folder, "val", "images", fields[0]), index[fields[1]]))
    if not test_samples:
        raise ValueError(f"tinyimagenet: {annotations} lists no images")
    if not os.path.isfile(test_samples[0][0]):
        raise _missing("tinyimagenet", root, folder, f"no validation image {test_samples[0][0]}")

    normalise = [T.ToTensor(), T.Normalize(TINY_MEAN, TINY_STD)]
    train_tf = T.Compose(([T.RandomCrop(64, padding=4), T.RandomHorizontalFlip()] if augment else []) + normalise)
    return DataSplit(
        train=ImageList(train_samples, train_tf),
        train_targets=[label for _, label in train_samples],
        test=ImageList(test_samples, T.Compose(normalise)),
        num_classes=NUM_CLASSES,
        in_channels=3,
    )
