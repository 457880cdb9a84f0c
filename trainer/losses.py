"""Distillation losses as plain functions over logits [B, C]; each returns the batch mean.

`ltkd_loss` follows DESIGN.md exactly. Everything is computed in log space and vectorised over
groups with scatter operations (O(B * C), no loop over groups or classes), so n(G) = 100 costs
about what n(G) = 3 costs and nothing underflows when a group's probability is tiny.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(p_T || p_S) at temperature T, times T^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def _group_logsumexp(logits: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log sum_{i in G} exp(logits_i) for every group: [B, C] -> [B, G], stable, loop-free."""
    batch = logits.shape[0]
    index = groups.unsqueeze(0).expand(batch, -1)
    # Per-group maximum for stability; detached because the max only shifts, it cancels in value.
    group_max = logits.new_full((batch, num_groups), float("-inf"))
    group_max = group_max.scatter_reduce(1, index, logits.detach(), reduce="amax", include_self=True)
    shifted = torch.exp(logits - group_max.gather(1, index))
    sums = logits.new_zeros((batch, num_groups)).scatter_add(1, index, shifted)
    return group_max + torch.log(sums)


def ltkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    groups: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 4.0,
    rebalance: bool = True,
    reweight: bool = True,
    num_groups: int | None = None,
) -> torch.Tensor:
    """LTKD: alpha * rebalanced cross-group KL + beta * uniformly weighted within-group KLs, times T^2.

    groups: LongTensor [C] of group ids 0..G-1 (see `trainer.groups.partition_groups`).
    rebalance=False uses the teacher's own group distribution (the "biased" ablation);
    reweight=False weights each within-group KL by the teacher's group probability, which with
    rebalance=False and alpha = beta = 1 makes the sum equal `kd_loss` exactly.
    num_groups: pass G to avoid reading groups.max() (a device sync on a GPU).
    """
    groups = groups.to(student_logits.device)
    if num_groups is None:
        num_groups = int(groups.max().item()) + 1
    z_s = student_logits / temperature
    z_t = teacher_logits / temperature
    lse_s = torch.logsumexp(z_s, dim=1, keepdim=True)
    lse_t = torch.logsumexp(z_t, dim=1, keepdim=True)
    group_lse_s = _group_logsumexp(z_s, groups, num_groups)  # [B, G]
    group_lse_t = _group_logsumexp(z_t, groups, num_groups)
    log_pg_s = group_lse_s - lse_s  # log p_G, student
    log_pg_t = group_lse_t - lse_t  # log p_G, teacher

    # Cross-group term: KL(q || p_G^S) with q the (optionally batch-rebalanced) teacher distribution.
    if rebalance:
        batch = z_t.shape[0]
        log_pb = torch.logsumexp(log_pg_t, dim=0) - torch.log(z_t.new_tensor(float(batch)))  # log p^B_G
        log_scale = torch.log(torch.exp(log_pb).mean()) - log_pb  # log s_G = log(mean(p^B) / p^B_G)
        log_q = F.log_softmax(log_pg_t + log_scale, dim=1)
    else:
        log_q = log_pg_t
    cross = F.kl_div(log_pg_s, log_q, log_target=True, reduction="none").sum(dim=1)

    # Within-group terms: KL(p~_G^T || p~_G^S) per group, from elementwise terms summed per group.
    log_pt_within_t = z_t - group_lse_t.gather(1, groups.unsqueeze(0).expand_as(z_t))
    log_pt_within_s = z_s - group_lse_s.gather(1, groups.unsqueeze(0).expand_as(z_s))
    if reweight:
        # Uniform weight: every group's KL counts once, whatever the teacher's mass on it.
        elementwise = torch.exp(log_pt_within_t) * (log_pt_within_t - log_pt_within_s)
    else:
        # p_G^T * p~_i^T = p_i^T: weighting each group's KL by the teacher's group probability.
        elementwise = torch.exp(z_t - lse_t) * (log_pt_within_t - log_pt_within_s)
    within = elementwise.sum(dim=1)  # the per-group sums added up: same as sum over classes

    return (alpha * cross + beta * within).mean() * temperature**2
