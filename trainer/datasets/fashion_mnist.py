"""Fashion-MNIST from its idx files, parsed here with NumPy, returned as in-memory tensors.

`root` holds `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`
and `t10k-labels-idx1-ubyte.gz` (the uncompressed names without `.gz` are read too); the default
root is where Debian's `dataset-fashion-mnist` package puts them. 60,000 training and 10,000 test
images, 10 classes, [N, 1, 28, 28], normalised with the real training set's mean and std (fixed constants). In-memory
TensorDatasets (like `digits`) keep training fast; there is no augmentation.
"""
from __future__ import annotations

import gzip
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only; the readers build DataSplit from a local import
    from trainer.datasets import DataSplit

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
# Pixel statistics of the 60,000 training images (pixel values scaled to 0..1).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
IMAGES_MAGIC = 2051  # idx3: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # idx1: unsigned byte, 1 dimension
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str, magic: int) -> np.ndarray:
    """An idx file (gzip or plain) as a uint8 array: big-endian int32 magic, dims, then the bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    header = np.frombuffer(raw, dtype=">i4", count=1)
    if len(raw) < 4 or int(header[0]) != magic:
        found = int(header[0]) if len(raw) >= 4 else None
        raise ValueError(f"{path}: idx magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    size = int(np.prod(dims))
    if len(raw) - offset != size:
        raise ValueError(f"{path}: header says {dims} ({size} bytes), the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load(root: str | None = None) -> "DataSplit":
    import torch
    from torch.utils.data import TensorDataset

    from trainer.datasets import DataSplit

    root = os.path.expanduser(str(root)) if root is not None else DEFAULT_ROOT
    paths = {key: _find(root, stem) for key, stem in FILES.items()}
    missing = [FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"fashion_mnist: no Fashion-MNIST files under {root}: expected {root}/"
            f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz (or without .gz; missing: {', '.join(missing)}); "
            f"on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them in {DEFAULT_ROOT}"
        )
    tensors = {}
    for part in ("train", "test"):
        images = read_idx(paths[(part, "images")], IMAGES_MAGIC)
        labels = read_idx(paths[(part, "labels")], LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"fashion_mnist: {len(images)} {part} images but {len(labels)} labels under {root}")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise ValueError(f"fashion_mnist: {part} label {int(labels.max())} is outside 0..{NUM_CLASSES - 1}")
        x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(FASHION_MEAN).div_(FASHION_STD)
        tensors[part] = (x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    x_train, y_train = tensors["train"]
    return DataSplit(
        train=TensorDataset(x_train, y_train),
        train_targets=y_train.tolist(),
        test=TensorDataset(*tensors["test"]),
        num_classes=NUM_CLASSES,
        in_channels=1,
    )
