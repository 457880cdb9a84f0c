"""Every baseline at one of the paper's teacher-student pairs (issue 13):

- the hyperparameters the recipe preset resolves for that pair (through the study expansion, the
  path a sweep takes) against the values of the authors' released scripts and configs;
- one batch's loss against a float64 formula written from the method's paper, with those values.

Released values, as read from the public repositories: KD and DKD from mdistiller's per-pair
configs (CIFAR-100, ImageNet ResNet34 -> ResNet18 and ResNet50 -> MobileNetV1); ReviewKD from its authors'
CIFAR-100 training script (`--kd-loss-weight` per pair) and ImageNet code (connector width 256 for
MobileNet) and mdistiller's ImageNet configs (weight 1.0 / 8.0, 1-epoch warm-up, student
pre-activation features); DIST from its paper (CIFAR beta = gamma = 2, T = 4) and released ImageNet
setup (beta = gamma = 1, T = 1, loss weight 2); CAT-KD from its authors' configs; BKD from its
authors' CIFAR code (T = 2, alpha = 1, beta = 0.9999).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.study import expand, parse_study
from trainer.loop import _forward
from trainer.methods import build_method
from trainer.methods.base import features_of
from trainer.models import build_model

C = 100
COUNTS = [int(500 * (1 / 100) ** (i / (C - 1))) for i in range(C)]  # CIFAR-100-LT, gamma = 100


def resolved(preset: str, teacher: str, student: str, method: str) -> dict:
    """The hyperparameters a study with this preset, pair and `method: {}` gives the trial."""
    study = {"name": "pairs", "dataset": {"name": "synthetic", "gammas": [10]}, "pairs": [{"teacher": teacher, "student": student}],
             "seeds": [0], "methods": {method: {}}, "recipe": {"preset": preset}}
    (trial,) = [t for t in expand(parse_study(study)) if t.role == "distill"]
    return dict(trial.config.method_params)


# (preset, teacher, student, method) -> the released values (a subset of the resolved hyperparameters)
RELEASED = {
    ("cifar", "resnet32x4", "resnet8x4", "kd"): {"ce_weight": 0.1, "alpha": 0.9, "temperature": 4.0},
    ("imagenet", "resnet34", "resnet18", "kd"): {"ce_weight": 0.5, "alpha": 0.5, "temperature": 1.0},
    ("cifar", "resnet32x4", "resnet8x4", "dkd"): {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20},
    ("cifar", "vgg13", "vgg8", "dkd"): {"alpha": 1.0, "beta": 6.0, "temperature": 4.0, "warmup": 20},
    ("cifar", "resnet56", "resnet20", "dkd"): {"alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup": 20},
    ("imagenet", "resnet34", "resnet18", "dkd"): {"alpha": 1.0, "beta": 0.5, "temperature": 1.0, "warmup": 1},
    ("imagenet", "resnet50", "mobilenet_v1", "dkd"): {"alpha": 1.0, "beta": 2.0, "temperature": 1.0, "warmup": 1},
    ("cifar", "resnet32x4", "resnet8x4", "dist"): {"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0},
    # loss weight 2 x (beta = 1, gamma = 1): the weight folded into beta and gamma
    ("imagenet", "resnet34", "resnet18", "dist"): {"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 1.0},
    ("cifar", "resnet32x4", "resnet8x4", "reviewkd"): {"ce_weight": 1.0, "weight": 5.0, "warmup": 20, "mid_channels": 0,
                                                       "student_preact": False},
    ("cifar", "resnet32x4", "shufflenet_v1", "reviewkd"): {"weight": 5.0, "warmup": 20},
    ("cifar", "wrn_40_2", "wrn_40_1", "reviewkd"): {"weight": 5.0, "warmup": 20},
    ("cifar", "wrn_40_2", "shufflenet_v1", "reviewkd"): {"weight": 5.0, "warmup": 20},
    ("cifar", "vgg13", "vgg8", "reviewkd"): {"weight": 1.0, "warmup": 20},
    ("imagenet", "resnet34", "resnet18", "reviewkd"): {"weight": 1.0, "warmup": 1, "mid_channels": 0, "student_preact": True},
    ("imagenet", "resnet50", "mobilenet_v1", "reviewkd"): {"weight": 8.0, "warmup": 1, "mid_channels": 256, "student_preact": True},
    ("cifar", "resnet32x4", "resnet8x4", "catkd"): {"ce_weight": 1.0, "cat_weight": 15.0, "cam_resolution": 2, "normalize": False},
    ("cifar", "vgg13", "vgg8", "catkd"): {"cat_weight": 4.5, "cam_resolution": 2, "normalize": False},
    ("cifar", "vgg13", "mobilenet_v2", "catkd"): {"cat_weight": 15.0, "cam_resolution": 2, "normalize": True},
    ("cifar", "wrn_40_2", "shufflenet_v1", "catkd"): {"cat_weight": 80.0, "cam_resolution": 4, "normalize": True},
    ("cifar", "resnet56", "resnet20", "catkd"): {"cat_weight": 0.7, "cam_resolution": 2, "normalize": False},
    ("cifar", "wrn_40_2", "wrn_16_2", "catkd"): {"cat_weight": 12.0, "cam_resolution": 2, "normalize": False},
    ("imagenet", "resnet34", "resnet18", "catkd"): {"cat_weight": 0.5, "cam_resolution": 4, "normalize": False},
    ("cifar", "resnet32x4", "resnet8x4", "bkd"): {"ce_weight": 1.0, "alpha": 1.0, "temperature": 2.0, "beta_cb": 0.9999,
                                                  "reweight_from": 0},
}


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_preset_resolves_the_released_hyperparameters(key):
    preset, teacher, student, method = key
    params = resolved(preset, teacher, student, method)
    assert {k: params[k] for k in RELEASED[key]} == RELEASED[key]


# ---------------------------------------------------------------- float64 formulas from the papers
def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce(z, y):
    return float(np.mean(-np.log(np_softmax(z)[np.arange(len(y)), y])))


def np_kl(p, q):
    return (p * np.log(p / q)).sum(axis=1)


def np_pearson(a, b, eps=1e-8):
    """DIST's released `pearson_correlation`: cosine similarity of the centred rows over |a||b| + eps."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def _batch(seed=0, b=16):
    rng = np.random.default_rng(seed)
    zs, zt = rng.normal(0, 2, (b, C)), rng.normal(0, 3, (b, C))
    y = rng.integers(0, C, b)
    return zs, zt, y


