"""Plain cross-entropy: how teachers and the Student (CE) baseline are trained."""
from __future__ import annotations

import torch.nn.functional as F

from trainer.methods.base import Method


class CrossEntropy(Method):
    NAME = "ce"

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        return {"ce": F.cross_entropy(student_logits, target)}
