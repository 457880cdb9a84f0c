"""Distillation losses as plain functions over logits [B, C]; each returns the batch mean.

`ltkd_loss` follows the design's definition (its docstring). Everything is computed in log space and vectorised over
groups: the classes laid out by group as a padded [B, G, S] tensor (`group_layout`), so every group
sum is a dense reduction (O(B * C), no loop over groups or classes, no scatter); n(G) = 100 costs
about what n(G) = 3 costs and nothing underflows when a group's probability is tiny.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(p_T || p_S) at temperature T, times T^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


class GroupLayout(NamedTuple):
    """Classes laid out by group: `index` [G * S] picks, for each group in turn, its classes and then
    padding slots until the group's S slots are filled; S = the largest group's size.

    `z[:, index] + padding` viewed as [B, G, S] makes every group reduction a dense reduction over
    the last dimension: no scatter, gather or Python loop, and its backward is one index_add.
    Built once per partition (`group_layout`), e.g. when a method is constructed."""

    index: torch.Tensor  # LongTensor [G * S]; a padding slot repeats a class of its group
    padding: torch.Tensor  # float32 [G, S] (or [S, G]): 0 on a class, -1e30 on a padding slot (added to the logits)
    num_groups: int
    size: int  # S
    # Small groups are laid out [B, S, G] and reduced over dim 1: PyTorch's CPU softmax over a short
    # last dimension is ~15x slower than over a middle one (n(G) = C = 1000, S = 1: 9 ms against 0.6).
    slot_major: bool = False

    @property
    def dim(self) -> int:
        """The dimension of the padded [B, ., .] tensor that runs over a group's classes."""
        return 1 if self.slot_major else 2

    def to(self, device) -> "GroupLayout":
        return self._replace(index=self.index.to(device), padding=self.padding.to(device))


# Padded layouts wider than this many times C fall back to scatter operations (the padding would
# cost more than it saves; `partition_groups` never comes near it: its groups differ by one class).
_MAX_PADDING = 4
# Added to the logits of padding slots: exp of it is exactly 0 beside any real logit in float32 and
# float64, and (unlike -inf) it keeps every difference and product finite.
_PAD = -1e30
_SLOT_MAJOR_BELOW = 16  # groups smaller than this: [B, S, G] (see GroupLayout.slot_major)


