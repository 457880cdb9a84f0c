"""Training methods, one file each, found through the plain dict `METHODS`.

A method turns (student logits, teacher logits, targets, epoch) into named loss terms; the loop
adds them up. `PARAMS` of each class lists its hyperparameters and defaults, which the study
validator checks against.
"""
from __future__ import annotations

from trainer.methods.base import Method
from trainer.methods.ce import CrossEntropy
from trainer.methods.kd import KD
from trainer.methods.ltkd import LTKD

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "kd": KD,
    "ltkd": LTKD,
}


def build_method(name: str, params: dict, class_counts: list[int]) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](class_counts=class_counts, **params)
