"""Per-group evaluation: head / medium / tail (3-group split by training count), overall, per class."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.groups import partition_groups


@dataclass
class EvalResult:
    """Accuracies in percent."""

    acc_all: float
    acc_head: float
    acc_medium: float
    acc_tail: float
    per_class: list[float]

    def metrics(self) -> dict[str, float]:
        return {"acc_all": self.acc_all, "acc_head": self.acc_head, "acc_medium": self.acc_medium, "acc_tail": self.acc_tail}


def summarize(correct: torch.Tensor, total: torch.Tensor, class_counts: list[int]) -> EvalResult:
    """EvalResult from per-class correct/total counts; groups always from the 3-group split."""
    correct = correct.double().cpu()
    total = total.double().cpu()
    per_class = torch.where(total > 0, 100.0 * correct / total.clamp(min=1), torch.full_like(total, float("nan")))
    groups = partition_groups(class_counts, min(3, len(class_counts)))
    group_acc = []
    for g in range(3):
        members = groups == g
        # Pooled over the group's test images (equal to the mean of per-class accuracy on a balanced test set).
        group_acc.append(float(100.0 * correct[members].sum() / total[members].sum()) if members.any() else float("nan"))
    acc_all = float(100.0 * correct.sum() / total.sum())
    return EvalResult(acc_all, group_acc[0], group_acc[1], group_acc[2], [float(v) for v in per_class])


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, class_counts: list[int], device: torch.device, autocast: bool = False) -> EvalResult:
    model.eval()
    num_classes = len(class_counts)
    correct = torch.zeros(num_classes, dtype=torch.long, device=device)
    total = torch.zeros(num_classes, dtype=torch.long, device=device)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(x).argmax(dim=1)
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y[pred == y], minlength=num_classes)
    return summarize(correct, total, class_counts)


@torch.no_grad()
def group_probability(model: torch.nn.Module, loader, class_counts: list[int], device: torch.device, autocast: bool = False) -> dict[str, float]:
    """The model's mean softmax mass on the head / medium / tail groups (3-group split), in percent.

    On the balanced test set an unbiased model puts about a third on each group; a teacher trained
    on long-tailed data leans to the head (the paper's motivating statistic).
    """
    model.eval()
    groups = partition_groups(class_counts, min(3, len(class_counts))).to(device)
    mass = torch.zeros(3, dtype=torch.float64, device=device)
    seen = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        probs = torch.softmax(logits.float(), dim=1)
        mass.index_add_(0, groups, probs.sum(0).double())
        seen += x.shape[0]
    values = (100.0 * mass / max(seen, 1)).tolist()
    return {name: float(v) for name, v in zip(("head", "medium", "tail"), values)}
