"""The paper's model zoo: exact parameter counts, shapes, and the forward_features contract."""
from __future__ import annotations

import pytest
import torch

from trainer.models import MODELS, build_model, count_parameters

CIFAR = ["resnet20", "resnet56", "resnet8x4", "resnet32x4", "vgg8", "vgg13", "wrn_16_2", "wrn_40_1", "wrn_40_2", "shufflenet_v1", "mobilenet_v2"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "mobilenet_v1"]

# (name, num_classes, exact parameter count); ImageNet ResNets' counts are torchvision's own.
PARAM_COUNTS = [
    ("resnet8x4", 100, 1_233_540),
    ("resnet32x4", 100, 7_433_860),
    ("vgg8", 100, 3_965_028),
    ("vgg13", 100, 9_462_180),
    ("wrn_40_1", 100, 569_780),
    ("wrn_40_2", 100, 2_255_156),
    ("wrn_16_2", 100, 703_284),
    ("shufflenet_v1", 100, 949_258),
    ("mobilenet_v2", 100, 812_836),
    ("resnet20", 100, 278_324),
    ("resnet56", 100, 861_620),
    ("mobilenet_v1", 1000, 4_231_976),
    ("resnet18", 1000, 11_689_512),
    ("resnet34", 1000, 21_797_672),
    ("resnet50", 1000, 25_557_032),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_param_table_covers_the_zoo():
    assert sorted(n for n, _, _ in PARAM_COUNTS) == sorted(CIFAR + IMAGENET)
    assert set(CIFAR + IMAGENET) <= set(MODELS)


@pytest.mark.parametrize("name,num_classes,expected", PARAM_COUNTS)
def test_exact_parameter_count(name, num_classes, expected):
    assert count_parameters(build_model(name, num_classes)) == expected


def _check_contract(model, x, num_classes):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats, logits_ff = model.forward_features(x)
    n = x.shape[0]
    assert logits.shape == (n, num_classes)
    torch.testing.assert_close(logits_ff, logits)
    channels = model.feature_channels()
    assert len(feats) == len(channels) >= 3
    for f, c in zip(feats[:-1], channels[:-1]):
        assert f.dim() == 4 and f.shape[0] == n and f.shape[1] == c
    pooled, last_map = feats[-1], feats[-2]
    assert pooled.shape == (n, channels[-1]) and last_map.shape[1] == channels[-1]
    # the pooled vector is the global average of the last map (nothing overwrote it in place)
    torch.testing.assert_close(last_map.mean(dim=(2, 3)), pooled)
    # spatial size never grows along the stages
    sizes = [f.shape[-1] for f in feats[:-1]]
    assert sizes == sorted(sizes, reverse=True)
    return feats


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_shapes_and_features(name):
    model = build_model(name, 100)
    feats = _check_contract(model, torch.randn(2, 3, 32, 32), 100)
    assert feats[-2].shape[-1] in (2, 4, 8)  # 32x32 input: final map 8x8 (ResNet/WRN), 4x4, or 2x2 (MobileNetV2)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_shapes_and_features(name):
    model = build_model(name, 1000)
    feats = _check_contract(model, torch.randn(1, 3, 224, 224), 1000)
    assert feats[0].shape[-1] == 112 and feats[-2].shape[-1] == 7


@pytest.mark.parametrize("name", ["resnet8x4", "mobilenet_v2", "resnet18"])
def test_forward_does_not_go_through_forward_features(name):
    model = build_model(name, 10).eval()

    def boom(x):
        raise AssertionError("forward must not call forward_features")

    model.forward_features = boom
    size = 64 if name == "resnet18" else 32
    assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize("name,size", [("resnet8x4", 32), ("wrn_16_2", 32), ("resnet18", 64)])
def test_in_channels_one(name, size):
    model = build_model(name, 10, in_channels=1)
    feats = _check_contract(model, torch.randn(2, 1, size, size), 10)
    assert len(feats) == len(model.feature_channels())
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, size, size))


def test_vgg_pools_once_more_at_64px():
    feats = _check_contract(build_model("vgg8", 7), torch.randn(1, 3, 64, 64), 7)
    # 64 -> 32 -> 16 -> 8 after blocks 0-2; block3 at 8x8 is pooled again, so block4 is 4x4 as at 32px
    assert feats[3].shape[-2:] == (8, 8) and feats[4].shape[-2:] == (4, 4)


