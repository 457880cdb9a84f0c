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
    """LTKD with continuous within-group reweighting (the n(G) ablation's "continuous reweighting").

    Definition: loss = ce_weight * CE + (alpha * cross + beta * sum_G w_G KL(p~_G^T || p~_G^S)) * T^2,
    with the cross term exactly LTKD's and
        w_G = (p^B_G)^(-tau) / mean_G' (p^B_G')^(-tau),
    p^B_G being the teacher's probability of group G averaged over the batch (at temperature T).

    Why: LTKD replaces KD's within-group weights p_G^T, which starve the tail, by a uniform constant
    - a step from "proportional to the teacher's group mass" to "all equal". The continuous variant
    keeps going along the same axis: the weight is a smooth power of the group's (batch) prior,
    so with many groups (n(G) up to C) the weight varies continuously along the class ranking
    instead of being flat. tau = 0 is LTKD (uniform); tau = 1 makes w_G proportional to the same
    factors s_G = mean(p^B) / p^B_G that rebalance the cross-group term, so both terms are rebalanced
    by one rule; tau = -1 gives weights proportional to p^B_G (a batch-level version of KD's own
    weighting). The weights are normalised to mean 1, so the within term keeps LTKD's overall scale
    and beta keeps its meaning; they depend on the teacher only (no gradient). Default tau = 1.
    """

    NAME = "ltkd_continuous"

    def distill_loss(self, student_logits, teacher_logits):
        return ltkd_continuous_loss(student_logits, teacher_logits, tau=float(self.hparams["tau"]), **self.loss_kwargs())
