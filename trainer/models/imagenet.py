"""ImageNet-size models: torchvision's ResNet-18/34/50 (random init, never downloaded) and MobileNetV1.

`resnet18` / `resnet34` / `resnet50` subclass `torchvision.models.ResNet`, so parameter names and counts
are torchvision's (11,689,512 / 21,797,672 / 25,557,032 at 1000 classes) and its checkpoints load
directly; they only add `forward_features` and `feature_channels`. A non-RGB `in_channels` swaps the
7x7 stem conv for one with that many input channels.

`mobilenet_v1` is MobileNetV1 (Howard et al. 2017, width 1.0, 224x224 inputs): a 3x3 stride-2 conv to
32 channels, then 13 depthwise-separable blocks (3x3 depthwise conv + BN + ReLU, 1x1 conv + BN + ReLU)
with widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024 (stride 2 at the 2nd, 4th, 6th and 12th),
global average pooling and a linear classifier: 4,231,976 parameters at 1000 classes.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from trainer.models.common import init_conv_bn, sequential_preact, staged_features


class TorchvisionResNet(ResNet):
    """torchvision's ImageNet ResNet with a feature interface.

    `forward_features(x)` returns `(feats, logits)` with `feats = [stem, layer1, layer2, layer3, layer4, pooled]`:
      - `stem`   : conv1 + BN + ReLU (before the max-pool), 64 channels, 1/2 resolution;
      - `layer1`..`layer4` : the four stage outputs at 1/4, 1/8, 1/16, 1/32 resolution with
        64/128/256/512 channels (BasicBlock) or 256/512/1024/2048 (Bottleneck); `layer4` is the last
        conv feature map before pooling;
      - `pooled` : globally average-pooled `layer4`, the classifier's input.
    With `preact=True` the four stage maps are the last block's sums before its ReLU.
    `feature_channels()` lists the channel count of each entry. `forward` is torchvision's own.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__(block, layers, num_classes=num_classes)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        e = block.expansion
        self._channels = [64, 64 * e, 128 * e, 256 * e, 512 * e, 512 * e]

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, four stages, pooled vector."""
        return list(self._channels)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        feats, out = [stem], self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if preact:
                for block in list(layer)[:-1]:
                    out = block(out)
                out, pre = _block_preact(layer[-1], out)
                feats.append(pre)
            else:
                out = layer(out)
                feats.append(out)
        pooled = torch.flatten(self.avgpool(out), 1)
        return [*feats, pooled], self.fc(pooled)


def _block_preact(block: BasicBlock | Bottleneck, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's BasicBlock / Bottleneck forward, returning (output, the sum before its last ReLU)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(block.relu(out)))
    pre = out + identity
    return torch.relu(pre), pre


def resnet18(num_classes: int, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(cin, cin, 3, stride, groups=cin), *_conv_bn_relu(cin, cout, 1))


# (output width, stride) of the 13 depthwise-separable blocks, grouped by resolution into stem + 4 stages
_MBV1_STAGES: list[list[tuple[int, int]]] = [
    [(64, 1)],  # joins the stem (1/2 resolution)
    [(128, 2), (128, 1)],  # 1/4
    [(256, 2), (256, 1)],  # 1/8
    [(512, 2)] + [(512, 1)] * 5,  # 1/16
    [(1024, 2), (1024, 1)],  # 1/32
]


class MobileNetV1(nn.Module):
    """MobileNetV1 for 224x224 inputs.

    `forward_features(x)` returns `(feats, logits)` with `feats = [stem, stage1, stage2, stage3, stage4, pooled]`:
      - `stem`   : the first conv and the first depthwise-separable block, 64 channels, 1/2 resolution;
      - `stage1`..`stage4` : 128 / 256 / 512 / 1024 channels at 1/4, 1/8, 1/16, 1/32 resolution;
        `stage4` is the last conv feature map before pooling;
      - `pooled` : globally average-pooled `stage4`, shape (N, 1024), the classifier's input.
    All maps are post-ReLU; with `preact=True` the four stage maps are taken before their final ReLU.
    `feature_channels()` lists the channel count of each entry.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        c = 32
        stages: list[nn.Sequential] = []
        for i, spec in enumerate(_MBV1_STAGES):
            layers: list[nn.Module] = list(_conv_bn_relu(in_channels, c, 3, stride=2)) if i == 0 else []
            for width, stride in spec:
                layers.append(_depthwise_separable(c, width, stride))
                c = width
            stages.append(nn.Sequential(*layers))
        self.stem, self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._channels = [spec[-1][0] for spec in _MBV1_STAGES] + [c]
        init_conv_bn(self)

    def feature_channels(self) -> list[int]:
        """Channels of each entry of `forward_features(x)[0]`: stem, four stages, pooled vector."""
        return list(self._channels)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, out = staged_features(self.stem(x), (self.stage1, self.stage2, self.stage3, self.stage4),
                                     sequential_preact if preact else None)
        pooled = torch.flatten(self.pool(out), 1)
        return [*feats, pooled], self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenet_v1(num_classes: int, in_channels: int = 3) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels)
