"""Model zoo behind one plain dict registry.

Every model's `forward(x)` returns logits. Models that feature-based methods need also offer
`forward_features(x) -> (features: list[Tensor], logits)`.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainer.models.small_cnn import SmallCNN

# name -> factory(num_classes, in_channels) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    # Small CNNs for the offline data (digits, synthetic): a teacher clearly stronger than the student.
    "cnn_w32": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=32),
    "cnn_w16": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=16),
    "cnn_w8": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=8),
    "cnn_w4": lambda num_classes, in_channels=3: SmallCNN(num_classes, in_channels, width=4),
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered model `name` with a `num_classes`-way classifier."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
