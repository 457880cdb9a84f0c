"""MobileNetV2 (Sandler et al. 2018), the CIFAR variant of the KD literature (CRD / mdistiller "MobileNetV2",
i.e. width multiplier 0.5 -- the student of the VGG13 -> MobileNetV2 pair).

Stem: 3x3 conv, stride 2, to int(32*w) channels + BN + ReLU. Then the seven inverted-residual groups
(t, c, n, s) = (1,16,1,1) (t,24,2,1) (t,32,3,2) (t,64,4,2) (t,96,3,1) (t,160,3,2) (t,320,1,1) with
expansion t = 6 for all but the first and widths int(c*w). Every block has the 1x1 expansion conv
(also when t = 1), a 3x3 depthwise conv and a linear 1x1 projection; a residual is added when the
stride is 1 and the widths match. A 1x1 conv to 1280 channels (int(1280*w) if w > 1) + BN + ReLU,
global average pooling and a linear classifier finish it.

    mobilenet_v2 (w = 0.5) : 812,836 parameters at 100 classes
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.common import init_conv_bn, sequential_preact

# t = expansion ("T" placeholder resolved at construction), c = width, n = repeats, s = first stride
_SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
# which groups make up each of the four feature stages (after the stem)
_STAGES = [(0, 1), (2,), (3, 4), (5, 6)]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            *_conv_bn_relu(inp, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs.

    `forward_features(x)` returns `(feats, logits)` with
    `feats = [stem, stage1, stage2, stage3, stage4, head, pooled]` (channels for w = 0.5, resolutions
    for a 32x32 input):
      - `stem`   : stem conv + BN + ReLU, 16 channels, 16x16;
      - `stage1` : after groups 1-2, 12 channels, 16x16;
      - `stage2` : after group 3, 16 channels, 8x8;
      - `stage3` : after groups 4-5, 48 channels, 4x4;
      - `stage4` : after groups 6-7, 160 channels, 2x2 (linear bottleneck output, no ReLU);
      - `head`   : the 1x1 conv + BN + ReLU, 1280 channels, 2x2 -- the last conv feature map before pooling;
      - `pooled` : globally average-pooled `head`, shape (N, 1280), the classifier's input.
    The stage maps have no final ReLU (linear bottlenecks), so `preact=True` changes only `head`
    (taken before its ReLU). `stage_indices()` says which entries are stages.
    `feature_channels()` lists the channel count of each entry.
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5, expand: int = 6):
        super().__init__()
        stem_c = int(32 * width_mult)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, stem_c, 3, stride=2))
        groups = []
        c_in = stem_c
        for t, c, n, s in _SETTINGS:
            c_out = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, expand if t is None else t))
                c_in = c_out
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = nn.Sequential(*_conv_bn_relu(c_in, self.last_channel, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        self._channels = [stem_c] + [int(_SETTINGS[idx[-1]][1] * width_mult) for idx in _STAGES] + [self.last_channel] * 2
        init_conv_bn(self, zero_linear_bias=True, linear_std=0.01)

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, four stages, head map, pooled vector."""
        return list(self._channels)

    def stage_indices(self) -> list[int]:
        """Positions in `forward_features(x)[0]` of the four stage maps: the head conv map is not a
        stage (feature methods pair levels by these; ReviewKD's authors leave the head map out)."""
        return [1, 2, 3, 4]

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = [self.stem(x)]
        for idx in _STAGES:
            f = feats[-1]
            for g in idx:
                f = self.blocks[g](f)
            feats.append(f)  # linear bottleneck output: pre-activation already
        head, head_pre = sequential_preact(self.head, feats[-1])
        feats.append(head_pre if preact else head)
        pooled = torch.flatten(self.pool(head), 1)
        feats.append(pooled)
        return feats, self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


def mobilenet_v2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width_mult=0.5)
