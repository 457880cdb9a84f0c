"""The one small base class every method derives from."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses import balanced_softmax_loss, log_class_prior
from trainer.methods import METHODS, PARAM_CHOICES


def features_of(model: nn.Module, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`model.forward_features(x)`, with the stage maps before their final ReLU when `preact`."""
    return model.forward_features(x, preact=True) if preact else model.forward_features(x)


class Method(nn.Module, ABC):
    """A training objective. Subclasses set NAME (their key in `trainer.methods.METHODS`) and
    implement `losses`; the rest of the declaration (DISPLAY, PARAMS: hyperparameter -> default,
    NEEDS_TEACHER, NEEDS_FEATURES, FIXED) comes from that registry line, so it is written once and
    readable without importing PyTorch. A subclass that is not registered declares them itself.

    It is an nn.Module so that methods with learnable parts (feature connectors) hand their
    parameters to the optimizer with the student's.
    """

    NAME: ClassVar[str] = ""
    DISPLAY: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, object]] = {}
    NEEDS_TEACHER: ClassVar[bool] = True
    # Feature-based methods set this: the loop then calls `forward_features` on student and teacher
    # and passes the feature lists to `losses`.
    NEEDS_FEATURES: ClassVar[bool] = False
    FIXED: ClassVar[dict[str, object]] = {}  # set by the method itself, recorded in hparams
    # Feature methods that distil stage maps before their final ReLU set these (instance attributes):
    # the loop then asks that model for `forward_features(x, preact=True)`.
    student_preact: bool = False
    teacher_preact: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = METHODS.get(cls.__dict__.get("NAME", ""))
        if spec is not None:
            cls.DISPLAY, cls.PARAMS, cls.FIXED = spec.display, dict(spec.params), dict(spec.fixed)
            cls.NEEDS_TEACHER, cls.NEEDS_FEATURES = spec.needs_teacher, spec.needs_features

    def __init__(self, class_counts: list[int], **params):
        super().__init__()
        unknown = set(params) - set(self.PARAMS)
        if unknown:
            raise TypeError(f"{self.NAME}: unknown hyperparameters {sorted(unknown)}; allowed: {sorted(self.PARAMS)}")
        self.hparams = {**self.PARAMS, **params, **self.FIXED}
        for key, allowed in PARAM_CHOICES.items():
            if key in self.hparams and self.hparams[key] not in allowed:
                raise ValueError(f"{self.NAME}: {key} = {self.hparams[key]!r}; allowed: {', '.join(allowed)}")
        self.class_counts = list(class_counts)
        if self.hparams.get("ce") == "balanced_softmax":
            self.register_buffer("log_prior", log_class_prior(self.class_counts), persistent=False)

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A distillation method's supervised term (before its ce_weight), as its `ce` option says:
        plain cross-entropy, or the balanced-softmax Student row's logit-adjusted CE with this
        trial's class counts (tau = 1). Equal counts make the two the same."""
        if self.hparams.get("ce", "standard") == "balanced_softmax":
            return balanced_softmax_loss(logits, target, self.log_prior)
        return F.cross_entropy(logits, target)

    def setup(self, student: nn.Module, teacher: nn.Module | None, sample: torch.Tensor) -> None:
        """Called once before the optimizer is built, with one input batch: methods with learnable
        parts (connectors sized by the models' features) create them here. Default: nothing to build."""

    @abstractmethod
    def losses(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        target: torch.Tensor,
        epoch: int,
        student_features: list[torch.Tensor] | None = None,
        teacher_features: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch (already weighted); their sum is minimised.
        `epoch` is 0-based (for warm-ups); features are given only when NEEDS_FEATURES is set."""
