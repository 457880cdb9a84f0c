"""Pieces the zoo's models share: the usual He initialisation and the three-stage CIFAR forward."""
from __future__ import annotations

import torch
from torch import nn


def init_conv_bn(model: nn.Module, zero_linear_bias: bool = False) -> None:
    """He-normal convolutions (fan_out, ReLU), BatchNorm scale 1 and shift 0; optionally zero the
    classifier biases. Only the modules' initial values change, not the architecture."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class ThreeStageNet(nn.Module):
    """forward / forward_features of a network built as stem → layer1 → layer2 → layer3 → pool → fc
    (the CIFAR ResNets and ShuffleNetV1); feats = [stem, stage 1, stage 2, stage 3, pooled vector]."""

    stem: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    pool: nn.Module
    fc: nn.Module

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = torch.flatten(self.pool(f3), 1)
        return [f0, f1, f2, f3, pooled], self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