def group_layout(groups: torch.Tensor, num_groups: int | None = None) -> GroupLayout | None:
    """The padded layout of a partition, or None when it would be wider than _MAX_PADDING * C.
    Reads the group sizes on the host: build it once per partition, not per batch."""
    groups = groups.detach().cpu().long()
    classes = groups.numel()
    if num_groups is None:
        num_groups = int(groups.max()) + 1
    sizes = torch.bincount(groups, minlength=num_groups)
    size = int(sizes.max())
    if num_groups * size > _MAX_PADDING * classes:
        return None
    order = torch.argsort(groups, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(size)
    real = slot[None, :] < sizes[:, None]  # [G, S]
    # A padding slot points at its group's first class and is pushed out by the padding value.
    index = order[starts[:, None] + torch.where(real, slot[None, :], 0)]
    padding = torch.where(real, 0.0, _PAD).float()
    if size < _SLOT_MAJOR_BELOW:
        return GroupLayout(index.t().reshape(-1), padding.t().contiguous(), num_groups, size, slot_major=True)
    return GroupLayout(index.reshape(-1), padding, num_groups, size)


def _padded(logits: torch.Tensor, layout: GroupLayout, temperature: float) -> torch.Tensor:
    """logits / T as [B, G, S] by the layout. A padding slot holds a value whose exp is exactly 0
    next to any real logit, yet finite (the same in student and teacher, so their difference is 0):
    padded entries add nothing and make no NaN."""
    picked = logits.index_select(1, layout.index).view(logits.shape[0], *layout.padding.shape)
    return torch.add(layout.padding, picked, alpha=1.0 / temperature)


def _group_logsumexp(logits: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log sum_{i in G} exp(logits_i) for every group: [B, C] -> [B, G], stable, loop-free (scatter
    form: any partition, used where the padded layout would be too wide)."""
    batch = logits.shape[0]
    index = groups.unsqueeze(0).expand(batch, -1)
    # Per-group maximum for stability; detached because the max only shifts, it cancels in value.
    group_max = logits.new_full((batch, num_groups), float("-inf"))
    group_max = group_max.scatter_reduce(1, index, logits.detach(), reduce="amax", include_self=True)
    shifted = torch.exp(logits - group_max.gather(1, index))
    sums = logits.new_zeros((batch, num_groups)).scatter_add(1, index, shifted)
    return group_max + torch.log(sums)


class _Decomposition(NamedTuple):
    cross_terms: torch.Tensor  # [B, G]: q_G (log q_G - log p_G^S); a row's sum is KL(q || p_G^S), q the
    #                            (optionally rebalanced) teacher group distribution
    within: torch.Tensor  # [B, G]: KL(p~_G^T || p~_G^S), each group's within-group KL
    log_pg_t: torch.Tensor  # [B, G]: log p_G^T
    log_pb_sum: torch.Tensor  # [G]: log sum_b p_G^T = log p^B_G + log B (p^B: the batch mean)

    @property
    def cross(self) -> torch.Tensor:  # [B]
        return self.cross_terms.sum(dim=1)

    @property
    def log_pb(self) -> torch.Tensor:  # [G]: log p^B_G
        return self.log_pb_sum - math.log(self.log_pg_t.shape[0])


def _decompose(student_logits, teacher_logits, groups, temperature, rebalance, num_groups,
               layout: GroupLayout | None = None) -> _Decomposition:
    """The cross-group / within-group decomposition shared by the LTKD losses, in log space.

    Within group G, KL(p~^T || p~^S) = sum_{i in G} p~^T_i (z^T_i - z^S_i) - lse^T_G + lse^S_G
    (z = logits / T, lse_G = log sum_{i in G} exp z_i), since the p~^T_i of a group sum to 1: one
    product and one sum per class instead of two log-softmaxes. With a layout, every group
    reduction is a dense reduction over [B, G, S] (the fast path); without one, scatter operations."""
    if layout is not None:
        a, b = _padded(student_logits, layout, temperature), _padded(teacher_logits, layout, temperature)  # [B, G, S]
        dim = layout.dim
        group_lse_s = torch.logsumexp(a, dim=dim)  # [B, G]
        group_lse_t = torch.logsumexp(b, dim=dim)
        mean_diff = (torch.softmax(b, dim=dim) * (b - a)).sum(dim=dim)  # softmax within the group: p~^T, 0 on padding
    else:
        z_s = student_logits / temperature
        z_t = teacher_logits / temperature
        group_lse_s = _group_logsumexp(z_s, groups, num_groups)
        group_lse_t = _group_logsumexp(z_t, groups, num_groups)
        index = groups.unsqueeze(0).expand_as(z_t)
        p_within_t = torch.exp(z_t - group_lse_t.gather(1, index))
        mean_diff = z_t.new_zeros(group_lse_t.shape).scatter_add(1, index, p_within_t * (z_t - z_s))
    within = mean_diff + (group_lse_s - group_lse_t)
    log_pg_s = F.log_softmax(group_lse_s, dim=1)  # log p_G, student
    log_pg_t = F.log_softmax(group_lse_t, dim=1)  # log p_G, teacher
    log_pb_sum = torch.logsumexp(log_pg_t, dim=0)  # log (B p^B_G)
    # q_G = s_G p_G / sum(s p), s_G = mean(p^B) / p^B_G: mean(p^B), and B, are constant factors that
    # the normalisation cancels, so log q = log_softmax(log p_G - log (B p^B_G)).
    log_q = F.log_softmax(log_pg_t - log_pb_sum, dim=1) if rebalance else log_pg_t
    cross_terms = F.kl_div(log_pg_s, log_q, log_target=True, reduction="none")
    return _Decomposition(cross_terms, within, log_pg_t, log_pb_sum)


def _layout_for(groups: torch.Tensor, num_groups: int | None, layout: GroupLayout | None):
    """(G, layout): a given layout is used as it is; without one, it is built here (a host read of
    the group sizes: methods pass theirs, built once)."""
    if layout is not None:
        return layout.num_groups, layout
    if num_groups is None:
        num_groups = int(groups.max().item()) + 1
    built = group_layout(groups, num_groups)
    return num_groups, built.to(groups.device) if built is not None else None


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
    layout: GroupLayout | None = None,
) -> torch.Tensor:
    """LTKD: alpha * rebalanced cross-group KL + beta * uniformly weighted within-group KLs, times T^2.

    groups: LongTensor [C] of group ids 0..G-1, every group non-empty (see
    `trainer.groups.partition_groups`).
    rebalance=False uses the teacher's own group distribution (the "biased" ablation);
    reweight=False weights each within-group KL by the teacher's group probability, which with
    rebalance=False and alpha = beta = 1 makes the sum equal `kd_loss` exactly.
    layout: `group_layout(groups)`, built once by the caller: no host read per call (a device sync
    on a GPU). Without it, it is built here (num_groups, if given, saves reading groups.max()).
    """
    groups = groups.to(student_logits.device)
    num_groups, layout = _layout_for(groups, num_groups, layout)
    d = _decompose(student_logits, teacher_logits, groups, temperature, rebalance, num_groups, layout)
    # Uniform weight (reweight): every group's KL counts once, whatever the teacher's mass on it;
    # else weighted by the teacher's group probability p_G^T (KD's own decomposition).
    within = d.within if reweight else torch.exp(d.log_pg_t) * d.within
    # One [B, G] sum for both terms: alpha * cross + beta * within, batch mean, times T^2.
    terms = (torch.add(d.cross_terms * alpha, within, alpha=beta) if isinstance(beta, (int, float))
             else d.cross_terms * alpha + within * beta)
    return terms.sum() * (temperature**2 / student_logits.shape[0])


# ---------------------------------------------------------------------------------------------
# Baselines and LTKD variants (appended; the functions above are unchanged).
# ---------------------------------------------------------------------------------------------

# Gap (in logit units after the temperature) by which a masked entry sits below the row's
# smallest logit: exp(-100) ~ 4e-44 is below float64's resolution relative to the row's largest
# term (>= 1 after the log-sum-exp shift), so the masked entry vanishes exactly, yet every
# quantity stays finite (no -inf arithmetic, hence no NaN in values or gradients).
_MASK_GAP = 100.0


def _mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`logits` with the entries where `mask` is True replaced by (row min - _MASK_GAP), detached."""
    fill = logits.detach().amin(dim=1, keepdim=True) - _MASK_GAP
    return torch.where(mask, fill, logits)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    beta: float | torch.Tensor = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): (alpha * TCKD + beta * NCKD) * T^2, batch mean.

    With p = softmax(z / T) for teacher and student and t the target class:
    - TCKD = KL(b^T || b^S) over the binary distributions b = [p_t, 1 - p_t];
    - NCKD = KL(p^T_\\t || p^S_\\t) over the non-target classes, p_\\t = p restricted to the classes
      other than t and renormalised.
    KD = TCKD + (1 - p^T_t) * NCKD, so alpha = 1, beta = 1 - p^T_t gives back `kd_loss` exactly.
    Computed in log space (log(1 - p_t) as a log-sum-exp over the non-target logits); alpha and
    beta may be floats or per-sample tensors [B]. The warm-up ramp belongs to the method.
    """
    z_s = student_logits / temperature
    z_t = teacher_logits / temperature
    target_mask = F.one_hot(target, z_s.shape[1]).bool()
    lse_s = torch.logsumexp(z_s, dim=1)
    lse_t = torch.logsumexp(z_t, dim=1)
    rest_s = _mask_logits(z_s, target_mask)  # target entry pushed out of the distribution
    rest_t = _mask_logits(z_t, target_mask)
    lse_rest_s = torch.logsumexp(rest_s, dim=1)
    lse_rest_t = torch.logsumexp(rest_t, dim=1)

    # TCKD: binary [p_t, 1 - p_t], both entries as logs.
    log_bt_s = torch.stack([z_s.gather(1, target[:, None]).squeeze(1) - lse_s, lse_rest_s - lse_s], dim=1)
    log_bt_t = torch.stack([z_t.gather(1, target[:, None]).squeeze(1) - lse_t, lse_rest_t - lse_t], dim=1)
    tckd = (torch.exp(log_bt_t) * (log_bt_t - log_bt_s)).sum(dim=1)

    # NCKD: the non-target distribution; the target's (vanishing) term is zeroed explicitly.
    log_q_s = rest_s - lse_rest_s[:, None]
    log_q_t = rest_t - lse_rest_t[:, None]
    nckd = (torch.exp(log_q_t) * (log_q_t - log_q_s)).masked_fill(target_mask, 0.0).sum(dim=1)

    return (alpha * tckd + beta * nckd).mean() * temperature**2


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: [N, D] x [N, D] -> [N].

    As DIST's release computes it: the cosine similarity of the centred rows, divided by
    |a||b| + eps. A constant row (zero variance) gives 0 instead of NaN; identical rows give 1 - O(eps).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): relation matching with Pearson correlation.

    With Y = softmax(z / T) ([B, C]) for student and teacher:
    inter-class = 1 - mean over samples of corr(Y^S[i, :], Y^T[i, :]);
    intra-class = 1 - mean over classes of corr(Y^S[:, c], Y^T[:, c]);
    loss = T^2 * (beta * inter + gamma * intra).
    """
    y_s = F.softmax(student_logits / temperature, dim=1)
    y_t = F.softmax(teacher_logits / temperature, dim=1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return (beta * inter + gamma * intra) * temperature**2


def class_balanced_weights(class_counts, beta: float = 0.9999) -> torch.Tensor:
    """Cui et al. (CVPR 2019) effective-number weights: w_c = (1 - beta) / (1 - beta^n_c), scaled so
    that sum_c w_c = C (mean 1). Equal counts give all ones; beta = 0 gives all ones. A class with
    no training image is counted as one (its weight stays finite)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    if beta == 0:
        weights = torch.ones_like(counts)
    else:
        weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights / weights.sum() * counts.numel()).float()


def balanced_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    temperature: float = 2.0,
) -> torch.Tensor:
    """BKD's class-balanced distillation term (Zhang et al., Neurocomputing 2023), times T^2, batch mean.

    The teacher's soft label is reweighted per class and renormalised, q_i = w_i p^T_i / sum_j w_j p^T_j
    (computed as softmax(z^T / T + log w)), and the student matches it: KL(q || p^S).
    class_weights None (or all ones) gives `kd_loss` exactly.
    """
    z_t = teacher_logits / temperature
    if class_weights is not None:
        z_t = z_t + torch.log(class_weights.to(z_t))
    log_q = F.log_softmax(z_t, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_q, log_target=True, reduction="batchmean") * temperature**2


def log_class_prior(class_counts) -> torch.Tensor:
    """log pi_c = log(n_c / sum_c' n_c'), the training class prior of `balanced_softmax_loss`, [C]
    float32 (computed in float64). A class with no training image counts as one (its log stays finite)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    return torch.log(counts / counts.sum()).float()


def balanced_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Balanced Softmax (Ren et al. 2020) / logit-adjusted CE (Menon et al. 2021):
    CE(z + tau * log pi, y), with pi the training class prior. tau = 1 is Balanced Softmax;
    equal counts make the shift a per-row constant, i.e. plain CE. Predictions use plain z."""
    return F.cross_entropy(logits + tau * log_prior.to(logits), target)


def batch_group_log_prior(
    teacher_logits: torch.Tensor, groups: torch.Tensor, temperature: float = 4.0, num_groups: int | None = None
) -> torch.Tensor:
    """log p^B_G: the log of the teacher's group probability averaged over the batch, [G]."""
    groups = groups.to(teacher_logits.device)
    if num_groups is None:
        num_groups = int(groups.max().item()) + 1
    z_t = teacher_logits / temperature
    log_pg_t = _group_logsumexp(z_t, groups, num_groups) - torch.logsumexp(z_t, dim=1, keepdim=True)
    return torch.logsumexp(log_pg_t, dim=0) - torch.log(z_t.new_tensor(float(z_t.shape[0])))


def continuous_group_weights(log_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Weights w_k = (p_k)^(-tau) / mean_k'((p_k')^(-tau)) from log masses log p_k, computed as
    K * softmax(-tau * log p) (stable for tiny p). Mean 1; tau = 0 is uniform; tau = 1 is
    proportional to the rebalancing factors mean(p) / p_k of the cross-group term."""
    return log_prior.numel() * torch.softmax(-tau * log_prior, dim=0)


def _suffix_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """[B, C] -> [B, C]: entry j is log sum_{i >= j} exp(x_i) (a reversed log-cumsum-exp)."""
    return torch.flip(torch.logcumsumexp(torch.flip(x, (1,)), dim=1), (1,))


def ltkd_continuous_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    groups: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 4.0,
    rebalance: bool = True,
    tau: float = 1.0,
    num_groups: int | None = None,
    layout: GroupLayout | None = None,
) -> torch.Tensor:
    """LTKD with continuous reweighting (the n(G) ablation's second row; the project's reading).

        loss = (alpha * cross + beta * sum_k w_k KL(p~^T_{S_k} || p~^S_{S_k})) * T^2,

    cross being LTKD's (rebalanced) cross-group term over the n(G) groups, S_k the classes of group
    k and of every group after it toward the tail (k = 0..G-1; S_0 is every class), p~_{S} the
    distribution restricted to S and renormalised, and w_k = `continuous_group_weights(log p^B(S_k),
    tau)` / G, p^B(S_k) being the teacher's batch-mean probability of S_k (teacher-only, detached).

    Why: LTKD's within-group term weights each group's KL uniformly instead of by the teacher's group
    mass p_G^T, a step function of the class ranking that vanishes for one-class groups (at n(G) = C
    LTKD keeps its cross term only). Here every group boundary opens one within-distribution reaching
    to the end of the tail, so a class at rank r is supervised within the distributions of the
    k(r) + 1 nested sets that hold it: the within-group supervision grows continuously from the head
    (1 set) to the tail (n(G) sets) and is weighted further toward the sets the teacher under-predicts
    (tau > 0). It is meaningful at every n(G): n(G) = 1 gives beta * KD (the full class-level KL,
    no cross term); n(G) = C gives C - 1 non-trivial nested KLs (the last set is one class).
    The weights sum to 1 over the n(G) sets: the sets overlap (S_0 holds every class), so a sum of
    their KLs would grow with n(G); a weighted mean keeps the within term on the scale of one KL.
    Vectorised: classes sorted by group make every S_k a suffix, so all sets cost one reversed
    log-cumsum-exp, O(B * C) like `ltkd_loss` (no Python loop over groups or classes).
    """
    groups = groups.to(student_logits.device)
    num_groups, layout = _layout_for(groups, num_groups, layout)
    d = _decompose(student_logits, teacher_logits, groups, temperature, rebalance, num_groups, layout)
    # Classes in group order: S_k is then the suffix that starts at group k's first class.
    order = torch.argsort(groups, stable=True)
    starts = torch.searchsorted(groups[order], torch.arange(num_groups, device=groups.device))
    z_t = (teacher_logits / temperature)[:, order]
    z_s = (student_logits / temperature)[:, order]
    lse_t = _suffix_logsumexp(z_t).index_select(1, starts)  # [B, G]: log sum_{S_k} exp(z^T)
    lse_s = _suffix_logsumexp(z_s).index_select(1, starts)
    # KL_k = sum_{i in S_k} p~^T_i (z^T_i - z^S_i) + lse^S_k - lse^T_k; the first sum from suffix
    # log-sum-exps of z^T + log|z^T - z^S|, positive and negative parts apart (stable in log space).
    diff = z_t - z_s
    tiny, none = torch.finfo(diff.dtype).tiny, torch.full_like(diff, float("-inf"))
    pos = torch.where(diff > 0, z_t + torch.log(diff.clamp_min(tiny)), none)
    neg = torch.where(diff < 0, z_t + torch.log((-diff).clamp_min(tiny)), none)
    mean_diff = (torch.exp(_suffix_logsumexp(pos).index_select(1, starts) - lse_t)
                 - torch.exp(_suffix_logsumexp(neg).index_select(1, starts) - lse_t))
    within_sets = mean_diff - lse_t + lse_s  # [B, G]
    # log p^B(S_k): suffix log-sum-exp of the per-group batch masses.
    log_pb_sets = torch.flip(torch.logcumsumexp(torch.flip(d.log_pb.detach(), (0,)), dim=0), (0,))
    weights = continuous_group_weights(log_pb_sets, tau) / num_groups
    within = (within_sets * weights.unsqueeze(0)).sum(dim=1)
    return (alpha * d.cross + beta * within).mean() * temperature**2


def hcl_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, levels=(4, 2, 1)) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021) for one feature pair [B, C, H, W].

    MSE at full resolution (weight 1) plus MSE after adaptive average pooling to each l x l in
    `levels` that is smaller than H, each used level weighted half the previous one; the sum is
    divided by the sum of the weights (a 1x1 pair: plain MSE). Both maps must have the same shape.
    Computed in at least float32 with autocast disabled (bf16/fp16 inputs are upcast).
    """
    dtype = torch.promote_types(student_feature.dtype, torch.float32)
    with torch.autocast(device_type=student_feature.device.type, enabled=False):
        s, t = student_feature.to(dtype), teacher_feature.to(dtype)
        loss = F.mse_loss(s, t)
        weight, total = 1.0, 1.0
        height = s.shape[2]
        for level in levels:
            if level >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            total += weight
        return loss / total


def class_activation_maps(features: torch.Tensor, classifier_weight: torch.Tensor) -> torch.Tensor:
    """CAMs: the classifier applied at every position of the last feature map,
    [B, D, H, W] x [K, D] -> [B, K, H, W]. Their spatial mean plus the bias gives the logits of a
    global-average-pool + linear head. Computed in at least float32 with autocast disabled."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.einsum("bdhw,kd->bkhw", features.to(dtype), classifier_weight.to(dtype))


def cat_loss(
    student_cams: torch.Tensor, teacher_cams: torch.Tensor, resolution: int = 2, normalize: bool = False
) -> torch.Tensor:
    """CAT-KD's class attention transfer (Guo et al., CVPR 2023): average-pool both CAM stacks to
    resolution x resolution, optionally L2-normalise each class map over its positions, then MSE.
    Computed in at least float32 with autocast disabled."""
    dtype = torch.promote_types(student_cams.dtype, torch.float32)
    with torch.autocast(device_type=student_cams.device.type, enabled=False):
        s = F.adaptive_avg_pool2d(student_cams.to(dtype), resolution)
        t = F.adaptive_avg_pool2d(teacher_cams.to(dtype), resolution)
        if normalize:
            s = F.normalize(s.flatten(2), dim=2)
            t = F.normalize(t.flatten(2), dim=2)
        return F.mse_loss(s, t)
