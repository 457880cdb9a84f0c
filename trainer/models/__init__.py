"""Model zoo behind one plain dict registry.

Every model's `forward(x)` returns logits. Models that feature-based methods need also offer
`forward_features(x) -> (features: list[Tensor], logits)`.

Feature convention of the paper's zoo (every model below except the `cnn_*` ones):

- `forward_features(x)` returns `(feats, logits)`, where `feats` is the list of stage outputs in
  network order -- the stem's output first, then each stage's output map (pre-pooling, (N, C, H, W)),
  the last map being the final conv feature map right before global pooling -- followed by the
  pooled vector (N, C_last) that feeds the classifier. So `feats[:-1]` are the multi-stage maps
  (ReviewKD), `feats[-2]` is the last conv map (CAT-KD) and `feats[-1]` the penultimate embedding.
  In eval mode `forward_features(x)[1]` equals `forward(x)`; `forward` computes nothing extra.
- `model.feature_channels() -> list[int]` gives the channel count of each entry of `feats`
  (same length, the last one being the pooled vector's width), e.g. for building connectors without
  a dummy forward pass. Each model class's docstring says which maps `feats` holds and at what
  resolution.

    CIFAR (32x32):  resnet20 / resnet56 [16, 16, 32, 64, 64];  resnet8x4 / resnet32x4 [32, 64, 128, 256, 256]
                    vgg8 / vgg13 [64, 128, 256, 512, 512, 512];  wrn_16_2 / wrn_40_2 [16, 32, 64, 128, 128]
                    wrn_40_1 [16, 16, 32, 64, 64];  shufflenet_v1 [24, 240, 480, 960, 960]
                    mobilenet_v2 [16, 12, 16, 48, 160, 1280, 1280] (last map = its 1x1 head conv)
    ImageNet (224): resnet18 / resnet34 [64, 64, 128, 256, 512, 512];
                    resnet50 [64, 256, 512, 1024, 2048, 2048];  mobilenet_v1 [64, 128, 256, 512, 1024, 1024]

The small `cnn_*` models return only `[block1, block2]` (no pooled vector) and have no
`feature_channels()`.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainer.models.imagenet import mobilenet_v1, resnet18, resnet34, resnet50
from trainer.models.mobilenet_v2 import mobilenet_v2
from trainer.models.resnet_cifar import resnet8x4, resnet20, resnet32x4, resnet56
from trainer.models.shufflenet_v1 import shufflenet_v1
from trainer.models.small_cnn import SmallCNN
from trainer.models.vgg_cifar import vgg8, vgg13
from trainer.models.wrn import wrn_16_2, wrn_40_1, wrn_40_2

# name -> factory(num_classes, in_channels) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    # Small CNNs for the offline data (digits, synthetic): a teacher clearly stronger than the student.
    "cnn_w32": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=32),
    "cnn_w16": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=16),
    "cnn_w8": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=8),
    "cnn_w4": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=4),
    # CIFAR-size zoo of the KD literature (CRD / mdistiller).
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "shufflenet_v1": shufflenet_v1,
    "mobilenet_v2": mobilenet_v2,
    # ImageNet-size models (random init; nothing is downloaded).
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered model `name` with a `num_classes`-way classifier."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
