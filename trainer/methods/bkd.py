"""BKD: Balanced Knowledge Distillation for long-tailed learning (Zhang, Chen, Hu and Peng,
Neurocomputing 2023): instance-balanced CE + class-balanced KD.

    loss = ce_weight * CE(z^S, y) + alpha * T^2 * KL(q || softmax(z^S / T)),
    q_i = w_i p^T_i / sum_j w_j p^T_j,   p^T = softmax(z^T / T),
    w_c = (1 - beta_cb) / (1 - beta_cb^{n_c}), normalised so that sum_c w_c = C

(n_c: training images of class c; Cui et al.'s effective number). The weights act on the KD term
class by class: the teacher's soft label is tilted towards the tail before the student matches it
(this is the authors' released formulation; weighting the per-class KL terms w_i p^T_i log(p^T_i /
p^S_i) instead gives the same gradient direction up to the per-sample factor sum_i w_i p^T_i).
The CE stays instance-balanced (unweighted).

Defaults follow the authors' CIFAR code: T = 2, alpha = 1, beta_cb = 0.9999, the weights on from
the first epoch (their CIFAR-100 "Reweight" rule); `reweight_from` = E switches them on at the
0-based epoch E (their CIFAR-10 rule is deferred re-weighting from epoch 160), plain KD before.
Equal class counts give w = 1, i.e. exactly KD + CE.
"""
from __future__ import annotations

from trainer.losses import balanced_kd_loss, class_balanced_weights
from trainer.methods.base import Method


class BKD(Method):
    NAME = "bkd"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        weights = class_balanced_weights(self.class_counts, float(self.hparams["beta_cb"]))
        self.register_buffer("class_weights", weights, persistent=False)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        weights = self.class_weights if epoch >= int(h["reweight_from"]) else None
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "bkd": h["alpha"] * balanced_kd_loss(student_logits, teacher_logits, weights, h["temperature"]),
        }
