"""DIST (Huang et al., NeurIPS 2022): ce_weight * CE + T^2 * (beta * inter + gamma * intra).

inter = 1 - mean per-sample Pearson correlation of softmax(z / T) between student and teacher,
intra = 1 - mean per-class Pearson correlation (over the batch); see `trainer.losses.dist_loss`.
Defaults: the DIST paper's CIFAR-100 setting as we read it (beta = gamma = 2, T = 4; its ImageNet
setting is beta = gamma = 1, T = 1), with CE weight 1.
"""
from __future__ import annotations

from trainer.losses import dist_loss
from trainer.methods.base import Method


class DIST(Method):
    NAME = "dist"

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "dist": dist_loss(student_logits, teacher_logits, h["beta"], h["gamma"], h["temperature"]),
        }
