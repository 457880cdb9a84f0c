"""A small CNN for the offline datasets (8x8 digits, synthetic images): width sets its capacity."""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.common import sequential_preact


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([block1, block2], logits); with preact=True both maps are taken before their ReLU."""
        if not preact:
            f1 = self.block1(x)
            f2 = self.block2(f1)
            logits = self.fc(torch.flatten(self.pool(f2), 1))
            return [f1, f2], logits
        f1, pre1 = sequential_preact(self.block1, x)
        f2, pre2 = sequential_preact(self.block2, f1)
        return [pre1, pre2], self.fc(torch.flatten(self.pool(f2), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def cnn_w32(num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=32)


def cnn_w16(num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=16)


def cnn_w8(num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=8)


def cnn_w4(num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=4)