def test_train_mode_backward():
    model = build_model("shufflenet_v1", 5).train()
    feats, logits = model.forward_features(torch.randn(2, 3, 32, 32))
    (logits.sum() + feats[-2].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_names_known_ones():
    with pytest.raises(KeyError) as err:
        build_model("resnet9000", 10)
    msg = str(err.value)
    assert "resnet9000" in msg
    for name in ["resnet32x4", "mobilenet_v2", "resnet50", "cnn_w32"]:
        assert name in msg


def test_every_registry_entry_builds_its_model():
    """The registry names each factory by "module:attribute" (imported on first use): none is a typo."""
    for name in MODELS:
        model = build_model(name, 10, in_channels=1 if name.startswith("cnn_") else 3)
        assert isinstance(model, torch.nn.Module) and count_parameters(model) > 0, name
    assert [count_parameters(build_model(f"cnn_w{w}", 10)) for w in (4, 8, 16, 32)] == sorted(
        count_parameters(build_model(f"cnn_w{w}", 10)) for w in (4, 8, 16, 32))


# ---------------------------------------------------------------- pre-activation features (issue 13)
# Per model: the entries of forward_features whose pre-activation differs from the default map, and
# those where relu(pre-activation) gives the default map back (WRN: its stages 1-2 are raw residual
# sums, their pre-activation is the next BN's output, as in the standard CIFAR zoo's `preact` features).
PREACT = {
    "resnet8x4": ([1, 2, 3], [1, 2, 3]), "resnet32x4": ([1, 2, 3], [1, 2, 3]), "resnet20": ([1, 2, 3], [1, 2, 3]),
    "vgg8": ([1, 2, 3, 4], [1, 2, 3, 4]), "vgg13": ([1, 2, 3, 4], [1, 2, 3, 4]), "shufflenet_v1": ([1, 2, 3], [1, 2, 3]),
    "wrn_40_2": ([1, 2, 3], [3]), "wrn_16_2": ([1, 2, 3], [3]),
    "mobilenet_v2": ([5], [5]),  # linear bottleneck stages: only the head conv map has a ReLU
    "resnet18": ([1, 2, 3, 4], [1, 2, 3, 4]), "resnet50": ([1, 2, 3, 4], [1, 2, 3, 4]),
    "mobilenet_v1": ([1, 2, 3, 4], [1, 2, 3, 4]), "cnn_w8": ([0, 1], [0, 1]),
}


@pytest.mark.parametrize("name", sorted(PREACT))
@pytest.mark.parametrize("training", [False, True])
def test_preact_features(name, training):
    size = 64 if name in IMAGENET else 8 if name.startswith("cnn") else 32
    model = build_model(name, 10).train(training)
    x = torch.randn(4, 3, size, size)
    feats, logits = model.forward_features(x)
    pre, pre_logits = model.forward_features(x, preact=True)
    torch.testing.assert_close(pre_logits, logits, rtol=0, atol=0)  # the same network, other taps
    differs, relu_gives_post = PREACT[name]
    assert [i for i, (a, b) in enumerate(zip(feats, pre)) if not torch.equal(a, b)] == differs
    assert [tuple(a.shape) for a in feats] == [tuple(b.shape) for b in pre]
    for i in differs:
        assert (pre[i] < 0).any()  # before a ReLU
        assert torch.equal(torch.relu(pre[i]), feats[i]) == (i in relu_gives_post)


@pytest.mark.parametrize("name", ["wrn_40_2", "resnet8x4", "vgg8", "mobilenet_v1"])
def test_preact_forward_updates_bn_statistics_once(name):
    size = 64 if name in IMAGENET else 32
    x = torch.randn(4, 3, size, size)
    a, b = build_model(name, 10), build_model(name, 10)
    b.load_state_dict(a.state_dict())
    a.forward_features(x)
    b.forward_features(x, preact=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=ka)


def test_wrn_preact_is_the_next_bn_output():
    model = build_model("wrn_40_1", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, _ = model.forward_features(x)
    pre, _ = model.forward_features(x, preact=True)
    torch.testing.assert_close(pre[1], model.block2[0].bn1(feats[1]))
    torch.testing.assert_close(pre[2], model.block3[0].bn1(feats[2]))
    torch.testing.assert_close(torch.relu(pre[3]), feats[3])


def test_mobilenet_v2_stage_indices_leave_out_the_head_map():
    model = build_model("mobilenet_v2", 100)
    feats, _ = model.forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(feats[i].shape[1:]) for i in model.stage_indices()] == [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]


@pytest.mark.parametrize("name", ["vgg8", "vgg13", "mobilenet_v2"])
def test_vgg_and_mobilenet_v2_use_the_shared_initialisation(name):
    """He-normal (fan_out) convolutions, zero conv biases (VGG), BN 1/0, classifier N(0, 0.01^2) with zero bias:
    drawn by `init_conv_bn`, in the same order as the helper draws them for a fresh copy."""
    import importlib

    from trainer.models import common

    module = importlib.import_module({"mobilenet_v2": "trainer.models.mobilenet_v2"}.get(name, "trainer.models.vgg_cifar"))
    calls = []

    def spy(model, **kwargs):
        calls.append((type(model).__name__, kwargs))
        common.init_conv_bn(model, **kwargs)

    original = module.init_conv_bn
    module.init_conv_bn = spy
    try:
        model = build_model(name, 100)
    finally:
        module.init_conv_bn = original
    assert len(calls) == 1 and calls[0][1]["linear_std"] == 0.01 and calls[0][1]["zero_linear_bias"]
    fc = model.classifier
    assert float(fc.bias.detach().abs().sum()) == 0 and abs(float(fc.weight.detach().std()) - 0.01) < 0.001
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None or float(m.bias.detach().abs().sum()) == 0 for m in convs)
