"""ImageNet-LT (the OLTR split lists) and ImageNet-1k (class folders), read lazily from disk.

`imagenet_lt`: the split files of Liu et al. (OLTR, CVPR 2019), one `relative/path.JPEG label` per
line, paths relative to `root` (the ImageNet folder that holds `train/` and `val/`):

    <split_dir>/ImageNet_LT_train.txt   115,846 images, 1,280 down to 5 per class
    <split_dir>/ImageNet_LT_test.txt    50,000 images, 50 per class (the ImageNet val set)
    <split_dir>/ImageNet_LT_val.txt     20,000 images, 20 per class (option test_split: val)

`split_dir` defaults to `root`. The OLTR training list is already long-tailed, so the DataSplit
is marked `presplit`: `trainer.data.build_long_tailed` keeps every listed image, reports the
per-class counts of the list and ignores gamma and n_max. Only with the option
`apply_gamma: true` is the list cut further to the gamma profile like any balanced set would be
(n_max = the smallest class count of the list, i.e. 5: rarely what one wants).

`imagenet`: torchvision ImageFolder over `root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG`
(the validation images sorted into class folders, as most ImageNet preparation scripts do); the
balanced training set is cut to the gamma profile by `build_long_tailed`.

Both use the usual ImageNet transforms: RandomResizedCrop + flip for training; Resize(256/224 of
the size) + CenterCrop for testing; the option `image_size` (default 224) scales both.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

if TYPE_CHECKING:  # annotations only; the readers build DataSplit from a local import
    from trainer.datasets import DataSplit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
LT_SPLIT_FILES = {
    "train": "ImageNet_LT_train.txt",
    "test": "ImageNet_LT_test.txt",
    "val": "ImageNet_LT_val.txt",
}


class ImageList(Dataset):
    """Images named by a list of (path, label), opened with PIL as RGB when indexed."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def imagenet_transforms(image_size: int = 224, augment: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(train, test) transforms: RandomResizedCrop + flip; Resize(size * 256/224) + CenterCrop."""
    from torchvision import transforms as T

    normalise = [T.ToTensor(), T.Normalize(mean, std)]
    if augment:
        train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + normalise)
    else:
        train = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + normalise)
    test = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + normalise)
    return train, test


def read_split_file(path: str, root: str, num_classes: int = NUM_CLASSES) -> list[tuple[str, int]]:
    """Parse an OLTR split file: one `relative/path label` per line; paths joined onto `root`."""
    samples: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'relative/path.JPEG label', got {line!r}")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f"{path}:{lineno}: label {label} is outside 0..{num_classes - 1}")
            samples.append((os.path.join(root, parts[0]), label))
    if not samples:
        raise ValueError(f"{path}: the split file lists no images")
    return samples


def load_imagenet_lt(
    root: str | None = None,
    split_dir: str | None = None,
    test_split: str = "test",
    image_size: int = 224,
    augment: bool = True,
    apply_gamma: bool = False,
) -> "DataSplit":
    """ImageNet-LT: the OLTR training list (already long-tailed) and its test or val list."""
    from trainer.datasets import DataSplit

    if test_split not in ("test", "val"):
        raise ValueError(f"imagenet_lt: test_split must be 'test' or 'val', got {test_split!r}")
    layout = (
        "expected <split_dir>/ImageNet_LT_{train,test,val}.txt (OLTR split lists, split_dir defaults to root) "
        "listing 'relative/path.JPEG label' lines, with the images at <root>/<relative/path> "
        "(e.g. <root>/train/n01440764/n01440764_10026.JPEG)"
    )
    if root is None:
        raise FileNotFoundError(f"imagenet_lt: no data root given (data_root is unset): {layout}")
    root = os.path.expanduser(str(root))
    split_dir = os.path.expanduser(str(split_dir)) if split_dir is not None else root
    paths = {s: os.path.join(split_dir, LT_SPLIT_FILES[s]) for s in ("train", test_split)}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"imagenet_lt: no ImageNet-LT split files under {split_dir} (root {root}): {layout}; "
            f"missing: {', '.join(missing)}"
        )
    train_samples = read_split_file(paths["train"], root)
    test_samples = read_split_file(paths[test_split], root)
    for name, samples in (("train", train_samples), (test_split, test_samples)):
        first = samples[0][0]
        if not os.path.isfile(first):  # one probe, not 160k stats: catches a wrong root
            raise FileNotFoundError(
                f"imagenet_lt: {LT_SPLIT_FILES[name]} lists {first}, which does not exist: {layout}"
            )
    train_tf, test_tf = imagenet_transforms(image_size, augment)
    # The official validation list, for searches (never the test set): only when it is not the test set here.
    val_file = os.path.join(split_dir, LT_SPLIT_FILES["val"])
    validation = (ImageList(read_split_file(val_file, root), test_tf)
                  if test_split == "test" and os.path.isfile(val_file) else None)
    return DataSplit(
        train=ImageList(train_samples, train_tf),
        train_targets=[label for _, label in train_samples],
        test=ImageList(test_samples, test_tf),
        num_classes=NUM_CLASSES,
        in_channels=3,
        presplit=not apply_gamma,
        validation=validation,
    )


def load_imagenet(root: str | None = None, image_size: int = 224, augment: bool = True) -> "DataSplit":
    """ImageNet-1k from class folders `root/train` and `root/val`; num_classes = the class folders found."""
    from trainer.datasets import DataSplit

    layout = (
        "expected <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (class folders; "
        "the validation images must be sorted into their class folders)"
    )
    if root is None:
        raise FileNotFoundError(f"imagenet: no data root given (data_root is unset): {layout}")
    root = os.path.expanduser(str(root))
    missing = [d for d in ("train", "val") if not os.path.isdir(os.path.join(root, d))]
    if missing:
        raise FileNotFoundError(f"imagenet: no ImageNet folders under {root} (missing: {', '.join(missing)}): {layout}")
    from torchvision.datasets import ImageFolder

    train_tf, test_tf = imagenet_transforms(image_size, augment)
    try:
        train = ImageFolder(os.path.join(root, "train"), transform=train_tf)
        test = ImageFolder(os.path.join(root, "val"), transform=test_tf)
    except FileNotFoundError as err:  # ImageFolder: no class folders, or a class without images
        raise FileNotFoundError(f"imagenet: {err}: {layout}") from err
    if train.classes != test.classes:
        raise ValueError(
            f"imagenet: the class folders of {root}/train ({len(train.classes)}) and {root}/val "
            f"({len(test.classes)}) differ; {layout}"
        )
    return DataSplit(
        train=train,
        train_targets=[int(t) for t in train.targets],
        test=test,
        num_classes=len(train.classes),
        in_channels=3,
    )