def _method_loss(name, params, zs, zt, y, epoch):
    method = build_method(name, params, COUNTS)
    terms = method.losses(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), epoch)
    return {k: float(v) for k, v in terms.items()}


def test_kd_at_resnet32x4_resnet8x4():
    """Hinton et al.: ce_weight * CE + alpha * T^2 * KL(p^T || p^S), p = softmax(z / T)."""
    params = resolved("cifar", "resnet32x4", "resnet8x4", "kd")
    zs, zt, y = _batch(1)
    T = 4.0
    want = 0.1 * np_ce(zs, y) + 0.9 * T**2 * np_kl(np_softmax(zt / T), np_softmax(zs / T)).mean()
    assert sum(_method_loss("kd", params, zs, zt, y, 0).values()) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("epoch", [0, 30])
def test_dkd_at_vgg13_vgg8(epoch):
    """Zhao et al.: CE + min((epoch + 1) / 20, 1) * T^2 * (alpha * KL(b^T || b^S) + beta * KL(p^T_\\t || p^S_\\t))."""
    params = resolved("cifar", "vgg13", "vgg8", "dkd")
    zs, zt, y = _batch(2)
    T, alpha, beta = 4.0, 1.0, 6.0
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    tckd, nckd = [], []
    for i, t in enumerate(y):
        bs, bt = np.array([ps[i, t], 1 - ps[i, t]]), np.array([pt[i, t], 1 - pt[i, t]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        keep = np.arange(C) != t
        qs, qt = ps[i, keep] / ps[i, keep].sum(), pt[i, keep] / pt[i, keep].sum()
        nckd.append(np.sum(qt * np.log(qt / qs)))
    ramp = min((epoch + 1) / 20, 1.0)
    want = np_ce(zs, y) + ramp * T**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))
    assert sum(_method_loss("dkd", params, zs, zt, y, epoch).values()) == pytest.approx(want, rel=1e-10)


