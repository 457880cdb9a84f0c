"""kd_loss and ltkd_loss against an independent float64 NumPy reference written from DESIGN.md.

The reference uses explicit loops over samples and groups (plain formulas, no log-space tricks), so
it shares nothing with the vectorised torch implementation but the contract.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainer.losses import balanced_softmax_loss, group_layout, kd_loss, log_class_prior, ltkd_loss

RTOL = 1e-10
ATOL = 1e-12


# ---------------------------------------------------------------------------------------------
# Reference (float64 NumPy, straight from DESIGN.md "Method contracts")
# ---------------------------------------------------------------------------------------------

def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum p log(p / q), with 0 log 0 = 0."""
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def ref_kd(zs: np.ndarray, zt: np.ndarray, T: float) -> float:
    total = 0.0
    for b in range(zs.shape[0]):
        total += _kl(_softmax(zt[b] / T), _softmax(zs[b] / T))
    return total / zs.shape[0] * T**2


def ref_ltkd(zs, zt, groups, alpha, beta, T, rebalance, reweight) -> float:
    B, C = zs.shape
    groups = np.asarray(groups)
    G = int(groups.max()) + 1
    members = [np.flatnonzero(groups == g) for g in range(G)]
    ps = np.stack([_softmax(zs[b] / T) for b in range(B)])
    pt = np.stack([_softmax(zt[b] / T) for b in range(B)])
    # group probabilities [B, G]
    pg_s = np.array([[ps[b, members[g]].sum() for g in range(G)] for b in range(B)])
    pg_t = np.array([[pt[b, members[g]].sum() for g in range(G)] for b in range(B)])
    # batch rebalancing
    pB = pg_t.mean(axis=0)  # p^B_G
    s = pB.mean() / pB  # s_G = mean_G(p^B) / p^B_G
    losses = []
    for b in range(B):
        if rebalance:
            q = s * pg_t[b] / np.sum(s * pg_t[b])
        else:
            q = pg_t[b]
        cross = _kl(q, pg_s[b])
        within = 0.0
        for g in range(G):
            idx = members[g]
            wt = pt[b, idx] / pt[b, idx].sum()  # renormalised within-group teacher distribution
            ws = ps[b, idx] / ps[b, idx].sum()
            kl_g = _kl(wt, ws)
            weight = 1.0 if reweight else pg_t[b, g]
            within += weight * kl_g
        losses.append((alpha * cross + beta * within) * T**2)
    return float(np.mean(losses))


