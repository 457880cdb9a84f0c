"""Class groups: classes ranked by training count and cut into n(G) contiguous groups."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def group_cut_points(num_classes: int, n_groups: int) -> list[int]:
    """Ranks at which the ranked classes are cut: floor(C * k / n(G) + 0.5) for k = 0..n(G).

    Computed in integers, (2Ck + G) // 2G, so that no float rounding moves a boundary.
    """
    return [(2 * num_classes * k + n_groups) // (2 * n_groups) for k in range(n_groups + 1)]


def partition_groups(class_counts: Sequence[int] | torch.Tensor, n_groups: int) -> torch.Tensor:
    """Group id of every class, 0 = head ... n_groups - 1 = tail, as a LongTensor [C].

    Classes are ranked by training count, descending, ties broken by class index; the ranking is
    cut into contiguous groups (C = 100, n(G) = 3 gives 33 / 34 / 33; n(G) = C one class each).
    """
    counts = [int(c) for c in (class_counts.tolist() if isinstance(class_counts, torch.Tensor) else class_counts)]
    num_classes = len(counts)
    if not isinstance(n_groups, int) or isinstance(n_groups, bool):
        raise TypeError(f"n_groups must be an int, got {n_groups!r}")
    if not 1 <= n_groups <= num_classes:
        raise ValueError(f"n_groups = {n_groups} is not allowed: it must be between 1 and the number of classes ({num_classes})")
    ranked = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    cuts = group_cut_points(num_classes, n_groups)
    groups = torch.empty(num_classes, dtype=torch.long)
    for g in range(n_groups):
        groups[ranked[cuts[g] : cuts[g + 1]]] = g
    return groups

