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
- `forward_features(x, preact=True)` gives the same list with each stage map taken before the
  stage's final ReLU (the standard CIFAR zoo's `preact` features, which ReviewKD distils; for WRN,
  whose stages end in a residual sum, the following BN's output); the stem and the pooled vector are
  unchanged, and BN statistics are updated once, as in a plain forward. A model whose map list holds
  maps that are not stages says which are (`stage_indices()`: MobileNetV2's head conv map is not).
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

from typing import TYPE_CHECKING

from trainer.registry import LazyRegistry

if TYPE_CHECKING:
    from torch import nn

# name -> factory(num_classes, in_channels) -> nn.Module, each module imported on first use: the
# names alone (study validation, tables) need no PyTorch.
MODELS = LazyRegistry({
    # Small CNNs for the offline data (digits, synthetic): a teacher clearly stronger than the student.
    "cnn_w32": "trainer.models.small_cnn:cnn_w32",
    "cnn_w16": "trainer.models.small_cnn:cnn_w16",
    "cnn_w8": "trainer.models.small_cnn:cnn_w8",
    "cnn_w4": "trainer.models.small_cnn:cnn_w4",
    # CIFAR-size zoo of the KD literature (CRD / mdistiller).
    "resnet20": "trainer.models.resnet_cifar:resnet20",
    "resnet56": "trainer.models.resnet_cifar:resnet56",
    "resnet8x4": "trainer.models.resnet_cifar:resnet8x4",
    "resnet32x4": "trainer.models.resnet_cifar:resnet32x4",
    "vgg8": "trainer.models.vgg_cifar:vgg8",
    "vgg13": "trainer.models.vgg_cifar:vgg13",
    "wrn_16_2": "trainer.models.wrn:wrn_16_2",
    "wrn_40_1": "trainer.models.wrn:wrn_40_1",
    "wrn_40_2": "trainer.models.wrn:wrn_40_2",
    "shufflenet_v1": "trainer.models.shufflenet_v1:shufflenet_v1",
    "mobilenet_v2": "trainer.models.mobilenet_v2:mobilenet_v2",
    # ImageNet-size models (random init; nothing is downloaded).
    "resnet18": "trainer.models.imagenet:resnet18",
    "resnet34": "trainer.models.imagenet:resnet34",
    "resnet50": "trainer.models.imagenet:resnet50",
    "mobilenet_v1": "trainer.models.imagenet:mobilenet_v1",
})


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered model `name` with a `num_classes`-way classifier."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
