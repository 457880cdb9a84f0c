"""Balanced Softmax / logit-adjusted cross-entropy: a second Student row, no teacher.

    loss = CE(z + tau * log pi, y),   pi_c = n_c / sum_c' n_c'  (training class prior)

tau = 1 is Balanced Softmax (Ren et al., NeurIPS 2020), i.e. the logit-adjusted loss of Menon et
al. (ICLR 2021) with its default tau. The adjustment is in the loss only: the model predicts with
its plain logits, which then estimate the balanced (test) distribution. Equal counts: plain CE.
Distillation methods take the same loss (tau = 1) for their supervised term with `ce: balanced_softmax`
(`Method.supervised_loss`).
"""
from __future__ import annotations

from trainer.losses import balanced_softmax_loss, log_class_prior
from trainer.methods.base import Method


class BalancedSoftmax(Method):
    NAME = "balanced_softmax"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        self.register_buffer("log_prior", log_class_prior(self.class_counts), persistent=False)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        return {"ce": balanced_softmax_loss(student_logits, target, self.log_prior, self.hparams["tau"])}