def _t(a: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


def _random_groups(rng: np.random.Generator, C: int, G: int, kind: str) -> np.ndarray:
    """Group ids [C] covering every id 0..G-1."""
    if kind == "contiguous_even":
        return np.sort(np.arange(C) % G)
    if kind == "uneven":
        # random sizes >= 1 summing to C, contiguous
        cuts = np.sort(rng.choice(np.arange(1, C), size=G - 1, replace=False)) if G > 1 else np.array([], int)
        sizes = np.diff(np.concatenate([[0], cuts, [C]]))
        return np.repeat(np.arange(G), sizes)
    if kind == "permuted":
        # uneven sizes, then the classes shuffled and the group ids relabelled by a permutation
        base = _random_groups(rng, C, G, "uneven")
        relabel = rng.permutation(G)
        return relabel[base][rng.permutation(C)]
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Reference self-check: the hand-written reference must itself satisfy the slide identity.
# ---------------------------------------------------------------------------------------------

def test_reference_decomposition_identity():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(5, 9)) * 3, rng.normal(size=(5, 9)) * 3
    groups = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1])
    assert ref_ltkd(zs, zt, groups, 1.0, 1.0, 3.0, False, False) == pytest.approx(ref_kd(zs, zt, 3.0), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# kd_loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,C,T,scale", [(1, 2, 1.0, 1.0), (8, 10, 4.0, 3.0), (16, 100, 2.0, 5.0), (4, 7, 0.5, 2.0)])
def test_kd_loss_matches_reference(B, C, T, scale):
    rng = np.random.default_rng(B * 1000 + C)
    zs, zt = rng.normal(size=(B, C)) * scale, rng.normal(size=(B, C)) * scale
    got = kd_loss(_t(zs), _t(zt), temperature=T)
    assert got.dtype == torch.float64 and got.dim() == 0
    np.testing.assert_allclose(got.item(), ref_kd(zs, zt, T), rtol=RTOL, atol=ATOL)


def test_kd_loss_default_temperature_is_4():
    rng = np.random.default_rng(3)
    zs, zt = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))
    np.testing.assert_allclose(kd_loss(_t(zs), _t(zt)).item(), ref_kd(zs, zt, 4.0), rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# ltkd_loss against the reference
# ---------------------------------------------------------------------------------------------

CASES = [
    # B, C, G, group kind, T, alpha, beta, logit scale
    (8, 10, 3, "contiguous_even", 4.0, 1.0, 1.0, 3.0),
    (16, 100, 3, "contiguous_even", 4.0, 1.0, 1.0, 4.0),
    (5, 12, 4, "uneven", 2.0, 0.7, 2.5, 2.0),
    (7, 20, 5, "permuted", 1.0, 2.0, 0.3, 3.0),
    (3, 9, 1, "contiguous_even", 3.0, 1.5, 0.5, 2.0),  # n_groups = 1
    (6, 11, 11, "permuted", 4.0, 1.0, 2.0, 3.0),  # n_groups = C, non-contiguous
    (4, 8, 8, "contiguous_even", 0.5, 0.4, 1.3, 1.5),  # n_groups = C
    (1, 6, 2, "permuted", 4.0, 1.0, 1.0, 2.0),  # a batch of one
    (32, 100, 10, "permuted", 8.0, 3.0, 1.0, 6.0),
]
FLAGS = list(itertools.product([True, False], [True, False]))


@pytest.mark.parametrize("rebalance,reweight", FLAGS)
@pytest.mark.parametrize("B,C,G,kind,T,alpha,beta,scale", CASES)
def test_ltkd_loss_matches_reference(B, C, G, kind, T, alpha, beta, scale, rebalance, reweight):
    rng = np.random.default_rng([B, C, G, len(kind)])
    groups = _random_groups(rng, C, G, kind)
    assert sorted(set(groups.tolist())) == list(range(G))
    zs, zt = rng.normal(size=(B, C)) * scale, rng.normal(size=(B, C)) * scale
    expected = ref_ltkd(zs, zt, groups, alpha, beta, T, rebalance, reweight)
    got = ltkd_loss(
        _t(zs), _t(zt), torch.tensor(groups, dtype=torch.long),
        alpha=alpha, beta=beta, temperature=T, rebalance=rebalance, reweight=reweight,
    )
    assert got.dtype == torch.float64 and got.dim() == 0
    np.testing.assert_allclose(got.item(), expected, rtol=RTOL, atol=ATOL)


def test_ltkd_defaults_are_rebalance_reweight_T4_alpha_beta_1():
    rng = np.random.default_rng(11)
    groups = _random_groups(rng, 15, 3, "permuted")
    zs, zt = rng.normal(size=(6, 15)) * 2, rng.normal(size=(6, 15)) * 2
    got = ltkd_loss(_t(zs), _t(zt), torch.tensor(groups))
    np.testing.assert_allclose(got.item(), ref_ltkd(zs, zt, groups, 1.0, 1.0, 4.0, True, True), rtol=RTOL)


def test_ltkd_invariant_to_relabelling_group_ids():
    """Relabelling the group ids (same partition) leaves the loss unchanged (mean_G is symmetric)."""
    rng = np.random.default_rng(5)
    C, G = 13, 4
    groups = _random_groups(rng, C, G, "uneven")
    relabelled = rng.permutation(G)[groups]
    zs, zt = rng.normal(size=(9, C)) * 3, rng.normal(size=(9, C)) * 3
    for rebalance, reweight in FLAGS:
        a = ltkd_loss(_t(zs), _t(zt), torch.tensor(groups), rebalance=rebalance, reweight=reweight)
        b = ltkd_loss(_t(zs), _t(zt), torch.tensor(relabelled), rebalance=rebalance, reweight=reweight)
        np.testing.assert_allclose(a.item(), b.item(), rtol=RTOL)


def test_rebalance_changes_the_value():
    """Guard against a flag being ignored: each flag changes the loss on generic logits."""
    rng = np.random.default_rng(8)
    C = 20
    groups = torch.tensor(_random_groups(rng, C, 3, "uneven"))
    zs, zt = _t(rng.normal(size=(8, C)) * 3), _t(rng.normal(size=(8, C)) * 3)
    vals = {f: ltkd_loss(zs, zt, groups, rebalance=f[0], reweight=f[1]).item() for f in FLAGS}
    assert len({round(v, 12) for v in vals.values()}) == 4


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("G,kind", [(1, "contiguous_even"), (3, "uneven"), (7, "permuted"), (25, "permuted")])
def test_ltkd_biased_unweighted_equals_kd(T, G, kind):
    rng = np.random.default_rng(int(T * 10) + G)
    C = 25
    groups = torch.tensor(_random_groups(rng, C, G, kind))
    zs, zt = _t(rng.normal(size=(10, C)) * 4), _t(rng.normal(size=(10, C)) * 4)
    lt = ltkd_loss(zs, zt, groups, alpha=1.0, beta=1.0, temperature=T, rebalance=False, reweight=False)
    kd = kd_loss(zs, zt, temperature=T)
    np.testing.assert_allclose(lt.item(), kd.item(), rtol=RTOL, atol=ATOL)


def test_num_groups_argument_matches_none():
    rng = np.random.default_rng(21)
    for C, G, kind in [(10, 3, "uneven"), (30, 30, "permuted"), (17, 1, "contiguous_even"), (40, 6, "permuted")]:
        groups = torch.tensor(_random_groups(rng, C, G, kind))
        zs, zt = _t(rng.normal(size=(5, C)) * 3), _t(rng.normal(size=(5, C)) * 3)
        for rebalance, reweight in FLAGS:
            a = ltkd_loss(zs, zt, groups, rebalance=rebalance, reweight=reweight, num_groups=G)
            b = ltkd_loss(zs, zt, groups, rebalance=rebalance, reweight=reweight, num_groups=None)
            assert a.item() == b.item()


# ---------------------------------------------------------------------------------------------
# Sign, zero, gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rebalance,reweight", FLAGS)
def test_ltkd_nonnegative(rebalance, reweight):
    rng = np.random.default_rng(31)
    for trial in range(10):
        C = int(rng.integers(2, 40))
        G = int(rng.integers(1, C + 1))
        groups = torch.tensor(_random_groups(rng, C, G, "permuted"))
        zs, zt = _t(rng.normal(size=(6, C)) * 5), _t(rng.normal(size=(6, C)) * 5)
        val = ltkd_loss(zs, zt, groups, alpha=float(rng.uniform(0, 3)), beta=float(rng.uniform(0, 3)),
                        rebalance=rebalance, reweight=reweight)
        assert val.item() >= -1e-12
    assert kd_loss(zs, zt).item() >= 0


@pytest.mark.parametrize("reweight", [True, False])
def test_ltkd_zero_when_student_equals_teacher_without_rebalance(reweight):
    rng = np.random.default_rng(41)
    z = _t(rng.normal(size=(8, 20)) * 4)
    groups = torch.tensor(_random_groups(rng, 20, 4, "permuted"))
    val = ltkd_loss(z.clone(), z.clone(), groups, alpha=1.3, beta=0.7, rebalance=False, reweight=reweight)
    assert abs(val.item()) < 1e-12
    assert abs(kd_loss(z.clone(), z.clone()).item()) < 1e-12


def test_ltkd_rebalanced_identical_logits_cross_nonzero_within_zero():
    rng = np.random.default_rng(42)
    C = 20
    groups_np = _random_groups(rng, C, 4, "uneven")
    groups = torch.tensor(groups_np)
    # teacher favours the first group strongly, so the batch prior is far from uniform
    z_np = rng.normal(size=(8, C)) * 2
    z_np[:, groups_np == 0] += 3.0
    z = _t(z_np)
    full = ltkd_loss(z, z.clone(), groups, rebalance=True, reweight=True)
    assert full.item() > 1e-6  # rebalanced cross term: q != teacher's own p_G
    np.testing.assert_allclose(full.item(), ref_ltkd(z_np, z_np, groups_np, 1.0, 1.0, 4.0, True, True), rtol=RTOL)
    within_only = ltkd_loss(z, z.clone(), groups, alpha=0.0, beta=1.0, rebalance=True, reweight=True)
    assert abs(within_only.item()) < 1e-12


@pytest.mark.parametrize("rebalance,reweight", FLAGS)
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_ltkd_gradients_finite_and_nonzero_float32(rebalance, reweight, scale):
    torch.manual_seed(0)
    C = 100
    groups = torch.tensor(_random_groups(np.random.default_rng(3), C, 10, "permuted"))
    zs = (torch.randn(16, C) * scale).requires_grad_(True)
    zt = (torch.randn(16, C) * scale).requires_grad_(True)
    for T in (1.0, 4.0):
        for G_groups in (groups, torch.zeros(C, dtype=torch.long), torch.arange(C)):
            zs.grad = zt.grad = None
            loss = ltkd_loss(zs, zt, G_groups, temperature=T, rebalance=rebalance, reweight=reweight)
            assert torch.isfinite(loss)
            loss.backward()
            assert torch.isfinite(zs.grad).all() and torch.isfinite(zt.grad).all()
            assert zs.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_kd_gradients_finite_and_nonzero_float32(scale):
    torch.manual_seed(1)
    zs = (torch.randn(16, 100) * scale).requires_grad_(True)
    zt = torch.randn(16, 100) * scale
    loss = kd_loss(zs, zt, temperature=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


def test_ltkd_extreme_logits_float32_close_to_float64():
    """At scale 50 and T=1 group probabilities underflow in naive float32; the value must stay accurate."""
    rng = np.random.default_rng(51)
    C = 30
    groups_np = _random_groups(rng, C, 5, "permuted")
    zs, zt = rng.normal(size=(8, C)) * 50, rng.normal(size=(8, C)) * 50
    for rebalance, reweight in FLAGS:
        v64 = ltkd_loss(_t(zs), _t(zt), torch.tensor(groups_np), temperature=1.0,
                        rebalance=rebalance, reweight=reweight).item()
        v32 = ltkd_loss(_t(zs, torch.float32), _t(zt, torch.float32), torch.tensor(groups_np), temperature=1.0,
                        rebalance=rebalance, reweight=reweight).item()
        assert np.isfinite(v32) and np.isfinite(v64)
        np.testing.assert_allclose(v32, v64, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Vectorisation (regression guard against a Python loop over groups)
# ---------------------------------------------------------------------------------------------

def _aten_ops(fn) -> list[str]:
    """The ATen operations one call of `fn` runs (forward and backward), in order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def test_ltkd_runs_the_same_operations_at_every_n_groups():
    """The loss is vectorised over groups (a padded group layout, dense reductions), not a loop:
    n(G) = 100 runs exactly the operations n(G) = 3 runs, per batch as a method calls it (with the
    layout it built once). Counted, not timed (a timed test fails on a busy machine); the speed
    itself is measured in bench/bench_losses.py."""
    torch.manual_seed(0)
    B, C = 64, 100
    zs = torch.randn(B, C, requires_grad=True)
    zt = torch.randn(B, C)
    g3 = torch.tensor(_random_groups(np.random.default_rng(0), C, 3, "uneven"))
    g100 = torch.arange(C)[torch.randperm(C)]

    def step(groups, G):
        layout = group_layout(groups, G)
        assert layout is not None

        def run():
            zs.grad = None
            ltkd_loss(zs, zt, groups, layout=layout).backward()
        return run

    with torch.inference_mode(False):
        ops3, ops100 = _aten_ops(step(g3, 3)), _aten_ops(step(g100, 100))
    assert len(ops3) > 20 and ops100 == ops3


def test_balanced_softmax_loss_with_the_class_prior():
    """The supervised term of `ce: balanced_softmax` (issue 17): CE(z + log pi, y), pi the training prior;
    uniform counts give plain CE; a class without images counts as one."""
    counts = [400, 100, 20, 0]
    prior = log_class_prior(counts)
    assert prior.dtype == torch.float32
    np.testing.assert_allclose(prior.double().numpy(), np.log(np.array([400, 100, 20, 1]) / 521), rtol=1e-6)
    rng = np.random.default_rng(3)
    z, y = rng.normal(0, 3, (12, 4)), rng.integers(0, 4, 12)
    adjusted = z + np.log(np.array([400, 100, 20, 1]) / 521)
    ref = np.mean(np.log(np.exp(adjusted).sum(1)) - adjusted[np.arange(12), y])
    got = balanced_softmax_loss(torch.tensor(z), torch.tensor(y), prior)
    assert float(got) == pytest.approx(ref, rel=1e-6)
    plain = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y))
    assert float(balanced_softmax_loss(torch.tensor(z), torch.tensor(y), log_class_prior([7] * 4))) == pytest.approx(float(plain), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The group layout (issue 14): both orientations and the scatter fallback give the reference value
# ---------------------------------------------------------------------------------------------

def test_group_layout_pads_each_group_to_the_largest():
    groups = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 1])  # sizes 3 / 4 / 3
    layout = group_layout(groups)
    assert (layout.num_groups, layout.size, layout.slot_major) == (3, 4, True)
    index = layout.index.view(4, 3).t()  # [G, S]
    real = layout.padding.t() == 0
    for g in range(3):
        assert sorted(index[g][real[g]].tolist()) == torch.nonzero(groups == g).flatten().tolist()
        assert torch.all(groups[index[g]] == g)  # a padding slot repeats a class of its own group
    assert int((~real).sum()) == 2 and float(layout.padding.min()) == pytest.approx(-1e30)


@pytest.mark.parametrize("rebalance,reweight", FLAGS)
def test_layout_orientations_and_scatter_fallback_match_the_reference(rebalance, reweight):
    rng = np.random.default_rng(77)
    zs, zt = rng.normal(size=(9, 40)) * 4, rng.normal(size=(9, 40)) * 4
    even = _random_groups(rng, 40, 2, "permuted")  # large groups: [B, G, S]
    many = _random_groups(rng, 40, 13, "permuted")  # small groups: [B, S, G]
    lopsided = np.concatenate([np.zeros(30, int), np.arange(1, 11)])[rng.permutation(40)]  # 11 x 30 > 4 C: scatter
    layouts = [group_layout(torch.tensor(g)) for g in (even, many, lopsided)]
    assert layouts[0].slot_major is False and layouts[1].slot_major is True and layouts[2] is None
    for groups, layout in zip((even, many, lopsided), layouts):
        expected = ref_ltkd(zs, zt, groups, 0.8, 1.7, 3.0, rebalance, reweight)
        for given in (layout, None):
            got = ltkd_loss(_t(zs), _t(zt), torch.tensor(groups), alpha=0.8, beta=1.7, temperature=3.0,
                            rebalance=rebalance, reweight=reweight, layout=given)
            np.testing.assert_allclose(got.item(), expected, rtol=RTOL, atol=ATOL)


def test_ltkd_method_builds_its_layout_once_and_matches_the_plain_call():
    from trainer.methods import build_method

    counts = sorted(np.random.default_rng(2).integers(5, 500, 100).tolist(), reverse=True)
    method = build_method("ltkd", {"n_groups": 10}, counts)
    kwargs = method.loss_kwargs()
    assert kwargs["layout"] is not None and kwargs["layout"].index is method.group_index
    torch.manual_seed(3)
    zs, zt = torch.randn(16, 100), torch.randn(16, 100)
    plain = ltkd_loss(zs, zt, method.groups, alpha=1.0, beta=1.0, temperature=4.0)
    assert float(method.distill_loss(zs, zt)) == pytest.approx(float(plain), rel=1e-6)
