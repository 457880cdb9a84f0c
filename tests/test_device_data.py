"""The device-resident data path (issue 14): the same images as the DataLoader + PIL path for the
same crop offsets and flips (exact), its draws uniform over their range, a resumed trial on it equal
to an uninterrupted one, and its place in a trial's identity. On the CPU (device="cpu"): the path is
the same code on a GPU, only the tensors live elsewhere."""
from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, Subset, TensorDataset

from fake_cifar import write_cifar10
from trainer.config import AUGMENT_STREAM, Recipe, TrialConfig
from trainer.data import build_long_tailed, make_loader, without_augmentation
from trainer.device_batches import (
    AUGMENT_SEED_OFFSET,
    Augmentation,
    DeviceBatches,
    ImageTensors,
    crop_flip,
    draw_augmentation,
    image_tensors,
    parse_transform,
)

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 24, 4


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A small CIFAR-10 in torchvision's on-disk format with random pixels (read with check_md5: false)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    train = rng.permutation(np.repeat(np.arange(CLASSES), TRAIN_PER_CLASS))
    test = rng.permutation(np.repeat(np.arange(CLASSES), TEST_PER_CLASS))
    write_cifar10(root / "cifar-10-batches-py", train.tolist(), rng.integers(0, 256, (len(train), 3072), dtype=np.uint8),
                  test.tolist(), rng.integers(0, 256, (len(test), 3072), dtype=np.uint8))
    return str(root)


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return build_long_tailed("cifar10", 4, root=cifar_root, options={"check_md5": False})


# ---------------------------------------------------------------- reading the transform


def test_the_cifar_transform_is_read_as_crop_flip_and_normalise(cifar):
    from trainer.datasets.cifar import CIFAR10_MEAN, CIFAR10_STD

    augmentation, mean, std = parse_transform(cifar.train.dataset.transform)
    assert augmentation == Augmentation((32, 32), 4, 0.5)
    assert (mean, std) == (CIFAR10_MEAN, CIFAR10_STD)
    data = image_tensors(cifar.train)
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(cifar.train), 3, 32, 32)
    assert data.targets.tolist() == [cifar.train.dataset.targets[i] for i in cifar.train.indices]
    # the test transform: no augmentation
    assert image_tensors(cifar.test).augmentation is None


