"""Pieces the zoo's models share: the usual He initialisation, the three-stage CIFAR forward and
the pre-activation (pre-ReLU) stage outputs that `forward_features(x, preact=True)` returns."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_conv_bn(model: nn.Module, zero_linear_bias: bool = False, zero_conv_bias: bool = False,
                 linear_std: float | None = None) -> None:
    """He-normal convolutions (fan_out, ReLU), BatchNorm scale 1 and shift 0. Options: zero the
    convolutions' biases, draw the classifier weights from N(0, linear_std^2), zero the classifier
    biases. Only the modules' initial values change, not the architecture; modules are visited in
    registration order, so a model's random draws do not depend on which options it takes."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_conv_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if zero_linear_bias:
                nn.init.zeros_(m.bias)


def sequential_preact(seq: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `seq` (an nn.Sequential, possibly nested, whose last leaf is a ReLU) and return
    (output, the input of that final ReLU). Other modules run as usual; the final ReLU is applied
    out of place, so the pre-activation tensor is not overwritten."""
    if isinstance(seq, nn.ReLU):
        return F.relu(x), x
    if not isinstance(seq, nn.Sequential) or len(seq) == 0:
        raise TypeError(f"{type(seq).__name__} does not end in a ReLU")
    for module in list(seq)[:-1]:
        x = module(x)
    return sequential_preact(seq[-1], x)


def batch_norm_no_update(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """What `bn(x)` returns, without touching its running statistics (a second read of a BN that
    the network applies anyway): batch statistics in training mode, running ones in eval mode."""
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(x, None if use_batch else bn.running_mean, None if use_batch else bn.running_var,
                        bn.weight, bn.bias, use_batch, 0.0, bn.eps)


class ThreeStageNet(nn.Module):
    """forward / forward_features of a network built as stem → layer1 → layer2 → layer3 → pool → fc
    (the CIFAR ResNets and ShuffleNetV1); feats = [stem, stage 1, stage 2, stage 3, pooled vector].
    With preact=True the three stage maps are taken before their final ReLU (each stage's last block
    has `forward_preact(x) -> (output, pre-activation)`); stem and pooled vector are unchanged."""

    stem: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    pool: nn.Module
    fc: nn.Module

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, out = staged_features(self.stem(x), (self.layer1, self.layer2, self.layer3), stage_preact if preact else None)
        pooled = torch.flatten(self.pool(out), 1)
        return [*feats, pooled], self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def stage_preact(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stage of blocks whose last block has `forward_preact`: (output, the last block's pre-activation)."""
    for block in list(stage)[:-1]:
        x = block(x)
    return stage[-1].forward_preact(x)


def staged_features(stem_out: torch.Tensor, stages, preact_fn=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The stem's output and each stage's (before its final ReLU when `preact_fn` is given: it
    returns a stage's output and pre-activation), and the last stage's output."""
    feats, out = [stem_out], stem_out
    for stage in stages:
        if preact_fn is not None:
            out, pre = preact_fn(stage, out)
            feats.append(pre)
        else:
            out = stage(out)
            feats.append(out)
    return feats, out
