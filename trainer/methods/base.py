"""The one small base class every method derives from."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses import balanced_softmax_loss, log_class_prior
from trainer.methods import METHODS, PARAM_CHOICES


def features_of(model: nn.Module, x: torch.Tensor, preact: bool = False,
                raw_last_stage: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`model.forward_features(x)`, with the stage maps before their final ReLU when `preact`; with
    `raw_last_stage`, a model whose last stage is followed by a BN + ReLU outside it (WRN: its
    `RAW_LAST_STAGE`) gives that stage's own output instead (other models' last map is the stage's)."""
    if preact:
        return model.forward_features(x, preact=True)
    if raw_last_stage and getattr(model, "RAW_LAST_STAGE", False):
        return model.forward_features(x, raw_last_stage=True)
    return model.forward_features(x)


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
    NEEDS_FEATURES: ClassVar[bool] = False  # declared in the registry; such a method is a FeatureMethod
    FIXED: ClassVar[dict[str, object]] = {}  # set by the method itself, recorded in hparams

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = METHODS.get(cls.__dict__.get("NAME", ""))
        if spec is not None:
            cls.DISPLAY, cls.PARAMS, cls.FIXED = spec.display, dict(spec.params), dict(spec.fixed)
            cls.NEEDS_TEACHER, cls.NEEDS_FEATURES = spec.needs_teacher, spec.needs_features
            if spec.needs_features != (cls.model_outputs is not Method.model_outputs):
                raise TypeError(f"{cls.__name__}: its registry line says needs_features={spec.needs_features}; "
                                "a method that reads the models' features derives from FeatureMethod")

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

    def model_outputs(self, model: nn.Module, x: torch.Tensor, of_teacher: bool) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """What this method reads of a model for one batch: (features, logits); logit methods read
        only the logits (features None). A method that needs more overrides this one hook."""
        return None, model(x)

    def forward_train(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, target: torch.Tensor,
                      epoch: int, teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training batch through the student (and the frozen teacher) and this method's losses.
        `teacher_logits`: the teacher's logits for this batch read from its table
        (`trainer.teacher_logits`), in place of its forward pass (logit methods only)."""
        student_features, student_logits = self.model_outputs(student, x, of_teacher=False)
        teacher_features = None
        if teacher_logits is None and teacher is not None:
            with torch.no_grad():
                teacher_features, teacher_logits = self.model_outputs(teacher, x, of_teacher=True)
        # Logit losses in float32: softmax at temperature T and KL terms lose too much in bf16.
        return self.losses(
            student_logits.float(),
            None if teacher_logits is None else teacher_logits.float(),
            target,
            epoch,
            student_features=student_features,
            teacher_features=teacher_features,
        )

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
        `epoch` is 0-based (for warm-ups); features are given only by a FeatureMethod."""


class FeatureMethod(Method, ABC):
    """A method that distils the models' stage maps (ReviewKD, CAT-KD): it reads `forward_features`
    of student and teacher, and passes the feature lists to `losses`. Methods that distil the maps
    before their final ReLU set `student_preact` / `teacher_preact` (instance attributes)."""

    student_preact: bool = False
    teacher_preact: bool = False
    # ... and those that take the student's last stage as the stage outputs it (ReviewKD) set this.
    student_raw_last_stage: bool = False

    def model_outputs(self, model, x, of_teacher):
        if of_teacher:
            return features_of(model, x, self.teacher_preact)
        return features_of(model, x, self.student_preact, self.student_raw_last_stage)
