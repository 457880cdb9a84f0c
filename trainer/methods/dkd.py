"""DKD (Zhao et al., CVPR 2022): ce_weight * CE + ramp(epoch) * (alpha * TCKD + beta * NCKD) * T^2.

ramp(epoch) = min((epoch + 1) / warmup, 1) with a 0-based epoch (warmup = 0: no ramp). Defaults
are the paper's CIFAR-100 setting: alpha = 1, beta = 8, T = 4, a 20-epoch warm-up.
"""
from __future__ import annotations

from trainer.losses import dkd_loss
from trainer.methods.base import Method


def warmup_factor(epoch: int, warmup: float) -> float:
    """Linear loss warm-up: min((epoch + 1) / warmup, 1) for a 0-based epoch; 1 when warmup <= 0."""
    if not warmup or warmup <= 0:
        return 1.0
    return min((epoch + 1) / float(warmup), 1.0)


class DKD(Method):
    NAME = "dkd"

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "dkd": warmup_factor(epoch, h["warmup"])
            * dkd_loss(student_logits, teacher_logits, target, h["alpha"], h["beta"], h["temperature"]),
        }