def test_dist_at_resnet34_resnet18_imagenet():
    """Huang et al.: CE + w * T^2 * (beta * (1 - mean_i rho(Y^S_i, Y^T_i)) + gamma * (1 - mean_c rho(Y^S_c, Y^T_c))),
    released ImageNet setting w = 2, beta = gamma = 1, T = 1."""
    params = resolved("imagenet", "resnet34", "resnet18", "dist")
    zs, zt, y = _batch(3)
    ys, yt = np_softmax(zs), np_softmax(zt)
    inter, intra = 1 - np_pearson(ys, yt).mean(), 1 - np_pearson(ys.T, yt.T).mean()
    want = np_ce(zs, y) + 2.0 * 1.0**2 * (1.0 * inter + 1.0 * intra)
    got = _method_loss("dist", params, zs, zt, y, 0)
    assert sum(got.values()) == pytest.approx(want, rel=1e-10)
    assert got["dist"] == pytest.approx(2.0 * (inter + intra), rel=1e-10)  # twice the unweighted DIST term


def test_bkd_at_resnet32x4_resnet8x4():
    """Zhang et al.: CE + alpha * T^2 * KL(q || p^S), q_i proportional to w_i p^T_i, w = effective-number weights."""
    params = resolved("cifar", "resnet32x4", "resnet8x4", "bkd")
    zs, zt, y = _batch(4)
    T, b = 2.0, 0.9999
    n = np.array(COUNTS, dtype=np.float64)
    w = (1 - b) / (1 - b**n)
    w = w / w.sum() * C
    q = w * np_softmax(zt / T)
    q = q / q.sum(1, keepdims=True)
    want = np_ce(zs, y) + T**2 * np_kl(q, np_softmax(zs / T)).mean()
    # the class weights are float32 buffers (as the loss uses them): float32-level agreement
    assert sum(_method_loss("bkd", params, zs, zt, y, 0).values()) == pytest.approx(want, rel=1e-6)


def test_balanced_softmax():
    """Ren et al.: CE(z + log pi, y), pi the training class prior."""
    zs, _, y = _batch(5)
    prior = np.array(COUNTS, dtype=np.float64) / sum(COUNTS)
    want = np_ce(zs + np.log(prior), y)
    method = build_method("balanced_softmax", {}, COUNTS)
    got = float(method.losses(torch.tensor(zs), None, torch.tensor(y), 0)["ce"])
    assert got == pytest.approx(want, rel=1e-6)  # the log prior is a float32 buffer


# ---------------------------------------------------------------- feature baselines at CIFAR pairs
def _models(teacher, student, seed=0, size=32):
    torch.manual_seed(seed)
    s, t = build_model(student, C).double(), build_model(teacher, C).double().eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return s, t, torch.randn(4, 3, size, size, dtype=torch.float64), torch.randint(0, C, (4,))


def _np_bn_train(x, bn):
    """BatchNorm2d with batch statistics (training mode), float64."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    w, b = bn.weight.detach().numpy()[None, :, None, None], bn.bias.detach().numpy()[None, :, None, None]
    return (x - mean) / np.sqrt(var + bn.eps) * w + b


def _np_conv(x, conv):
    return F.conv2d(torch.from_numpy(x), conv.weight.detach(), conv.bias if conv.bias is None else conv.bias.detach(),
                    padding=conv.padding).numpy()


def _np_pool(x, size):
    return F.adaptive_avg_pool2d(torch.from_numpy(x), size).numpy()


def _np_nearest(x, size):
    return F.interpolate(torch.from_numpy(x), size=size, mode="nearest").numpy()


def _np_hcl(s, t):
    """Chen et al.'s HCL: MSE + sum over pyramid levels l in (4, 2, 1) smaller than H of 2^-k MSE(pool_l), normalised."""
    loss, weight, total = np.mean((s - t) ** 2), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= s.shape[2]:
            continue
        weight /= 2
        loss += weight * np.mean((_np_pool(s, level) - _np_pool(t, level)) ** 2)
        total += weight
    return loss / total


