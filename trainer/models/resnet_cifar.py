"""CIFAR ResNets of the knowledge-distillation literature (the CRD / RepDistiller / mdistiller zoo).

Layout: a 3x3 stem conv (stride 1) + BN + ReLU, three stages of BasicBlocks at strides 1/2/2, global
average pooling and a linear classifier. `depth = 6n + 2` gives `n` blocks per stage. A stage's first
block gets a 1x1-conv + BN projection shortcut when its stride or width changes.

    resnet20   : depth 20, stem 16, stages 16/32/64    (278,324 parameters at 100 classes)
    resnet56   : depth 56, stem 16, stages 16/32/64    (861,620)
    resnet8x4  : depth 8,  stem 32, stages 64/128/256  (1,233,540)
    resnet32x4 : depth 32, stem 32, stages 64/128/256  (7,433,860)
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.common import ThreeStageNet, init_conv_bn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut; ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, the sum before the final ReLU)."""
        out = self.relu(self.bn1(self.conv1(x)))
        pre = self.bn2(self.conv2(out)) + self.shortcut(x)
        return torch.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(ThreeStageNet):
    """ResNet for 32x32 inputs.

    `forward_features(x)` returns `(feats, logits)` with
    `feats = [stem, stage1, stage2, stage3, pooled]`:
      - `stem`   : output of the stem conv+BN+ReLU, `widths[0]` channels, full input resolution;
      - `stage1` : `widths[1]` channels, full resolution;
      - `stage2` : `widths[2]` channels, 1/2 resolution;
      - `stage3` : `widths[3]` channels, 1/4 resolution -- the last conv feature map before pooling;
      - `pooled` : the globally average-pooled `stage3`, shape (N, widths[3]), the classifier's input.
    All maps are post-ReLU block outputs; with `preact=True` the three stage maps are the last
    block's sums before its ReLU. `feature_channels()` lists the channel count of each entry.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 for a BasicBlock CIFAR ResNet, got {depth}")
        n = (depth - 2) // 6
        self.widths = tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, three stages, pooled vector."""
        return [self.widths[0], self.widths[1], self.widths[2], self.widths[3], self.widths[3]]


def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, (16, 16, 32, 64), num_classes, in_channels)


def resnet8x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_channels)


def resnet32x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_channels)
