"""Baseline methods and LTKD variants: losses against float64 NumPy references, identities, the
feature-based methods' gradients, and a 2-epoch end-to-end run of every registered method."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.config import Recipe, TrialConfig
from trainer.groups import partition_groups
from trainer.loop import run_trial
from trainer.losses import (
    balanced_kd_loss,
    batch_group_log_prior,
    cat_loss,
    class_activation_maps,
    class_balanced_weights,
    continuous_group_weights,
    dist_loss,
    dkd_loss,
    hcl_loss,
    kd_loss,
    ltkd_continuous_loss,
    ltkd_loss,
)
from trainer.methods import METHODS, PARAM_CHOICES, build_method
from trainer.methods.reviewkd import review_levels
from trainer.models import build_model

SHAPES = [(1, 5), (4, 10), (16, 100)]
TEMPERATURES = [1.0, 2.0, 4.0]


# ---------------------------------------------------------------- NumPy references (float64)
def np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_dkd(zs, zt, y, alpha, beta, T):
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    losses = []
    for i in range(zs.shape[0]):
        t = y[i]
        bs = np.array([ps[i, t], 1 - ps[i, t]])
        bt = np.array([pt[i, t], 1 - pt[i, t]])
        tckd = np.sum(bt * np.log(bt / bs))
        keep = np.arange(zs.shape[1]) != t
        qs = ps[i, keep] / ps[i, keep].sum()
        qt = pt[i, keep] / pt[i, keep].sum()
        nckd = np.sum(qt * np.log(qt / qs))
        losses.append(alpha * tckd + beta * nckd)
    return np.mean(losses) * T**2


def np_pearson_mean(a, b):
    out = []
    for u, v in zip(a, b):
        u, v = u - u.mean(), v - v.mean()
        out.append((u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8))  # as DIST's release normalises
    return np.mean(out)


def np_dist(zs, zt, beta, gamma, T):
    ys, yt = np_softmax(zs / T), np_softmax(zt / T)
    return T**2 * (beta * (1 - np_pearson_mean(ys, yt)) + gamma * (1 - np_pearson_mean(ys.T, yt.T)))


def _logits(b, c, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (b, c)), rng.normal(0, scale, (b, c)), rng.integers(0, c, b)


# ---------------------------------------------------------------- DKD
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_dkd_matches_numpy(shape, T):
    zs, zt, y = _logits(*shape, seed=shape[1] + int(T))
    for alpha, beta in [(1.0, 8.0), (0.5, 2.0)]:
        ref = np_dkd(zs, zt, y, alpha, beta, T)
        got = dkd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), alpha, beta, T)
        assert got.dtype == torch.float64
        assert float(got) == pytest.approx(ref, rel=1e-10, abs=1e-12)
        got32 = dkd_loss(torch.tensor(zs).float(), torch.tensor(zt).float(), torch.tensor(y), alpha, beta, T)
        assert float(got32) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_dkd_decomposes_kd_per_sample():
    """KD = TCKD + (1 - p_t^T) NCKD, checked sample by sample (batch of one, beta a scalar)."""
    zs, zt, y = _logits(8, 10, seed=3)
    for T in TEMPERATURES:
        for i in range(8):
            s, t, target = torch.tensor(zs[i : i + 1]), torch.tensor(zt[i : i + 1]), torch.tensor(y[i : i + 1])
            p_target = float(F.softmax(t / T, dim=1)[0, y[i]])
            got = dkd_loss(s, t, target, alpha=1.0, beta=1.0 - p_target, temperature=T)
            assert float(got) == pytest.approx(float(kd_loss(s, t, T)), rel=1e-10, abs=1e-12)


def test_dkd_extreme_logits_are_finite():
    s = torch.tensor([[1e4, -1e4, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 5.0, 0.0], [1e3, 0.0, 0.0, -1e3]])
    loss = dkd_loss(s, t, torch.tensor([0, 3]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- DIST
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", TEMPERATURES)
def test_dist_matches_numpy(shape, T):
    zs, zt, _ = _logits(*shape, seed=7 * shape[0] + int(T))
    for beta, gamma in [(1.0, 1.0), (2.0, 0.5)]:
        ref = np_dist(zs, zt, beta, gamma, T)
        got = dist_loss(torch.tensor(zs), torch.tensor(zt), beta, gamma, T)
        assert float(got) == pytest.approx(ref, rel=1e-9, abs=1e-12)
        got32 = dist_loss(torch.tensor(zs).float(), torch.tensor(zt).float(), beta, gamma, T)
        assert float(got32) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_dist_zero_for_identical_and_shift_invariant():
    zs, zt, _ = _logits(16, 10, seed=11)
    s, t = torch.tensor(zs), torch.tensor(zt)
    # The release's |a||b| + 1e-8 makes an identical row's correlation 1 - 1e-8 / |a|^2, not exactly 1.
    assert float(dist_loss(s, s.clone(), 1.0, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-5)
    shift = torch.randn(16, 1, dtype=torch.float64) * 10
    assert float(dist_loss(s + shift, t, 2.0, 2.0, 4.0)) == pytest.approx(float(dist_loss(s, t, 2.0, 2.0, 4.0)), rel=1e-10)
    assert float(dist_loss(s, t - shift, 2.0, 2.0, 4.0)) == pytest.approx(float(dist_loss(s, t, 2.0, 2.0, 4.0)), rel=1e-10)


def test_dist_gradient_finite_batch_of_one():
    s = torch.randn(1, 10, requires_grad=True)
    loss = dist_loss(s, torch.randn(1, 10))  # one sample: the per-class correlation is degenerate (0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- Balanced softmax, BKD
def test_balanced_softmax_is_ce_for_equal_counts_and_adjusts_otherwise():
    zs, _, y = _logits(8, 5, seed=5)
    s, target = torch.tensor(zs).float(), torch.tensor(y)
    equal = build_method("balanced_softmax", {}, [20] * 5)
    assert float(sum(equal.losses(s, None, target, 0).values())) == pytest.approx(float(F.cross_entropy(s, target)), rel=1e-6)
    counts = [100, 50, 20, 10, 5]
    method = build_method("balanced_softmax", {}, counts)
    prior = np.array(counts) / sum(counts)
    adj = zs + np.log(prior)
    ref = np.mean(-np.log(np_softmax(adj)[np.arange(8), y]))
    assert float(sum(method.losses(s, None, target, 0).values())) == pytest.approx(ref, rel=1e-5)
    assert not METHODS["balanced_softmax"].needs_teacher and not method.NEEDS_TEACHER


def test_class_balanced_weights():
    w = class_balanced_weights([500, 100, 10], 0.9999).double().numpy()
    raw = (1 - 0.9999) / (1 - 0.9999 ** np.array([500, 100, 10]))
    np.testing.assert_allclose(w, raw / raw.sum() * 3, rtol=1e-6)
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(class_balanced_weights([7, 7, 7]).numpy(), 1.0, rtol=1e-6)


def test_bkd_is_kd_plus_ce_for_equal_counts():
    zs, zt, y = _logits(8, 5, seed=9)
    s, t, target = torch.tensor(zs).float(), torch.tensor(zt).float(), torch.tensor(y)
    bkd = build_method("bkd", {"temperature": 3.0}, [30] * 5)
    kd = build_method("kd", {"temperature": 3.0}, [30] * 5)
    assert float(sum(bkd.losses(s, t, target, 0).values())) == pytest.approx(float(sum(kd.losses(s, t, target, 0).values())), rel=1e-5)


def test_bkd_reweights_teacher_towards_tail():
    zs, zt, _ = _logits(6, 4, seed=10)
    w = torch.tensor([0.2, 0.5, 1.3, 2.0], dtype=torch.float64)
    q = np_softmax(zt / 2.0) * w.numpy()
    q /= q.sum(axis=1, keepdims=True)
    ps = np_softmax(zs / 2.0)
    ref = np.mean(np.sum(q * np.log(q / ps), axis=1)) * 4.0
    got = balanced_kd_loss(torch.tensor(zs), torch.tensor(zt), w, 2.0)
    assert float(got) == pytest.approx(ref, rel=1e-10)
    # Deferred re-weighting: plain KD before `reweight_from`.
    method = build_method("bkd", {"reweight_from": 3}, [100, 40, 10, 2])
    s, t = torch.tensor(zs).float(), torch.tensor(zt).float()
    assert float(method.losses(s, t, torch.zeros(6, dtype=torch.long), 2)["bkd"]) == pytest.approx(float(kd_loss(s, t, 2.0)), rel=1e-5)
    assert float(method.losses(s, t, torch.zeros(6, dtype=torch.long), 3)["bkd"]) != pytest.approx(float(kd_loss(s, t, 2.0)), rel=1e-3)


# ---------------------------------------------------------------- DKD warm-up
def test_dkd_method_warmup_ramp():
    zs, zt, y = _logits(8, 10, seed=12)
    s, t, target = torch.tensor(zs).float(), torch.tensor(zt).float(), torch.tensor(y)
    method = build_method("dkd", {}, [10] * 10)
    full = float(dkd_loss(s, t, target, 1.0, 8.0, 4.0))
    assert float(method.losses(s, t, target, 0)["dkd"]) == pytest.approx(full / 20, rel=1e-5)
    assert float(method.losses(s, t, target, 9)["dkd"]) == pytest.approx(full / 2, rel=1e-5)
    assert float(method.losses(s, t, target, 50)["dkd"]) == pytest.approx(full, rel=1e-5)


# ---------------------------------------------------------------- LTKD variants
COUNTS = [int(500 * 0.01 ** (i / 19)) for i in range(20)]


@pytest.mark.parametrize(
    "name, same_as",
    [
        ("ltkd_cross", {"beta": 0.0}),
        ("ltkd_within", {"alpha": 0.0}),
        ("ltkd_biased", {"rebalance": False}),
    ],
)
def test_ltkd_variants_reduce_to_ltkd(name, same_as):
    zs, zt, y = _logits(32, 20, seed=13)
    s, t, target = torch.tensor(zs).float(), torch.tensor(zt).float(), torch.tensor(y)
    common = {"n_groups": 4, "temperature": 2.0, "alpha": 1.5} if name != "ltkd_within" else {"n_groups": 4, "temperature": 2.0}
    variant = build_method(name, common, COUNTS)
    ref = build_method("ltkd", {**common, **same_as}, COUNTS)
    got, want = variant.losses(s, t, target, 0), ref.losses(s, t, target, 0)
    assert float(sum(got.values())) == pytest.approx(float(sum(want.values())), rel=1e-6)
    for key, value in same_as.items():
        assert variant.hparams[key] == value


def test_ltkd_variants_refuse_their_fixed_hyperparameter():
    with pytest.raises(TypeError):
        build_method("ltkd_cross", {"beta": 1.0}, COUNTS)
    with pytest.raises(TypeError):
        build_method("ltkd_within", {"alpha": 1.0}, COUNTS)
    with pytest.raises(TypeError):
        build_method("ltkd_biased", {"rebalance": True}, COUNTS)


def test_ltkd_continuous_weights():
    zs, zt, _ = _logits(32, 20, seed=14)
    groups = partition_groups(COUNTS, 5)
    log_pb = batch_group_log_prior(torch.tensor(zt), groups, 4.0, 5)
    assert float(torch.exp(log_pb).sum()) == pytest.approx(1.0, rel=1e-10)
    for tau in [0.0, 0.5, 1.0, 2.0]:
        w = continuous_group_weights(log_pb, tau)
        assert float(w.mean()) == pytest.approx(1.0, rel=1e-10)
        # Continuous and monotone: the less teacher mass, the larger the weight.
        order = torch.argsort(log_pb)
        assert torch.all(w[order][:-1] >= w[order][1:]) if tau > 0 else torch.allclose(w, torch.ones_like(w))
    # tau = 1: proportional to the rebalancing factors s = mean(p^B) / p^B.
    pb = torch.exp(log_pb)
    s = pb.mean() / pb
    torch.testing.assert_close(continuous_group_weights(log_pb, 1.0), s / s.mean())


def _np_ltkd_continuous(zs, zt, groups, alpha, beta, T, tau):
    """float64 reference by explicit loops: LTKD's rebalanced cross term over the groups plus the
    weighted mean of the within-set KLs over the nested tail sets S_k = groups k..G-1."""
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    n_g = int(groups.max()) + 1
    pg_s = np.stack([ps[:, groups == g].sum(1) for g in range(n_g)], 1)
    pg_t = np.stack([pt[:, groups == g].sum(1) for g in range(n_g)], 1)
    pb = pg_t.mean(0)
    q = pg_t * (pb.mean() / pb)
    q = q / q.sum(1, keepdims=True)
    cross = (q * np.log(q / pg_s)).sum(1)
    sets = [groups >= k for k in range(n_g)]
    pb_sets = np.array([pt[:, m].sum(1).mean() for m in sets])
    w = pb_sets ** (-tau)
    w = w / w.sum()
    within = np.zeros(zs.shape[0])
    for k, m in enumerate(sets):
        qs, qt = ps[:, m] / ps[:, m].sum(1, keepdims=True), pt[:, m] / pt[:, m].sum(1, keepdims=True)
        within += w[k] * (qt * np.log(qt / qs)).sum(1)
    return float((alpha * cross + beta * within).mean() * T**2)


@pytest.mark.parametrize("n_g", [1, 3, 5, 20])
def test_ltkd_continuous_matches_explicit_loops(n_g):
    zs, zt, _ = _logits(16, 20, seed=15)
    s, t = torch.tensor(zs), torch.tensor(zt)
    T, tau = 2.0, 0.7
    groups = partition_groups(COUNTS, n_g)
    got = ltkd_continuous_loss(s, t, groups, 1.3, 0.8, T, tau=tau, num_groups=n_g)
    assert float(got) == pytest.approx(_np_ltkd_continuous(zs, zt, groups.numpy(), 1.3, 0.8, T, tau), rel=1e-10)


def test_ltkd_continuous_is_meaningful_at_one_class_per_group():
    """n(G) = C: LTKD's within term vanishes (one-class groups), the continuous variant's does not,
    and its gradient reaches the student; n(G) = 1 is beta * KD."""
    zs, zt, _ = _logits(16, 20, seed=16)
    s, t = torch.tensor(zs, requires_grad=True), torch.tensor(zt)
    one_each = partition_groups(COUNTS, 20)
    assert float(ltkd_loss(s.detach(), t, one_each, 0.0, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-10)
    within = ltkd_continuous_loss(s, t, one_each, 0.0, 1.0, 4.0, tau=1.0)
    assert float(within.detach()) > 0.05 * float(kd_loss(s.detach(), t, 4.0))
    (grad,) = torch.autograd.grad(within, s)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    s = s.detach()
    for tau in (0.0, 1.0):
        full = ltkd_continuous_loss(s, t, one_each, 1.0, 1.0, 4.0, tau=tau)
        assert float(full) != pytest.approx(float(ltkd_loss(s, t, one_each, 1.0, 1.0, 4.0)), rel=1e-3)
    single = partition_groups(COUNTS, 1)
    assert float(ltkd_continuous_loss(s, t, single, 1.0, 0.5, 4.0)) == pytest.approx(0.5 * float(kd_loss(s, t, 4.0)), rel=1e-10)
    # The method at n(G) = C (the paper's n(G) = 100 column): finite, differs from LTKD.
    y = torch.zeros(16, dtype=torch.long)
    cont = build_method("ltkd_continuous", {"n_groups": 20}, COUNTS).losses(s, t, y, 0)["ltkd"]
    plain = build_method("ltkd", {"n_groups": 20}, COUNTS).losses(s, t, y, 0)["ltkd"]
    assert torch.isfinite(cont) and float(cont) > float(plain)


def test_ltkd_continuous_large_gaps_stay_finite():
    s = torch.tensor([[60.0, -60.0, 0.0, 5.0]] * 2, requires_grad=True)
    t = torch.tensor([[-50.0, 80.0, 3.0, -7.0], [10.0, -10.0, 0.0, 0.0]])
    groups = torch.tensor([0, 1, 2, 3])
    loss = ltkd_continuous_loss(s, t, groups, 1.0, 1.0, 1.0, tau=1.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # A student equal to the teacher: every nested KL is 0 (no term to take a log of), gradients finite.
    same = t.clone().requires_grad_(True)
    within = ltkd_continuous_loss(same, t, groups, 0.0, 1.0, 1.0, tau=1.0)
    (grad,) = torch.autograd.grad(within, same)
    assert abs(float(within.detach())) < 1e-6 and torch.isfinite(grad).all()


# ---------------------------------------------------------------- ReviewKD, CAT-KD
def _pair(seed=0, teacher_requires_grad=False):
    torch.manual_seed(seed)
    student = build_model("cnn_w8", 10, in_channels=1)
    teacher = build_model("cnn_w32", 10, in_channels=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(teacher_requires_grad)
    return student, teacher


@pytest.mark.parametrize("name", ["reviewkd", "catkd"])
@pytest.mark.parametrize("teacher_requires_grad", [False, True])
def test_feature_methods_grad_to_student_only(name, teacher_requires_grad):
    student, teacher = _pair(teacher_requires_grad=teacher_requires_grad)
    method = build_method(name, {"warmup": 0} if name == "reviewkd" else {}, [30] * 10)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    method.setup(student, teacher, x[:2])
    assert not any(p.grad is not None for p in student.parameters())  # setup's probe leaves no grads
    s_feats, s_logits = student.forward_features(x)
    t_feats, t_logits = teacher.forward_features(x)  # deliberately not under no_grad
    terms = method.losses(s_logits, t_logits, y, 5, s_feats, t_feats)
    feature_term = terms["reviewkd" if name == "reviewkd" else "cat"]
    assert feature_term.dim() == 0 and torch.isfinite(feature_term) and float(feature_term.detach()) > 0
    params = list(student.parameters()) + list(method.parameters())
    # The feature term alone reaches the student's convolutions (and the connectors).
    grads = torch.autograd.grad(feature_term, [student.block1[0].weight, student.block2[0].weight], allow_unused=True, retain_graph=True)
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    sum(terms.values()).backward()
    for p in params:
        # CAT-KD's student head is bias-free (the bias is pinned at zero, frozen): nothing else is frozen.
        assert (p.grad is not None and torch.isfinite(p.grad).all()) or (name == "catkd" and p is student.fc.bias)
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())
    if name == "reviewkd":
        assert len(list(method.parameters())) > 0 and all(float(p.grad.abs().sum()) > 0 for p in method.fusions[0].reduce.parameters())
        assert not any(p is q for p in method.parameters() for q in student.parameters())
    else:
        assert len(list(method.parameters())) == 0  # uses the student's own classifier, registers nothing


def test_cams_average_to_logits_and_cat_loss():
    student, _ = _pair()
    student.eval()
    with torch.no_grad():
        feats, logits = student.forward_features(torch.randn(4, 1, 8, 8))
    cams = class_activation_maps(feats[-1], student.fc.weight)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + student.fc.bias, logits, rtol=1e-5, atol=1e-5)
    assert float(cat_loss(cams.detach(), cams.detach().clone())) == 0.0
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ref = F.mse_loss(F.avg_pool2d(a, 2), F.avg_pool2d(b, 2))
    assert float(cat_loss(a, b, 2)) == pytest.approx(float(ref), rel=1e-6)


def test_hcl_loss():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert float(hcl_loss(a, a.clone())) == 0.0
    pools = [F.mse_loss(F.adaptive_avg_pool2d(a, l), F.adaptive_avg_pool2d(b, l)) for l in (4, 2, 1)]
    ref = (F.mse_loss(a, b) + 0.5 * pools[0] + 0.25 * pools[1] + 0.125 * pools[2]) / 1.875
    assert float(hcl_loss(a, b)) == pytest.approx(float(ref), rel=1e-6)
    # A 2x2 map skips the 4 and 2 levels.
    c, d = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    ref2 = (F.mse_loss(c, d) + 0.5 * F.mse_loss(c.mean((2, 3)), d.mean((2, 3)))) / 1.5
    assert float(hcl_loss(c, d)) == pytest.approx(float(ref2), rel=1e-6)


def test_hcl_loss_on_1x1_is_mse():
    a, b = torch.randn(3, 5, 1, 1), torch.randn(3, 5, 1, 1)
    assert float(hcl_loss(a, b)) == pytest.approx(float(F.mse_loss(a, b)), rel=1e-6)


def _run_reviewkd(method, student, teacher, x, y, epoch=5):
    s_feats, s_logits = student.forward_features(x)
    with torch.no_grad():
        t_feats, t_logits = teacher.forward_features(x)
    return method.losses(s_logits, t_logits, y, epoch, s_feats, t_feats), s_feats, t_feats


def test_reviewkd_levels_zoo_pair():
    """Stage maps (not the stem) plus the pooled embedding as a 1x1 level, paired from the deep end."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8x4", 100), build_model("resnet32x4", 100).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    feats, _ = student.forward_features(x)
    levels = review_levels(feats)
    assert [tuple(l.shape[1:]) for l in levels] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 1, 1)]
    assert all(l is not feats[0] for l in levels)  # the stem is not a level
    torch.testing.assert_close(levels[-1].flatten(1), feats[-1])  # the deepest level is the pooled vector
    method = build_method("reviewkd", {"warmup": 0}, [5] * 100)
    method.setup(student, teacher, x)
    assert method.level_shapes == [
        ((64, 32, 32), (64, 32, 32)), ((128, 16, 16), (128, 16, 16)), ((256, 8, 8), (256, 8, 8)), ((256, 1, 1), (256, 1, 1)),
    ]
    assert len(method.fusions) == 4 and method.fusions[-1].attention is None
    assert all(f.attention is not None for f in method.fusions[:-1])
    # The fused outputs have the paired teacher levels' shapes.
    s_feats, _ = student.forward_features(x)
    with torch.no_grad():
        t_levels = review_levels(teacher.forward_features(x)[0])
    s_levels, deeper = review_levels(s_feats), None
    for level in reversed(range(4)):
        out, deeper = method.fusions[level](s_levels[level], deeper, t_levels[level].shape[-2:])
        assert out.shape == t_levels[level].shape
    terms, _, _ = _run_reviewkd(method, student, teacher, x, y)
    assert terms["reviewkd"].dtype == torch.float32 and torch.isfinite(terms["reviewkd"])
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())


