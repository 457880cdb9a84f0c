"""Training methods, one file each, found through the plain dict `METHODS`.

A method turns (student logits, teacher logits, targets, epoch) into named loss terms; the loop
adds them up. `PARAMS` of each class lists its hyperparameters and defaults, which the study
validator checks against.
"""
from __future__ import annotations

from trainer.methods.balanced_ce import BalancedSoftmax
from trainer.methods.base import Method
from trainer.methods.bkd import BKD
from trainer.methods.catkd import CATKD
from trainer.methods.ce import CrossEntropy
from trainer.methods.dist import DIST
from trainer.methods.dkd import DKD
from trainer.methods.kd import KD
from trainer.methods.ltkd import LTKD
from trainer.methods.ltkd_variants import LTKDBiased, LTKDContinuous, LTKDCross, LTKDWithin
from trainer.methods.reviewkd import ReviewKD

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "kd": KD,
    "ltkd": LTKD,
    "dkd": DKD,
    "dist": DIST,
    "bkd": BKD,
    "balanced_softmax": BalancedSoftmax,
    "ltkd_cross": LTKDCross,
    "ltkd_within": LTKDWithin,
    "ltkd_biased": LTKDBiased,
    "ltkd_continuous": LTKDContinuous,
    "reviewkd": ReviewKD,
    "catkd": CATKD,
}


def build_method(name: str, params: dict, class_counts: list[int]) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](class_counts=class_counts, **params)
