"""Hinton et al.'s KD: ce_weight * CE + alpha * KL(p_T || p_S) * T^2."""
from __future__ import annotations

from trainer.losses import kd_loss
from trainer.methods.base import Method


class KD(Method):
    NAME = "kd"

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "kd": h["alpha"] * kd_loss(student_logits, teacher_logits, h["temperature"]),
        }