def test_transforms_it_cannot_reproduce_stay_on_the_loader():
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
    assert parse_transform(T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4)] + norm)) is None  # flip first
    assert parse_transform(T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect")] + norm)) is None
    assert parse_transform(T.Compose([T.ColorJitter(0.4)] + norm)) is None
    assert parse_transform(T.Compose([T.RandomCrop(32, padding=4)])) is None  # no ToTensor/Normalize
    assert parse_transform(T.Compose([T.RandomHorizontalFlip(0.3)] + norm))[0] == Augmentation(None, 0, 0.3)


# ---------------------------------------------------------------- the same images, exactly


def _assert_same_as_the_loader(train, size, monkeypatch):
    """A DataLoader over `train` (its own __getitem__: PIL, RandomCrop, RandomHorizontalFlip,
    ToTensor, Normalize) with torchvision's draws replaced by given ones, against the device path
    with the same draws: equal float32 tensors, every crop position and both flips covered."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from trainer.device_batches import normalise

    n = len(train)
    grid = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)]
    draws = [grid[k % len(grid)] for k in range(n)]
    crops = iter([(i, j, size, size) for i, j, _ in draws])
    flips = iter([f for _, _, f in draws])
    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(lambda img, output_size: next(crops)))
    monkeypatch.setattr(T.RandomHorizontalFlip, "forward", lambda self, img: TF.hflip(img) if next(flips) else img)
    expected_x, expected_y = next(iter(DataLoader(train, batch_size=n, shuffle=False)))

    data = image_tensors(train)
    assert data.augmentation == Augmentation((size, size), 4, 0.5)
    top, left, flip = (torch.tensor(v) for v in zip(*draws))
    got = normalise(crop_flip(data.images, top, left, flip, data.augmentation), torch.tensor(data.mean), torch.tensor(data.std))
    assert got.dtype == expected_x.dtype and got.shape == expected_x.shape
    assert torch.equal(got, expected_x)
    assert torch.equal(data.targets, expected_y)


def test_same_images_as_the_dataloader_path_for_the_same_draws(cifar, monkeypatch):
    _assert_same_as_the_loader(cifar.train, 32, monkeypatch)


def test_tiny_imagenet_files_are_decoded_once_and_read_alike(tmp_path, monkeypatch):
    """An image list (Tiny ImageNet's reader): its files decoded once, as its __getitem__ decodes
    them (PIL, RGB); then the same images as the DataLoader path for the same draws."""
    from PIL import Image

    folder = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(4)
    wnids = [f"n{i:08d}" for i in range(200)]
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "train" / w / "images" / f"{w}_0.png")
    (folder / "val" / "images").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / "val_0.png")
    (folder / "val" / "val_annotations.txt").write_text(f"val_0.png\t{wnids[0]}\t0\t0\t63\t63\n")
    data = build_long_tailed("tinyimagenet", 1, root=str(tmp_path))
    _assert_same_as_the_loader(data.train, 64, monkeypatch)


def test_device_batches_serve_the_drawn_crops_in_the_shuffled_order(cifar):
    """The loader itself: its epoch's order is the DataLoader's for the same shuffle generator, its
    draws those of the augmentation generator, each image what the dataset's transform gives for them."""
    import torchvision.transforms.functional as TF

    seed, batch = 5, 16
    loader = make_loader(cifar.train, batch, True, seed, device="cpu", path="device")
    assert isinstance(loader, DeviceBatches) and len(loader) == -(-len(cifar.train) // batch)
    n = len(cifar.train)
    shuffle = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=shuffle)  # a DataLoader's draw before its permutation
    order = torch.randperm(n, generator=shuffle)
    top, left, flip = draw_augmentation(n, Augmentation((32, 32), 4, 0.5), (32, 32),
                                        torch.Generator().manual_seed(seed + AUGMENT_SEED_OFFSET))
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    base, tf = cifar.train.dataset, cifar.test.transform  # ToTensor + Normalize
    from PIL import Image

    for k in (0, 1, n // 2, n - 1):
        index = cifar.train.indices[int(order[k])]
        img = TF.crop(TF.pad(Image.fromarray(base.data[index]), 4), int(top[k]), int(left[k]), 32, 32)
        img = TF.hflip(img) if flip[k] else img
        assert torch.equal(x[k], tf(img)) and int(y[k]) == base.targets[index]


def test_without_augmentation_both_paths_give_the_same_batches(cifar, cifar_root):
    """No draws: the device path and the DataLoader give equal batches, in the same shuffled order."""
    for dataset in (cifar.test, without_augmentation(cifar.train, cifar.test)):
        device = make_loader(dataset, 32, True, 3, device="cpu", path="device")
        loader = make_loader(dataset, 32, True, 3)
        assert isinstance(loader, DataLoader)
        for (xa, ya), (xb, yb) in zip(device, loader, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    digits = build_long_tailed("digits", 10)  # an in-memory TensorDataset: the tensors as they are
    for (xa, ya), (xb, yb) in zip(make_loader(digits.train, 64, True, 1, device="cpu", path="device"),
                                  make_loader(digits.train, 64, True, 1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_device_path_refuses_a_set_it_cannot_read(cifar):
    from torchvision import transforms as T

    odd = Subset(cifar.train.dataset, [0, 1])
    plain = type(cifar.train.dataset).__new__(type(cifar.train.dataset))
    plain.__dict__.update(cifar.train.dataset.__dict__, transform=T.Compose([T.ColorJitter(0.4), T.ToTensor()]))
    with pytest.raises(ValueError, match="cannot read"):
        make_loader(Subset(plain, [0, 1]), 2, True, 0, device="cpu", path="device")
    assert isinstance(make_loader(Subset(plain, [0, 1]), 2, True, 0, device="cpu", path="auto"), DataLoader)
    assert isinstance(make_loader(odd, 2, True, 0, device="cpu", path="auto"), DeviceBatches)


# ---------------------------------------------------------------- the draws: uniform, independent


def test_crop_offsets_and_flips_are_uniform_over_their_range():
    """200,000 draws: each offset uniform over 0..2p (chi-square over the 9 values and over the 81
    (top, left) pairs), flips Bernoulli(0.5) (binomial test). Seeded: the same draws every run."""
    n = 200_000
    top, left, flip = draw_augmentation(n, Augmentation((32, 32), 4, 0.5), (32, 32), torch.Generator().manual_seed(11))
    assert int(top.min()) == 0 and int(top.max()) == 8 and int(left.min()) == 0 and int(left.max()) == 8
    for values, bins in ((top, 9), (left, 9), (top * 9 + left, 81)):
        assert stats.chisquare(np.bincount(values.numpy(), minlength=bins)).pvalue > 1e-3
    assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3
    # a crop smaller than the image: offsets over 0..(H + 2p - h)
    top, _, _ = draw_augmentation(50_000, Augmentation((20, 20), 2, 0.0), (32, 32), torch.Generator().manual_seed(2))
    assert int(top.max()) == 16 and stats.chisquare(np.bincount(top.numpy(), minlength=17)).pvalue > 1e-3


def test_served_images_show_uniform_offsets_and_flips():
    """End to end through DeviceBatches: images whose pixels encode their own row and column, so each
    served crop tells its offset and flip; over 30 epochs of 400 images they are uniform."""
    n, size = 400, 8
    rows = torch.arange(1, size + 1, dtype=torch.uint8)[:, None].expand(size, size)
    cols = torch.arange(1, size + 1, dtype=torch.uint8)[None, :].expand(size, size)
    images = torch.stack([rows, cols], 0).expand(n, 2, size, size).contiguous()
    data = ImageTensors(images, torch.zeros(n, dtype=torch.long), (0.0, 0.0), (1 / 255, 1 / 255), Augmentation((size, size), 2, 0.5))
    loader = DeviceBatches(data, 100, True, torch.Generator().manual_seed(0), "cpu", torch.Generator().manual_seed(1))
    tops, flips = [], []
    for _ in range(30):
        for x, _ in loader:
            x = x.round().long()  # the pixel values back (mean 0, std 1/255)
            centre = x[:, 0, :, size // 2]  # row codes down the middle column: 0 where padding
            first = (centre > 0).float().argmax(1)  # first output row holding an image row
            tops.append(2 + first - (centre.gather(1, first[:, None]).squeeze(1) - 1))
            middle = x[:, 1, size // 2, :]
            flips.append(middle[:, 2] > middle[:, 3])  # columns decrease: flipped
    top, flip = torch.cat(tops), torch.cat(flips)
    assert stats.chisquare(np.bincount(top.numpy(), minlength=5)).pvalue > 1e-3 and int(top.max()) == 4
    assert stats.binomtest(int(flip.sum()), len(flip), 0.5).pvalue > 1e-3


# ---------------------------------------------------------------- trials on the path


EPOCHS = 4


def _config(cifar_root, **recipe):
    return TrialConfig(role="student", dataset="cifar10", gamma=4, model="cnn_w8", seed=0, data_root=cifar_root,
                       dataset_options={"check_md5": False}, device="cpu",
                       recipe=Recipe(epochs=EPOCHS, batch_size=32, lr=0.05, lr_schedule="cosine", checkpoint_every=1, **recipe))


def test_a_resumed_trial_on_the_device_path_equals_an_uninterrupted_one(cifar_root, tmp_path):
    from trainer.loop import CHECKPOINT_FILE, RESUME_FILE, run_trial

    class Stop(Exception):
        pass

    config = _config(cifar_root)
    full_ckpt = str(tmp_path / "full")
    full_reports = []
    full = run_trial(config, report=full_reports.append, checkpoint_dir=full_ckpt)

    resume, ckpt = str(tmp_path / "resume"), str(tmp_path / "ckpt")

    def stop_after_2(ep):
        if ep.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_trial(config, report=stop_after_2, checkpoint_dir=ckpt, resume_dir=resume)
    state = torch.load(os.path.join(resume, RESUME_FILE), weights_only=True)
    assert state["epoch"] == 2 and set(state["rng"]) >= {"loader", "augment"}
    second = []
    result = run_trial(config, report=second.append, checkpoint_dir=ckpt, resume_dir=resume)
    assert [r.epoch for r in second] == [3, 4]
    assert [(r.loss, r.eval) for r in second] == [(r.loss, r.eval) for r in full_reports[2:]]
    assert result.final == full.final
    a = torch.load(os.path.join(ckpt, CHECKPOINT_FILE), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(full_ckpt, CHECKPOINT_FILE), weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_augmentation_stream_enters_the_identity_of_augmented_trials_only(cifar_root):
    from orchestrator.study import config_hash

    device = _config(cifar_root)
    loader = dataclasses.replace(device, recipe=dataclasses.replace(device.recipe, data_path="loader"))
    explicit = dataclasses.replace(device, recipe=dataclasses.replace(device.recipe, data_path="device"))
    assert device.identity()["augment_stream"] == AUGMENT_STREAM == explicit.identity()["augment_stream"]
    assert "augment_stream" not in loader.identity()  # the DataLoader path: the identity runs before it had
    assert config_hash(device) == config_hash(explicit) != config_hash(loader)
    # no augmentation (the reader's option, or an in-memory set without it): both paths read the same
    plain = dataclasses.replace(device, dataset_options={"check_md5": False, "augment": False})
    assert "augment_stream" not in plain.identity()
    digits = TrialConfig(role="student", dataset="digits", gamma=10, model="cnn_w8", seed=0)
    assert "augment_stream" not in digits.identity() and "data_path" not in digits.identity()["recipe"]
    assert "compile" not in digits.identity()["recipe"]
    # ImageNet-size folders stay on the DataLoader: same identity as before
    imagenet = TrialConfig(role="student", dataset="imagenet_lt", gamma=1, model="resnet18", seed=0)
    assert "augment_stream" not in imagenet.identity()


def test_the_two_paths_train_alike_but_draw_differently(cifar_root):
    """Same split, same shuffle order, other augmentation draws: the runs differ (which is why the
    identity tells them apart), and the loader path is still there on request."""
    from trainer.loop import run_trial

    a = run_trial(dataclasses.replace(_config(cifar_root), recipe=Recipe(epochs=1, batch_size=32)))
    b = run_trial(dataclasses.replace(_config(cifar_root), recipe=Recipe(epochs=1, batch_size=32, data_path="loader")))
    assert a.train_indices == b.train_indices and a.class_counts == b.class_counts
    assert a.final.per_class != b.final.per_class or a.group_probability != b.group_probability


def test_tensor_datasets_keep_their_tensors():
    x, y = torch.randn(10, 1, 4, 4), torch.arange(10)
    data = image_tensors(TensorDataset(x, y))
    assert data.images is x and data.augmentation is None
    assert image_tensors(TensorDataset(x, y, y)) is None


def test_a_state_saved_with_fused_sgd_resumes_with_this_devices_update(tmp_path):
    """A state written on CUDA (fused SGD) continued on the CPU keeps the CPU's per-tensor update."""
    from trainer.loop import _restore

    model = torch.nn.Linear(3, 2)
    saved_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saved_opt.param_groups[0]["fused"] = True  # as a CUDA trial writes it
    saved = {"model": model.state_dict(), "method": {}, "optimizer": saved_opt.state_dict(), "epoch": 1,
             "final": None, "best": None, "best_epoch": 0, "reports": [], "rng": None}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = make_loader(TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), 2, True, 0)
    import trainer.loop as loop

    saved["rng"] = loop._rng_states(loader)
    trial = SimpleNamespace(model=model, method=torch.nn.Module(), optimizer=optimizer, train_loader=loader)
    _restore(saved, trial, None)
    assert optimizer.param_groups[0]["fused"] is None and optimizer.param_groups[0]["lr"] == 0.1
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()


def test_which_path_a_dataset_takes():
    from trainer.datasets import data_path_of

    assert [data_path_of(d) for d in ("cifar100", "tinyimagenet", "fashion_mnist", "digits", "imagenet", "imagenet_lt")] == \
        ["device"] * 4 + ["loader"] * 2
    assert data_path_of("cifar100", "loader") == "loader" and data_path_of("digits", "device") == "device"
    with pytest.raises(ValueError, match="image folders"):
        data_path_of("imagenet", "device")
    with pytest.raises(ValueError, match="allowed"):
        data_path_of("cifar100", "gpu")
    with pytest.raises(ValueError, match="allowed"):
        make_loader(TensorDataset(torch.zeros(2, 1), torch.zeros(2)), 1, False, 0, path="gpu")


def test_a_trial_without_augmentation_is_the_same_on_both_paths(tmp_path):
    """digits (an in-memory set, no augmentation): the same trial through the device path and through
    tensor indexing (the former path) ends with bit-identical weights and results."""
    from trainer.loop import CHECKPOINT_FILE, run_trial

    out = []
    for path in ("device", "loader"):
        config = TrialConfig(role="student", dataset="digits", gamma=10, model="cnn_w8", seed=3, device="cpu",
                             recipe=Recipe(epochs=2, data_path=path))
        result = run_trial(config, checkpoint_dir=str(tmp_path / path))
        out.append((result, torch.load(str(tmp_path / path / CHECKPOINT_FILE), weights_only=True)["state_dict"]))
    (a, wa), (b, wb) = out
    assert a.final == b.final and a.group_probability == b.group_probability
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_study_asking_the_device_path_for_image_folders_is_refused(tmp_path):
    import yaml

    from orchestrator.errors import UserError
    from orchestrator.study import load_study

    study = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "studies", "smoke.yaml")))
    for dataset, recipe_key in (("imagenet", "recipe"), ("imagenet_lt", "teacher_recipe")):
        bad = {**study, "dataset": {**study["dataset"], "name": dataset, "root": str(tmp_path)}}
        bad[recipe_key] = {**(bad.get(recipe_key) or {}), "data_path": "device"}
        path = tmp_path / f"{dataset}.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(UserError, match=f"{recipe_key}.data_path = 'device': dataset '{dataset}' is read from image folders"):
            load_study(path)
    ok = {**study, "recipe": {**study["recipe"], "data_path": "loader", "compile": True}}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(ok))
    assert load_study(tmp_path / "ok.yaml").recipe.data_path == "loader"
