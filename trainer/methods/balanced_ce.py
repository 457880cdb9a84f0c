"""Balanced Softmax / logit-adjusted cross-entropy: a second Student row, no teacher.

    loss = CE(z + tau * log pi, y),   pi_c = n_c / sum_c' n_c'  (training class prior)

tau = 1 is Balanced Softmax (Ren et al., NeurIPS 2020), i.e. the logit-adjusted loss of Menon et
al. (ICLR 2021) with its default tau. The adjustment is in the loss only: the model predicts with
its plain logits, which then estimate the balanced (test) distribution. Equal counts: plain CE.
"""
from __future__ import annotations

import torch

from trainer.losses import balanced_softmax_loss
from trainer.methods.base import Method


class BalancedSoftmax(Method):
    NAME = "balanced_softmax"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        counts = torch.tensor(self.class_counts, dtype=torch.float64).clamp_min(1.0)  # an empty class counts as one
        self.register_buffer("log_prior", torch.log(counts / counts.sum()).float(), persistent=False)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        return {"ce": balanced_softmax_loss(student_logits, target, self.log_prior, self.hparams["tau"])}