def test_reviewkd_levels_small_cnn():
    """cnn_* models (no pooled vector): both maps plus the global average of the last one."""
    student, teacher = _pair()
    x = torch.randn(4, 1, 8, 8)
    feats, _ = student.forward_features(x)
    levels = review_levels(feats)
    assert len(levels) == 3 and levels[0] is feats[0] and levels[1] is feats[1]
    torch.testing.assert_close(levels[2], feats[1].mean(dim=(2, 3), keepdim=True))
    method = build_method("reviewkd", {}, [30] * 10)
    method.setup(student, teacher, x[:2])
    assert method.level_shapes == [((8, 8, 8), (32, 8, 8)), ((16, 4, 4), (64, 4, 4)), ((16, 1, 1), (64, 1, 1))]
    # A training batch of one (a loader's last batch) works: the 1x1 level's BN uses running statistics.
    terms, _, _ = _run_reviewkd(method, student, teacher, x[:1], torch.tensor([3]))
    assert torch.isfinite(terms["reviewkd"])


@pytest.mark.parametrize("teacher_name, student_name", [("vgg13", "mobilenet_v2"), ("resnet32x4", "shufflenet_v1")])
def test_reviewkd_heterogeneous_pairs(teacher_name, student_name):
    torch.manual_seed(1)
    student, teacher = build_model(student_name, 100), build_model(teacher_name, 100).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    method = build_method("reviewkd", {"warmup": 0}, [5] * 100)
    method.setup(student, teacher, x)
    n = min(len(review_levels(student.forward_features(x)[0])), len(review_levels(teacher.forward_features(x)[0])))
    assert len(method.fusions) == n and method.level_shapes[-1][0][1:] == (1, 1) == method.level_shapes[-1][1][1:]
    terms, _, _ = _run_reviewkd(method, student, teacher, x, y)
    assert torch.isfinite(terms["reviewkd"]) and float(terms["reviewkd"].detach()) > 0
    terms["reviewkd"].backward()
    grads = [p.grad for p in list(student.parameters()) + list(method.parameters()) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None for p in method.parameters())


