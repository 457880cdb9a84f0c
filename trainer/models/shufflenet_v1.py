"""ShuffleNet V1 (Zhang et al. 2018), the CIFAR variant of the KD literature (CRD / mdistiller "ShuffleV1").

Stem: a 1x1 conv to 24 channels + BN + ReLU at full resolution (no down-sampling). Then three stages
with output widths 240 / 480 / 960, 4 / 8 / 4 units, 3 groups; each stage starts with a stride-2
unit whose output is concatenated with a 3x3 average-pooled shortcut (so its residual branch
produces `out - in` channels); the other units add an identity shortcut. The first pointwise conv
after the 24-channel stem is ungrouped. Global average pooling and a linear classifier follow.

    shufflenet_v1 : 949,258 parameters at 100 classes
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.common import ThreeStageNet


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups' channels."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 conv -> channel shuffle -> 3x3 depthwise conv -> grouped 1x1 conv, plus a shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_group: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.first_group = first_group
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_group, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.avgpool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, the unit's result before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_group)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.avgpool is not None:
            pre = torch.cat([out, self.avgpool(x)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[0]


class ShuffleNetV1(ThreeStageNet):
    """ShuffleNet V1 for 32x32 inputs.

    `forward_features(x)` returns `(feats, logits)` with `feats = [stem, stage1, stage2, stage3, pooled]`:
      - `stem`   : 1x1 stem conv + BN + ReLU, 24 channels, full resolution;
      - `stage1` : 240 channels, 1/2 resolution;
      - `stage2` : 480 channels, 1/4 resolution;
      - `stage3` : 960 channels, 1/8 resolution -- the last conv feature map before pooling;
      - `pooled` : globally average-pooled `stage3`, shape (N, 960), the classifier's input.
    All maps are post-ReLU unit outputs; with `preact=True` the three stage maps are the last unit's
    result before its ReLU. `feature_channels()` lists the channel count of each entry.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        stem_planes: int = 24,
    ):
        super().__init__()
        self.out_planes = tuple(out_planes)
        self.stem_planes = stem_planes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_planes, 1, bias=False), nn.BatchNorm2d(stem_planes), nn.ReLU(inplace=True)
        )
        stages = []
        in_planes = stem_planes
        for s, (planes, blocks) in enumerate(zip(out_planes, num_blocks)):
            units = []
            for i in range(blocks):
                if i == 0:  # stride 2, concatenation: the branch makes the missing channels
                    first_group = 1 if s == 0 else groups
                    units.append(ShuffleUnit(in_planes, planes - in_planes, 2, groups, first_group))
                else:
                    units.append(ShuffleUnit(planes, planes, 1, groups, groups))
            stages.append(nn.Sequential(*units))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_planes[2], num_classes)
        # PyTorch's default initialisation, as the CIFAR zoo's ShuffleNetV1.

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, three stages, pooled vector."""
        return [self.stem_planes, *self.out_planes, self.out_planes[2]]


def shufflenet_v1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels)
