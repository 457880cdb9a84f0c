"""partition_groups: rank by training count (descending, ties by index), cut at floor(C k / G + 0.5)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from trainer.data import long_tailed_counts
from trainer.groups import partition_groups


def _sizes(groups: torch.Tensor, n_groups: int) -> list[int]:
    return torch.bincount(groups, minlength=n_groups).tolist()


def _expected_cuts(C: int, G: int) -> list[int]:
    return [math.floor(C * k / G + 0.5) for k in range(G + 1)]


def test_cifar100_lt_gamma100_three_groups():
    counts = long_tailed_counts(500, 100, 100)
    groups = partition_groups(counts, 3)
    assert groups.dtype == torch.long and groups.shape == (100,)
    assert _sizes(groups, 3) == [33, 34, 33]
    # counts are non-increasing with the index, so head = classes 0..32, medium 33..66, tail 67..99
    assert groups.tolist() == [0] * 33 + [1] * 34 + [2] * 33
    # head = the 33 largest classes
    head = set(torch.nonzero(groups == 0).flatten().tolist())
    largest = set(sorted(range(100), key=lambda c: (-counts[c], c))[:33])
    assert head == largest
    assert min(counts[c] for c in head) >= max(counts[c] for c in range(100) if c not in head)


def test_ties_broken_by_class_index():
    groups = partition_groups([7] * 10, 3)
    # cuts at 0, 3, 7, 10
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    # a partial tie straddling a cut: the lower index goes to the earlier group
    groups = partition_groups([5, 9, 5, 5, 1, 5], 2)
    # ranking: 1 (9), 0, 2, 3, 5 (5s by index), 4 (1); cut at 3
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]
    groups = partition_groups([5, 9, 5, 5, 1, 5], 3)
    # ranked [1, 0, 2, 3, 5, 4], cuts 0, 2, 4, 6
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]


def test_one_class_per_group_ordered_by_count():
    counts = [3, 50, 7, 50, 1, 20, 9]
    groups = partition_groups(counts, len(counts))
    # ranks: 1 (50), 3 (50, tie -> index), 5 (20), 6 (9), 2 (7), 0 (3), 4 (1)
    expected = [0] * 7
    for rank, cls in enumerate([1, 3, 5, 6, 2, 0, 4]):
        expected[cls] = rank
    assert groups.tolist() == expected
    lt = long_tailed_counts(500, 100, 10)
    assert partition_groups(lt, 100).tolist() == list(range(100))


def test_shuffled_counts_grouped_by_rank():
    counts = long_tailed_counts(500, 100, 100)
    perm = list(range(100))
    random.Random(0).shuffle(perm)
    shuffled = [counts[p] for p in perm]  # class j has counts[perm[j]]
    groups = partition_groups(shuffled, 3)
    original = partition_groups(counts, 3)
    # long_tailed_counts has ties (e.g. small tail values), so compare via the rank definition directly
    ranked = sorted(range(100), key=lambda c: (-shuffled[c], c))
    expected = [0] * 100
    for rank, cls in enumerate(ranked):
        expected[cls] = 0 if rank < 33 else (1 if rank < 67 else 2)
    assert groups.tolist() == expected
    assert _sizes(groups, 3) == [33, 34, 33]
    # without ties at the cuts, each class keeps its group from the unshuffled profile
    assert shuffled[ranked[32]] > shuffled[ranked[33]] and shuffled[ranked[66]] > shuffled[ranked[67]]
    assert [int(groups[j]) for j in range(100)] == [int(original[perm[j]]) for j in range(100)]


def test_accepts_tensor_counts():
    counts = torch.tensor([1, 5, 3, 9])
    assert partition_groups(counts, 2).tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("C,G", [(10, 3), (10, 4), (7, 7), (100, 8), (100, 3), (10, 1), (5, 2), (100, 100), (13, 6)])
def test_sizes_follow_cut_formula(C, G):
    counts = list(range(1000, 1000 - C, -1))  # strictly decreasing: rank == index
    groups = partition_groups(counts, G)
    cuts = _expected_cuts(C, G)
    assert _sizes(groups, G) == [cuts[k + 1] - cuts[k] for k in range(G)]
    assert groups.tolist() == sorted(groups.tolist())  # contiguous in rank, head first
    assert int(groups.min()) == 0 and int(groups.max()) == G - 1


def test_sizes_by_hand():
    # computed by hand from floor(C k / G + 0.5)
    def sizes(C, G):
        return _sizes(partition_groups(list(range(C, 0, -1)), G), G)

    assert sizes(10, 3) == [3, 4, 3]  # cuts 0, 3, 7, 10  (3.33 -> 3, 6.67 -> 7)
    assert sizes(10, 4) == [3, 2, 3, 2]  # cuts 0, 3 (2.5 -> 3), 5, 8 (7.5 -> 8), 10
    assert sizes(7, 7) == [1] * 7
    assert sizes(100, 8) == [13, 12, 13, 12, 13, 12, 13, 12]  # cuts 0, 13, 25, 38, 50, 63, 75, 88, 100


@pytest.mark.parametrize("bad", [0, -1, 11, 100])
def test_bad_n_groups_raises_with_value_and_range(bad):
    with pytest.raises(ValueError) as info:
        partition_groups([10] * 10, bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "1" in msg and "10" in msg  # the allowed range 1..C
