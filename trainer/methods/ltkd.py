"""LTKD: CE + alpha * rebalanced cross-group KL + beta * uniformly weighted within-group KLs.

Groups come from the training counts of the long-tailed set (`partition_groups`, n_groups of them).
`rebalance=False` is the paper's "biased" cross-group ablation; `reweight=False` weights the
within-group terms by the teacher's group probability (plain KD's decomposition).
"""
from __future__ import annotations

from trainer.groups import partition_groups
from trainer.losses import group_layout, ltkd_loss
from trainer.methods.base import Method


class LTKD(Method):
    NAME = "ltkd"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        self.n_groups = int(self.hparams["n_groups"])
        self.register_buffer("groups", partition_groups(self.class_counts, self.n_groups), persistent=False)
        # The classes laid out by group, built once (it reads the group sizes on the host) and kept
        # on the method's device like the groups: no host read or copy per batch.
        layout = group_layout(self.groups, self.n_groups)
        self._layout = layout._replace(index=None, padding=None) if layout is not None else None  # the sizes
        self.register_buffer("group_index", layout.index if layout is not None else None, persistent=False)
        self.register_buffer("group_padding", layout.padding if layout is not None else None, persistent=False)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        return {
            "ce": self.hparams["ce_weight"] * self.supervised_loss(student_logits, target),
            "ltkd": self.distill_loss(student_logits, teacher_logits),
        }

    def distill_loss(self, student_logits, teacher_logits):
        return ltkd_loss(student_logits, teacher_logits, reweight=bool(self.hparams["reweight"]), **self.loss_kwargs())

    def loss_kwargs(self) -> dict:
        """The arguments every LTKD-family loss takes: groups, weights, temperature, rebalancing."""
        h = self.hparams
        return {
            "groups": self.groups,
            "alpha": h["alpha"],
            "beta": h["beta"],
            "temperature": h["temperature"],
            "rebalance": bool(h["rebalance"]),
            "num_groups": self.n_groups,
            "layout": (self._layout._replace(index=self.group_index, padding=self.group_padding)
                       if self._layout is not None else None),
        }