def test_catkd_and_hcl_are_float32_under_bf16_autocast():
    student, teacher = _pair()
    method = build_method("catkd", {}, [30] * 10)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    method.setup(student, teacher, x[:2])
    with torch.no_grad():
        s_feats, s_logits = student.forward_features(x)
        t_feats, t_logits = teacher.forward_features(x)
    plain = method.losses(s_logits, t_logits, y, 0, s_feats, t_feats)["cat"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cams = class_activation_maps(t_feats[-1], teacher.fc.weight)
        mixed = method.losses(s_logits, t_logits, y, 0, s_feats, t_feats)["cat"]
    assert cams.dtype == torch.float32
    torch.testing.assert_close(cams, class_activation_maps(t_feats[-1], teacher.fc.weight), rtol=1e-5, atol=1e-6)
    assert mixed.dtype == torch.float32 and float(mixed.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)

    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hcl_loss(a, b)
        got_low = hcl_loss(a.bfloat16(), b.bfloat16())  # bf16 inputs are upcast
        got_cat = cat_loss(a.bfloat16(), b.bfloat16())
    assert got.dtype == got_low.dtype == got_cat.dtype == torch.float32
    assert float(got) == pytest.approx(float(hcl_loss(a, b)), rel=1e-5)
    assert float(got_low) == pytest.approx(float(hcl_loss(a.bfloat16().float(), b.bfloat16().float())), rel=1e-5)
    assert float(got_cat) == pytest.approx(float(cat_loss(a.bfloat16().float(), b.bfloat16().float())), rel=1e-5)

    # ReviewKD under autocast: the connectors may run in bf16, the loss is float32.
    rk = build_method("reviewkd", {"warmup": 0}, [30] * 10)
    rk.setup(student, teacher, x[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, _, _ = _run_reviewkd(rk, student, teacher, x, y)
    assert terms["reviewkd"].dtype == torch.float32 and torch.isfinite(terms["reviewkd"])


# ---------------------------------------------------------------- the `ce` option (issue 17)
DISTILLERS = sorted(name for name, spec in METHODS.items() if spec.needs_teacher)
LT_COUNTS = [500, 300, 180, 100, 60, 35, 20, 12, 7, 4]


def _terms(name, params, counts, seed=21):
    """One batch's loss terms of `name` on a small CNN pair (logits and features), epoch 5."""
    torch.manual_seed(seed)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    student, teacher = _pair(seed)
    method = build_method(name, params, counts)
    torch.manual_seed(seed + 1)  # connectors built in setup() start the same whatever `ce` is
    method.setup(student, teacher, x[:2])
    s_feats, s_logits = student.forward_features(x)
    with torch.no_grad():
        t_feats, t_logits = teacher.forward_features(x)
    terms = method.losses(s_logits, t_logits, y, 5, s_feats, t_feats)
    return {k: v.detach() for k, v in terms.items()}, s_logits.detach(), y


def test_every_distiller_takes_the_ce_option_and_checks_it():
    for name, spec in METHODS.items():
        assert ("ce" in spec.params) == spec.needs_teacher, name
        if spec.needs_teacher:
            assert spec.params["ce"] == "standard" and spec.params["ce_weight"] == 1.0, name
    assert PARAM_CHOICES["ce"] == ("standard", "balanced_softmax")
    with pytest.raises(ValueError, match="ltkd: ce = 'focal'; allowed: standard, balanced_softmax"):
        build_method("ltkd", {"ce": "focal"}, LT_COUNTS)


@pytest.mark.parametrize("name", DISTILLERS)
def test_ce_option_changes_only_the_supervised_term(name):
    std, logits, y = _terms(name, {}, LT_COUNTS)
    bal, _, _ = _terms(name, {"ce": "balanced_softmax"}, LT_COUNTS)
    assert std.keys() == bal.keys() and "ce" in std and len(std) == 2
    for key in std.keys() - {"ce"}:
        assert torch.equal(std[key], bal[key]), key  # the distillation term's value is unchanged
    assert float(std["ce"]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    # balanced_softmax: the balanced-softmax Student row's loss with the trial's class counts
    student_row = build_method("balanced_softmax", {}, LT_COUNTS).losses(logits, None, y, 5)["ce"]
    assert float(bal["ce"]) == pytest.approx(float(student_row), rel=1e-6)
    adjusted = logits.double().numpy() + np.log(np.array(LT_COUNTS) / sum(LT_COUNTS))
    ref = np.mean(-np.log(np_softmax(adjusted)[np.arange(len(y)), y.numpy()]))
    assert float(bal["ce"]) == pytest.approx(ref, rel=1e-5) and abs(float(bal["ce"]) - float(std["ce"])) > 0.1


@pytest.mark.parametrize("name", DISTILLERS)
def test_ce_balanced_softmax_with_uniform_counts_is_standard(name):
    std, _, _ = _terms(name, {}, [30] * 10)
    bal, _, _ = _terms(name, {"ce": "balanced_softmax"}, [30] * 10)
    for key in std:
        assert float(bal[key]) == pytest.approx(float(std[key]), rel=1e-6), key


def test_ce_weight_scales_the_balanced_supervised_term():
    one, _, _ = _terms("kd", {"ce": "balanced_softmax"}, LT_COUNTS)
    tenth, _, _ = _terms("kd", {"ce": "balanced_softmax", "ce_weight": 0.1}, LT_COUNTS)
    assert float(tenth["ce"]) == pytest.approx(0.1 * float(one["ce"]), rel=1e-6)
    assert torch.equal(tenth["kd"], one["kd"])


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("teacher"))
    config = TrialConfig(role="teacher", dataset="digits", gamma=10, model="cnn_w32", seed=0, recipe=Recipe(epochs=1), device="cpu")
    run_trial(config, checkpoint_dir=folder)
    return folder


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_end_to_end(name, teacher_checkpoint):
    config = TrialConfig(
        role="distill", dataset="digits", gamma=10, model="cnn_w8", teacher="cnn_w32", method=name, seed=0,
        recipe=Recipe(epochs=2), device="cpu",
    )
    reports = []
    result = run_trial(config, report=reports.append, teacher_checkpoint=teacher_checkpoint)
    assert len(reports) == 2 and all(math.isfinite(r.loss) for r in reports)
    assert all(math.isfinite(v) for r in reports for v in r.terms.values())
    assert math.isfinite(result.final.acc_all) and 0.0 <= result.final.acc_all <= 100.0


def test_balanced_ce_distillation_runs_end_to_end(teacher_checkpoint):
    config = TrialConfig(
        role="distill", dataset="digits", gamma=10, model="cnn_w8", teacher="cnn_w32", method="ltkd", seed=0,
        method_params={"ce": "balanced_softmax"}, recipe=Recipe(epochs=2), device="cpu",
    )
    reports = []
    result = run_trial(config, report=reports.append, teacher_checkpoint=teacher_checkpoint)
    assert len(reports) == 2 and set(reports[-1].terms) == {"ce", "ltkd"}
    assert all(math.isfinite(v) for r in reports for v in r.terms.values())
    assert 0.0 <= result.final.acc_all <= 100.0


def test_each_method_class_takes_its_declaration_from_its_registry_line():
    """Declarations live in the registry (readable without torch); the classes must agree with it."""
    for name, spec in METHODS.items():
        cls = spec.cls
        assert cls.NAME == name
        assert (cls.DISPLAY, cls.PARAMS, cls.NEEDS_TEACHER, cls.NEEDS_FEATURES, cls.FIXED) == (
            spec.display, spec.params, spec.needs_teacher, spec.needs_features, spec.fixed), name
        assert build_method(name, {}, [30] * 10).hparams == {**spec.params, **spec.fixed}
    assert METHODS["ltkd_cross"].params == {k: v for k, v in METHODS["ltkd"].params.items() if k not in ("beta", "reweight")}
    assert METHODS["ltkd_continuous"].params["tau"] == 1.0 and "reweight" not in METHODS["ltkd_continuous"].params