def test_reviewkd_at_resnet32x4_resnet8x4():
    """Chen et al.: CE + ramp * weight * sum_l HCL(ABF_l, F^T_l), the student's stage maps and pooled vector reviewed
    deep to shallow by attention-based fusion, the teacher's pre-activation stage maps and pooled vector as targets."""
    params = resolved("cifar", "resnet32x4", "resnet8x4", "reviewkd")
    student, teacher, x, y = _models("resnet32x4", "resnet8x4")
    method = build_method("reviewkd", params, COUNTS)
    method.setup(student, teacher, x[:2])
    method.double()  # the connectors are built in setup()
    assert method.mid_channels == 256 and method.teacher_preact and not method.student_preact  # min(512, 256)
    s_feats, s_logits = student.forward_features(x)
    with torch.no_grad():
        t_feats, t_logits = teacher.forward_features(x, preact=True)
    got = method.losses(s_logits, t_logits, y, 9, s_feats, t_feats)

    s_levels = [f.detach().numpy() for f in s_feats[1:4]] + [s_feats[4].detach().numpy()[:, :, None, None]]
    t_levels = [f.numpy() for f in t_feats[1:4]] + [t_feats[4].numpy()[:, :, None, None]]
    assert all((t < 0).any() for t in t_levels[:3])  # pre-ReLU targets
    total, deeper = 0.0, None
    for level in reversed(range(4)):
        abf = method.fusions[level]
        h = _np_bn_train(_np_conv(s_levels[level], abf.reduce[0]), abf.reduce[1])
        if deeper is not None:
            up = _np_nearest(deeper, h.shape[-2:])
            att = torch.sigmoid(torch.from_numpy(_np_conv(np.concatenate([h, up], 1), abf.attention[0]))).numpy()
            h = h * att[:, 0:1] + up * att[:, 1:2]
        deeper = h
        out = _np_bn_train(_np_conv(h, abf.expand[0]), abf.expand[1])
        total += _np_hcl(out, t_levels[level])
    assert float(got["reviewkd"].detach()) == pytest.approx(10 / 20 * 5.0 * total, rel=1e-9)
    assert float(got["ce"].detach()) == pytest.approx(np_ce(s_logits.detach().numpy(), y.numpy()), rel=1e-10)


def test_reviewkd_pairs_vgg13_mobilenet_v2_levels_as_the_authors():
    student, teacher, x, _ = _models("vgg13", "mobilenet_v2")
    method = build_method("reviewkd", resolved("cifar", "vgg13", "mobilenet_v2", "reviewkd"), COUNTS).double()
    method.setup(student, teacher, x[:2])
    # MobileNetV2's 1280-channel head map is not a level; its four stage maps and pooled vector pair with
    # VGG13's four block maps (after the first) and pooled vector.
    assert method.level_shapes == [
        ((12, 16, 16), (128, 16, 16)), ((16, 8, 8), (256, 8, 8)), ((48, 4, 4), (512, 4, 4)),
        ((160, 2, 2), (512, 4, 4)), ((1280, 1, 1), (512, 1, 1)),
    ]
    assert method.mid_channels == 512  # min(512, 1280)


@pytest.mark.parametrize("teacher, student, mid", [("resnet32x4", "shufflenet_v1", 512), ("wrn_40_2", "wrn_40_1", 64),
                                                   ("vgg13", "vgg8", 512)])
def test_reviewkd_connector_width(teacher, student, mid):
    s, t, x, _ = _models(teacher, student)
    method = build_method("reviewkd", resolved("cifar", teacher, student, "reviewkd"), COUNTS).double()
    method.setup(s, t, x[:2])
    assert method.mid_channels == mid and all(f.reduce[0].out_channels == mid for f in method.fusions)


def test_reviewkd_imagenet_resnet50_mobilenet_v1_uses_preact_students_and_256_wide_connectors():
    params = resolved("imagenet", "resnet50", "mobilenet_v1", "reviewkd")
    torch.manual_seed(0)
    student, teacher = build_model("mobilenet_v1", 10), build_model("resnet50", 10).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))
    method = build_method("reviewkd", params, [5] * 10)
    method.setup(student, teacher, x)
    assert method.student_preact and method.teacher_preact and method.mid_channels == 256
    assert [s[0] for s, _ in method.level_shapes] == [128, 256, 512, 1024, 1024]
    assert [t[0] for _, t in method.level_shapes] == [256, 512, 1024, 2048, 2048]
    # The training loop hands the method the pre-activation maps of both models.
    got = _forward(student, teacher, method, x, y, 3, autocast=False)
    s_feats, s_logits = features_of(student, x, True)
    with torch.no_grad():
        t_feats, t_logits = features_of(teacher, x, True)
    want = method.losses(s_logits, t_logits, y, 3, s_feats, t_feats)
    assert float(got["reviewkd"].detach()) == pytest.approx(float(want["reviewkd"].detach()), rel=1e-5)


