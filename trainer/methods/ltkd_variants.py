"""LTKD ablations (the paper's ablation tables) and the continuous-reweighting variant.

- `ltkd_cross`: cross-group term only (beta fixed to 0). With rebalance=False it is the table's
  "Biased, cross only" row; with the default rebalance=True the "Ours, cross only" row.
- `ltkd_within`: within-group term only (alpha fixed to 0), uniform group weights.
- `ltkd_biased`: rebalance fixed to False: the cross-group target is the teacher's own group
  distribution p_G^T instead of the batch-rebalanced one (set beta=0 for the cross-only table row).
- `ltkd_continuous`: see `LTKDContinuous`.

Each is declared in `trainer.methods.METHODS`: a variant's fixed hyperparameters are not in its
PARAMS (passing one is an error), but they are written into `hparams`, so what was run is recorded.
"""
from __future__ import annotations

from trainer.losses import ltkd_continuous_loss
from trainer.methods.ltkd import LTKD


class LTKDCross(LTKD):
    NAME = "ltkd_cross"


class LTKDWithin(LTKD):
    NAME = "ltkd_within"


class LTKDBiased(LTKD):
    NAME = "ltkd_biased"


class LTKDContinuous(LTKD):
    """LTKD with continuous reweighting (the n(G) ablation's "continuous reweighting" row), the
    project's reading of it: `trainer.losses.ltkd_continuous_loss` gives the definition and why.

    In short: LTKD's cross-group term, and within-group KLs over the nested sets S_k = group k and
    every group after it toward the tail, weighted by w_k proportional to (p^B(S_k))^(-tau) (summing to 1).
    Meaningful at every n(G), n(G) = C included, where LTKD's own within term vanishes. Default tau = 1.
    """

    NAME = "ltkd_continuous"

    def distill_loss(self, student_logits, teacher_logits):
        return ltkd_continuous_loss(student_logits, teacher_logits, tau=float(self.hparams["tau"]), **self.loss_kwargs())
