"""A learnable many-class image dataset generated in code (no download), deterministic by seed.

Each class has a smooth random prototype image; samples are the prototype under a random shift
plus noise. With 100 classes it makes n(G) up to 100 meaningful on a CPU in seconds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from trainer.datasets import DATASET_INFO

if TYPE_CHECKING:
    from trainer.datasets import DataSplit

DEFAULT_NUM_CLASSES = DATASET_INFO["synthetic"].default_num_classes  # declared beside the other datasets' facts


def _prototypes(num_classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(num_classes, 1, size // 2, size // 2, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _samples(protos: torch.Tensor, per_class: int, noise: float, generator: torch.Generator):
    num_classes, _, size, _ = protos.shape
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = protos[labels]
    shifts = torch.randint(-1, 2, (len(labels), 2), generator=generator)
    x = torch.stack([torch.roll(img, shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
    x = x + noise * torch.randn(x.shape, generator=generator)
    return x, labels


def load(
    root: str | None = None,
    num_classes: int = DEFAULT_NUM_CLASSES,
    train_per_class: int = 100,
    test_per_class: int = 20,
    image_size: int = 8,
    noise: float = 1.0,
    seed: int = 0,
) -> "DataSplit":
    from trainer.datasets import DataSplit

    generator = torch.Generator().manual_seed(seed)
    protos = _prototypes(num_classes, image_size, generator)
    x_train, y_train = _samples(protos, train_per_class, noise, generator)
    x_test, y_test = _samples(protos, test_per_class, noise, generator)
    return DataSplit(
        train=TensorDataset(x_train, y_train),
        train_targets=y_train.tolist(),
        test=TensorDataset(x_test, y_test),
        num_classes=num_classes,
        in_channels=1,
    )