def test_catkd_at_resnet32x4_resnet8x4():
    """Guo et al.: CE + beta * MSE(pool_r(CAM^S), pool_r(CAM^T)), CAM = the bias-free 1x1 classifier applied at every
    position of the last feature map; the student's head as the authors build it (bias-free, He-normal fan_out)."""
    params = resolved("cifar", "resnet32x4", "resnet8x4", "catkd")
    student, teacher, x, y = _models("resnet32x4", "resnet8x4", seed=3)
    method = build_method("catkd", params, COUNTS)
    method.setup(student, teacher, x[:2])
    fc = student.fc
    assert float(fc.bias.abs().sum()) == 0 and not fc.bias.requires_grad
    assert abs(float(fc.weight.detach().std()) - (2 / C) ** 0.5) < 0.1 * (2 / C) ** 0.5  # He-normal, fan_out = classes
    s_feats, s_logits = student.forward_features(x)
    with torch.no_grad():
        t_feats, t_logits = teacher.forward_features(x)
    got = method.losses(s_logits, t_logits, y, 0, s_feats, t_feats)
    s_map, t_map = s_feats[3].detach().numpy(), t_feats[3].numpy()
    cam_s = np.einsum("bdhw,kd->bkhw", s_map, fc.weight.detach().numpy())
    cam_t = np.einsum("bdhw,kd->bkhw", t_map, teacher.fc.weight.numpy())
    # The student's logits are the spatial mean of its CAMs (a bias-free 1x1 conv head).
    np.testing.assert_allclose(cam_s.mean(axis=(2, 3)), s_logits.detach().numpy(), rtol=1e-9, atol=1e-12)
    want_cat = 15.0 * np.mean((_np_pool(cam_s, 2) - _np_pool(cam_t, 2)) ** 2)
    assert float(got["cat"]) == pytest.approx(want_cat, rel=1e-6)  # the method forms CAMs in float32
    assert float(got["ce"].detach()) == pytest.approx(np_ce(s_logits.detach().numpy(), y.numpy()), rel=1e-10)
    # Training leaves the head bias-free.
    opt = torch.optim.SGD([p for p in student.parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4)
    sum(got.values()).backward()
    opt.step()
    assert float(fc.bias.abs().sum()) == 0


def test_recipe_tables_name_only_models_of_the_zoo():
    from trainer import recipes
    from trainer.models import MODELS

    named = set(recipes.LOW_LR_STUDENTS) | {m for pair in recipes.CATKD_CIFAR for m in pair} | \
        {m for pair in [*recipes.DKD_BETA_CIFAR, *recipes.DKD_BETA_IMAGENET] for m in pair} | \
        {m for key in recipes.REVIEWKD for m in key[1:]}
    assert named - set(MODELS) == set()


def test_dist_normalises_as_the_release_where_softmax_columns_are_nearly_constant():
    """Logits that barely vary over the batch make each class's softmax column nearly constant: the
    intra-class correlations are then where |a||b| + 1e-8 and a clamp inside the square root differ."""
    rng = np.random.default_rng(4)
    base = rng.normal(0, 1, (1, C))
    zs, zt = base + rng.normal(0, 1e-2, (8, C)), base + rng.normal(0, 1e-2, (8, C))
    y = rng.integers(0, C, 8)
    params = resolved("cifar", "resnet32x4", "resnet8x4", "dist")
    ys, yt = np_softmax(zs / 4), np_softmax(zt / 4)
    inter, intra = 1 - np_pearson(ys, yt).mean(), 1 - np_pearson(ys.T, yt.T).mean()
    want = 4.0**2 * (2.0 * inter + 2.0 * intra)
    got = _method_loss("dist", params, zs, zt, y, 0)["dist"]
    assert got == pytest.approx(want, rel=1e-9)
    # The former normalisation, sqrt(max(|a|^2 |b|^2, eps^2)), gives a visibly other value on this batch.
    a, b = ys.T - ys.T.mean(1, keepdims=True), yt.T - yt.T.mean(1, keepdims=True)
    clamped = (a * b).sum(1) / np.sqrt(np.maximum((a * a).sum(1) * (b * b).sum(1), 1e-16))
    assert abs(4.0**2 * 2.0 * ((1 - clamped.mean()) - intra)) > 1e-2


def test_dist_gradient_is_finite_on_a_constant_batch():
    z = torch.zeros(4, C, dtype=torch.float64, requires_grad=True)
    loss = build_method("dist", {}, COUNTS).losses(z, torch.zeros(4, C, dtype=torch.float64), torch.zeros(4, dtype=torch.long), 0)
    sum(loss.values()).backward()
    assert torch.isfinite(z.grad).all()


def test_reviewkd_wrn_40_1_student_deepest_level_is_the_raw_block3_output():
    """The authors and mdistiller take WRN's raw block-3 output as the deepest stage feature (the BN + ReLU after it
    are outside the stage); the training loop hands ReviewKD that map, while CAT-KD keeps the post-BN-ReLU map."""
    student, teacher, x, y = _models("wrn_40_2", "wrn_40_1")
    params = resolved("cifar", "wrn_40_2", "wrn_40_1", "reviewkd")
    method = build_method("reviewkd", params, COUNTS)
    method.setup(student, teacher, x[:2])
    method.double()  # the connectors are built in setup()
    student.eval()  # batch statistics off, so the maps below are the ones the loop's forward computes
    f2 = student.block2(student.block1(student.conv1(x)))
    raw3 = student.block3(f2).detach()
    feats, _ = features_of(student, x, False, method.student_raw_last_stage)
    assert torch.equal(feats[3].detach(), raw3) and (raw3 < 0).any()  # raw: not through the final ReLU
    plain, _ = student.forward_features(x)
    assert torch.equal(plain[3].detach(), torch.relu(student.bn(raw3)).detach())  # CAT-KD's map, unchanged
    got = _forward(student, teacher, method, x, y, 30, autocast=False)
    with torch.no_grad():
        t_feats, t_logits = features_of(teacher, x, True)
    s_feats, s_logits = student.forward_features(x, raw_last_stage=True)
    want = method.losses(s_logits, t_logits, y, 30, s_feats, t_feats)
    assert float(got["reviewkd"].detach()) == pytest.approx(float(want["reviewkd"].detach()), rel=1e-12)
    other = method.losses(s_logits, t_logits, y, 30, plain, t_feats)
    assert abs(float(other["reviewkd"]) - float(want["reviewkd"])) > 1e-6


def test_method_revisions_move_only_the_trials_whose_computation_changed():
    """DIST's new normalisation changes every DIST trial; ReviewKD's raw block-3 level changes only WRN students
    without student_preact. Every other trial keeps its identity (and its tracked runs)."""
    def ident(teacher, student, method, preset="cifar", **params):
        study = {"name": "pairs", "dataset": {"name": "synthetic", "gammas": [10]}, "pairs": [{"teacher": teacher, "student": student}],
                 "seeds": [0], "methods": {method: params}, "recipe": {"preset": preset}}
        (trial,) = [t for t in expand(parse_study(study)) if t.role == "distill"]
        return trial.config.identity().get("method_revision")

    assert ident("wrn_40_2", "wrn_40_1", "reviewkd") == 2
    assert ident("wrn_40_2", "wrn_16_2", "reviewkd") == 2
    assert ident("wrn_40_2", "wrn_40_1", "reviewkd", student_preact=True) == 1
    assert ident("resnet32x4", "resnet8x4", "reviewkd") == 1
    assert ident("wrn_40_2", "shufflenet_v1", "reviewkd") == 1
    assert ident("resnet32x4", "resnet8x4", "dist") == 1
    assert ident("wrn_40_2", "wrn_40_1", "catkd") == 1
    assert ident("resnet32x4", "resnet8x4", "kd") is None
