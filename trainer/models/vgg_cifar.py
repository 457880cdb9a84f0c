"""CIFAR VGGs with BatchNorm from the KD literature (the CRD / RepDistiller / mdistiller zoo).

Five conv blocks of 3x3 convs (with bias) + BN + ReLU; 2x2 max-pooling after blocks 0-2 (and after
block 3 too when the input is 64 pixels or larger), then global average pooling and one linear layer
on 512 features.

    vgg8  : one conv per block,  widths 64/128/256/512/512           (3,965,028 parameters at 100 classes)
    vgg13 : two convs per block, widths 64,64/128,128/256,256/512,512/512,512   (9,462,180)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.common import init_conv_bn

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv-BN-ReLU for each width; the final ReLU is left to the caller (so the block ends at a BN)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG with BN for 32x32 inputs.

    `forward_features(x)` returns `(feats, logits)` with `feats = [b0, b1, b2, b3, b4, pooled]`:
      - `b0`..`b4` : post-ReLU outputs of the five conv blocks (before each block's max-pool), with
        channels `cfg[i][-1]` (64, 128, 256, 512, 512) at resolutions 1, 1/2, 1/4, 1/8, 1/8 of a 32x32
        input; `b4` is the last conv feature map before pooling;
      - `pooled`   : globally average-pooled `b4`, shape (N, 512), the classifier's input.
    With `preact=True`, `b1`..`b4` are taken before their ReLU (the blocks' BN outputs).
    `feature_channels()` lists the channel count of each entry.
    """

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.cfg = [list(c) for c in cfg]
        self.block0 = _make_block(cfg[0], in_channels)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_conv_bn(self, zero_linear_bias=True, zero_conv_bias=True, linear_std=0.01)

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: five blocks, pooled vector."""
        return [c[-1] for c in self.cfg] + [self.cfg[4][-1]]

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        big = x.shape[2] >= 64
        f0 = F.relu(self.block0(x))
        feats, out = [f0], f0
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            pre = block(out if i == 3 and not big else self.maxpool(out))  # each block ends at its BN
            out = F.relu(pre)
            feats.append(pre if preact else out)
        pooled = torch.flatten(self.pool(out), 1)
        return [*feats, pooled], self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.shape[2] >= 64
        x = F.relu(self.block0(x))
        x = F.relu(self.block1(self.maxpool(x)))
        x = F.relu(self.block2(self.maxpool(x)))
        x = F.relu(self.block3(self.maxpool(x)))
        x = F.relu(self.block4(self.maxpool(x) if big else x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def vgg8(num_classes: int, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["vgg8"], num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["vgg13"], num_classes, in_channels)
