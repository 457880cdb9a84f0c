"""Wide residual networks (Zagoruyko & Komodakis) for 32x32 inputs, as used in the KD literature.

WRN-d-k: a 3x3 stem conv to 16 channels, three stages of `n = (d - 4) / 6` pre-activation basic blocks
with widths 16k / 32k / 64k at strides 1 / 2 / 2, a final BN + ReLU, global average pooling and a
linear classifier. A block whose width or stride changes uses a 1x1 conv shortcut fed by the
block's pre-activation.

    wrn_16_2 : 703,284 parameters at 100 classes
    wrn_40_1 : 569,780
    wrn_40_2 : 2,255,156
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.common import batch_norm_no_update, init_conv_bn


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (optional dropout in between)."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs.

    `forward_features(x)` returns `(feats, logits)` with `feats = [stem, stage1, stage2, stage3, pooled]`:
      - `stem`   : the stem conv output, 16 channels, full resolution (no BN/ReLU: WRN is pre-activation);
      - `stage1` : raw (pre-activation) output of stage 1, 16k channels, full resolution;
      - `stage2` : raw (pre-activation) output of stage 2, 32k channels, 1/2 resolution;
      - `stage3` : stage 3 after the final BN + ReLU, 64k channels, 1/4 resolution -- the last conv
        feature map before pooling;
      - `pooled` : globally average-pooled `stage3`, shape (N, 64k), the classifier's input.
    With `preact=True` each stage map is the input of the ReLU that follows it: stages 1 and 2
    through the next stage's first BN (read without updating its statistics), stage 3 the final BN's
    output. With `raw_last_stage=True` stage 3 is block 3's own output, before the final BN + ReLU
    that sit outside the stage (what mdistiller's `feats` and ReviewKD's authors take as the deepest
    student feature; CAT-KD needs the post-BN-ReLU map, the default). `feature_channels()` lists the
    channel count of each entry.
    """

    RAW_LAST_STAGE = True  # forward_features takes raw_last_stage (`trainer.methods.base.features_of`)

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.channels = (16, 16 * widen, 32 * widen, 64 * widen)
        c = self.channels
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._make_stage(c[0], c[1], n, 1, drop_rate)
        self.block2 = self._make_stage(c[1], c[2], n, 2, drop_rate)
        self.block3 = self._make_stage(c[2], c[3], n, 2, drop_rate)
        self.bn = nn.BatchNorm2d(c[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c[3], num_classes)
        init_conv_bn(self, zero_linear_bias=True)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, n: int, stride: int, drop_rate: float) -> nn.Sequential:
        return nn.Sequential(
            *[WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, three stages, pooled vector."""
        return [*self.channels, self.channels[3]]

    def forward_features(self, x: torch.Tensor, preact: bool = False,
                         raw_last_stage: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        raw3 = self.block3(f2)
        pre3 = self.bn(raw3)
        f3 = torch.relu(pre3)
        pooled = torch.flatten(self.pool(f3), 1)
        if preact:
            f1, f2, f3 = batch_norm_no_update(self.block2[0].bn1, f1), batch_norm_no_update(self.block3[0].bn1, f2), pre3
        elif raw_last_stage:
            f3 = raw3
        return [f0, f1, f2, f3, pooled], self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def wrn_16_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels)


def wrn_40_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels)


def wrn_40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels)
