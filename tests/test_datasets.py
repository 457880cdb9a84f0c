"""On-disk dataset readers, checked against tiny fake copies of each format written here.

Every fake image carries its label in its pixels (a constant grey or byte value), so a test can
tell that the right file was read under the right label, not just that counts add up.

CIFAR: torchvision 0.29 refuses any CIFAR file whose md5 differs from the real file's (its
module-level `check_integrity`, called from `CIFAR10._check_integrity` and `_load_meta`). The
fake copies are read by monkeypatching `torchvision.datasets.cifar.check_integrity` to an
existence check for the test's duration; the reader itself is unchanged, and one test shows
that without the patch the fake copy is refused with a clear RuntimeError.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from fake_cifar import write_cifar10, write_pickle
from trainer.data import build_long_tailed, long_tailed_counts
from trainer.datasets import DATASET_INFO, DATASETS, load_dataset

NEW = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet_lt": 1000, "imagenet": 1000, "fashion_mnist": 10}


def _bincount(targets, n):
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=n).tolist()


def _subset_targets(data, full_targets):
    return [full_targets[i] for i in data.train_indices]


def _grey(path, value, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def _pixel(img: torch.Tensor, mean, std) -> float:
    """Centre pixel of a normalised [C,H,W] image, back in 0..255 (first channel)."""
    c = img[0, img.shape[1] // 2, img.shape[2] // 2].item()
    return (c * std[0] + mean[0]) * 255.0


# ---------------------------------------------------------------- registry


def test_registry_lists_every_reader_with_its_class_count():
    for name, classes in NEW.items():
        assert name in DATASETS and name in DATASET_INFO
        assert DATASET_INFO[name].num_classes == classes
        assert DATASET_INFO[name].in_channels == (1 if name == "fashion_mnist" else 3)


def test_importing_the_registry_reads_no_file_and_skips_torchvision():
    code = "import sys, trainer.datasets; print('torchvision' in sys.modules, 'PIL' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["False", "False", "False"]


def test_every_registry_entry_resolves_to_its_reader():
    """Readers are named by "module:attribute" and imported on first use: none is a typo."""
    for name in DATASETS:
        assert callable(DATASETS[name]), name
        assert DATASETS.path(name).startswith("trainer.datasets.")
    from trainer.datasets import num_classes_of
    from trainer.datasets.synthetic import DEFAULT_NUM_CLASSES

    assert num_classes_of("synthetic") == DEFAULT_NUM_CLASSES == 100


# ---------------------------------------------------------------- CIFAR

CIFAR100_TRAIN_PER_CLASS, CIFAR100_TEST_PER_CLASS = 5, 2


def _cifar_images(labels):
    """uint8 [N, 3072] rows (torchvision's CHW-flattened layout), every pixel = 2 * label."""
    labels = np.asarray(labels)
    return np.repeat((2 * labels).astype(np.uint8)[:, None], 3072, axis=1)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """Fake cifar-100-python/{train,test,meta} and cifar-10-batches-py/* in torchvision's format."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(1)
    base = root / "cifar-100-python"
    for part, per_class in (("train", CIFAR100_TRAIN_PER_CLASS), ("test", CIFAR100_TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class)).tolist()
        write_pickle(base / part, {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{part} batch",
            "fine_labels": labels,
            "coarse_labels": [lab // 5 for lab in labels],
            "data": _cifar_images(labels),
        })
    write_pickle(base / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    # CIFAR-10: 10 classes x 10 training images (five batches of 20), 3 test images per class
    train = np.concatenate([rng.permutation(np.repeat(np.arange(10), 2)) for _ in range(5)])
    test = rng.permutation(np.repeat(np.arange(10), 3))
    write_cifar10(root / "cifar-10-batches-py", train.tolist(), _cifar_images(train), test.tolist(), _cifar_images(test))
    return str(root)


@pytest.fixture
def skip_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar100_counts_shapes_and_labels(cifar_root, skip_md5):
    from trainer.datasets.cifar import CIFAR100_MEAN, CIFAR100_STD

    split = load_dataset("cifar100", root=cifar_root)
    assert (split.num_classes, split.in_channels, split.presplit) == (100, 3, False)
    assert len(split.train) == 500 and len(split.test) == 200
    assert _bincount(split.train_targets, 100) == [CIFAR100_TRAIN_PER_CLASS] * 100
    assert split.train_targets == list(split.train.targets)
    for ds in (split.train, split.test):
        for i in (0, 7, len(ds) - 1):
            img, label = ds[i]
            assert img.shape == (3, 32, 32) and img.dtype == torch.float32
            assert label == ds.targets[i]
            # the centre pixel survives RandomCrop(32, padding=4) and the flip
            assert _pixel(img, CIFAR100_MEAN, CIFAR100_STD) == pytest.approx(2 * label, abs=0.01)
    test_img, test_label = split.test[3]  # no augmentation: the whole image is the label's grey
    assert torch.allclose(test_img[0], torch.full((32, 32), (2 * test_label / 255 - CIFAR100_MEAN[0]) / CIFAR100_STD[0]),
                          atol=1e-5)


def test_cifar10_counts_shapes_and_labels(cifar_root, skip_md5):
    from trainer.datasets.cifar import CIFAR10_MEAN, CIFAR10_STD

    split = load_dataset("cifar10", root=cifar_root, augment=False)
    assert (split.num_classes, len(split.train), len(split.test)) == (10, 100, 30)
    assert _bincount(split.train_targets, 10) == [10] * 10
    img, label = split.train[42]
    assert img.shape == (3, 32, 32)
    assert _pixel(img, CIFAR10_MEAN, CIFAR10_STD) == pytest.approx(2 * label, abs=0.01)


def test_cifar100_long_tailed_cut_matches_the_profile(cifar_root, skip_md5):
    gamma = 5.0
    counts = long_tailed_counts(CIFAR100_TRAIN_PER_CLASS, 100, gamma)
    data = build_long_tailed("cifar100", gamma, root=cifar_root, split_seed=3)
    assert data.class_counts == counts
    assert isinstance(data.train, Subset) and len(data.train) == sum(counts)
    full_targets = data.train.dataset.targets
    assert _bincount(_subset_targets(data, full_targets), 100) == counts
    assert [data.train[i][1] for i in range(len(data.train))] == _subset_targets(data, full_targets)
    again = build_long_tailed("cifar100", gamma, root=cifar_root, split_seed=3)
    assert again.train_indices == data.train_indices
    assert len(data.test) == 200  # the test set stays balanced


def test_cifar_fake_copy_is_refused_by_torchvision_md5_check(cifar_root):
    with pytest.raises(RuntimeError, match=r"cifar100: .*md5"):
        load_dataset("cifar100", root=cifar_root)


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar100", root=str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"cifar100: no CIFAR-100 files under {tmp_path}: expected {tmp_path}/cifar-100-python/")
    assert "{train,test,meta}" in msg and "download: true" in msg
    with pytest.raises(FileNotFoundError, match=r"cifar10: .*cifar-10-batches-py/\{data_batch_1,.*batches\.meta\}"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar10: no data root given"):
        load_dataset("cifar10", root=None)


# ---------------------------------------------------------------- Tiny ImageNet

TINY_TRAIN_PER_CLASS, TINY_VAL_PER_CLASS = 3, 2


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Fake tiny-imagenet-200: wnids.txt in unsorted order, 64x64 JPEGs whose grey = class index."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(2)
    wnids = [f"n{int(v):08d}" for v in rng.choice(10**8, size=200, replace=False)]  # file order is not sorted
    assert wnids != sorted(wnids)
    index = {w: i for i, w in enumerate(sorted(wnids))}
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for k in range(TINY_TRAIN_PER_CLASS):
            _grey(str(folder / "train" / w / "images" / f"{w}_{k}.JPEG"), index[w], 64)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    lines = []
    for n, w in enumerate(w for w in wnids for _ in range(TINY_VAL_PER_CLASS)):
        name = f"val_{n}.JPEG"
        _grey(str(folder / "val" / "images" / name), index[w], 64)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    order = rng.permutation(len(lines))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    return str(root), index


def test_tinyimagenet_counts_shapes_and_labels(tiny_root):
    from trainer.datasets.tinyimagenet import TINY_MEAN, TINY_STD

    root, index = tiny_root
    split = load_dataset("tinyimagenet", root=root)
    assert (split.num_classes, split.in_channels) == (200, 3)
    assert len(split.train) == 200 * TINY_TRAIN_PER_CLASS and len(split.test) == 200 * TINY_VAL_PER_CLASS
    assert _bincount(split.train_targets, 200) == [TINY_TRAIN_PER_CLASS] * 200
    assert _bincount(split.test.targets, 200) == [TINY_VAL_PER_CLASS] * 200
    # label = position of the wnid in sorted(wnids.txt)
    for path, label in split.train.samples:
        assert index[path.split(os.sep)[-3]] == label
    for ds in (split.train, split.test):
        for i in (0, 11, len(ds) - 1):
            img, label = ds[i]
            assert img.shape == (3, 64, 64)
            assert _pixel(img, TINY_MEAN, TINY_STD) == pytest.approx(label, abs=2.0)
    # the folder itself is accepted as root too
    assert load_dataset("tinyimagenet", root=os.path.join(root, "tiny-imagenet-200")).train_targets == split.train_targets


def test_tinyimagenet_long_tailed_cut_matches_the_profile(tiny_root):
    root, _ = tiny_root
    counts = long_tailed_counts(TINY_TRAIN_PER_CLASS, 200, 3.0)
    data = build_long_tailed("tinyimagenet", 3.0, root=root)
    assert data.class_counts == counts and len(data.train) == sum(counts)
    assert _bincount(_subset_targets(data, data.train.dataset.targets), 200) == counts
    assert build_long_tailed("tinyimagenet", 3.0, root=root).train_indices == data.train_indices
    assert data.train[0][0].shape == (3, 64, 64)


def test_tinyimagenet_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("tinyimagenet", root=str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"tinyimagenet: no Tiny ImageNet files (wnids.txt) under {tmp_path}")
    for part in ("wnids.txt", "train/<wnid>/images/*.JPEG", "val/images/*.JPEG", "val_annotations.txt"):
        assert part in msg


# ---------------------------------------------------------------- ImageNet and ImageNet-LT

IMNET_TRAIN_PER_CLASS = 3
IMAGE_SIZE = 16  # the `image_size` option: RandomResizedCrop(16) / Resize(18) + CenterCrop(16)


def _lt_count(c: int) -> int:
    return 3 if c < 100 else 2 if c < 400 else 1


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """Fake ImageNet (1000 class folders, 8x8 JPEGs, grey = class % 250) plus OLTR-style split lists."""
    root = tmp_path_factory.mktemp("imagenet")
    wnids = [f"n{c:08d}" for c in range(1000)]
    train_lines, test_lines, val_lines = [], [], []
    for c, w in enumerate(wnids):
        rel = [f"train/{w}/{w}_{k}.JPEG" for k in range(IMNET_TRAIN_PER_CLASS)]
        for r in rel:
            _grey(str(root / r), c % 250, 8)
        _grey(str(root / "val" / w / f"val_{c}.JPEG"), c % 250, 8)
        train_lines += [f"{r} {c}" for r in rel[: _lt_count(c)]]
        test_lines.append(f"val/{w}/val_{c}.JPEG {c}")
        val_lines.append(f"{rel[-1]} {c}")
    rng = np.random.default_rng(3)
    splits = root / "splits"
    splits.mkdir()
    for name, lines in (("train", train_lines), ("test", test_lines), ("val", val_lines)):
        (splits / f"ImageNet_LT_{name}.txt").write_text("\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n")
    return str(root), str(splits)


def test_imagenet_lt_counts_shapes_and_labels(imagenet_root):
    from trainer.datasets.imagenet import IMAGENET_MEAN, IMAGENET_STD

    root, splits = imagenet_root
    split = load_dataset("imagenet_lt", root=root, split_dir=splits, image_size=IMAGE_SIZE)
    expected = [_lt_count(c) for c in range(1000)]
    assert (split.num_classes, split.in_channels, split.presplit) == (1000, 3, True)
    assert _bincount(split.train_targets, 1000) == expected
    assert len(split.test) == 1000 and _bincount(split.test.targets, 1000) == [1] * 1000
    for path, label in split.train.samples + split.test.samples:
        assert path.startswith(root) and int(path.split(os.sep)[-2][1:]) == label
    for ds in (split.train, split.test):
        for i in (0, 5, len(ds) - 1):
            img, label = ds[i]
            assert img.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
            assert _pixel(img, IMAGENET_MEAN, IMAGENET_STD) == pytest.approx(label % 250, abs=2.0)
    val = load_dataset("imagenet_lt", root=root, split_dir=splits, test_split="val", image_size=IMAGE_SIZE)
    assert len(val.test) == 1000 and all("/train/" in p for p, _ in val.test.samples)
    assert val.train_targets == split.train_targets


def test_imagenet_lt_is_kept_whole_by_build_long_tailed(imagenet_root):
    root, splits = imagenet_root
    options = {"split_dir": splits, "image_size": IMAGE_SIZE}
    expected = [_lt_count(c) for c in range(1000)]
    data = build_long_tailed("imagenet_lt", 100.0, root=root, options=options)
    assert data.class_counts == expected  # gamma 100 is not applied on top of the OLTR list
    assert data.train_indices == list(range(sum(expected)))
    assert len(data.train) == sum(expected) and len(data.test) == 1000
    assert build_long_tailed("imagenet_lt", 100.0, root=root, options=options).train_indices == data.train_indices
    # only on request is gamma applied on top (n_max = smallest class count of the list = 1)
    cut = build_long_tailed("imagenet_lt", 2.0, root=root, options={**options, "apply_gamma": True})
    assert cut.class_counts == long_tailed_counts(1, 1000, 2.0) and len(cut.train) == sum(cut.class_counts) == 1
    assert isinstance(cut.train, Subset)


def test_imagenet_folders_counts_and_long_tailed_cut(imagenet_root):
    root, _ = imagenet_root
    split = load_dataset("imagenet", root=root, image_size=IMAGE_SIZE)
    assert (split.num_classes, split.presplit, len(split.test)) == (1000, False, 1000)
    assert _bincount(split.train_targets, 1000) == [IMNET_TRAIN_PER_CLASS] * 1000
    img, label = split.test[500]
    assert img.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and label == 500
    counts = long_tailed_counts(IMNET_TRAIN_PER_CLASS, 1000, 3.0)
    data = build_long_tailed("imagenet", 3.0, root=root, options={"image_size": IMAGE_SIZE}, split_seed=7)
    assert data.class_counts == counts and len(data.train) == sum(counts)
    assert _bincount(_subset_targets(data, data.train.dataset.targets), 1000) == counts
    again = build_long_tailed("imagenet", 3.0, root=root, options={"image_size": IMAGE_SIZE}, split_seed=7)
    assert again.train_indices == data.train_indices
    x, y = data.train[len(data.train) - 1]
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and y == data.train.dataset.targets[data.train_indices[-1]]


def test_imagenet_missing_files_messages(tmp_path, imagenet_root):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenet_lt", root=str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"imagenet_lt: no ImageNet-LT split files under {tmp_path}")
    assert "ImageNet_LT_{train,test,val}.txt" in msg and "ImageNet_LT_train.txt" in msg
    # split lists found, images not: a wrong root is named
    _, splits = imagenet_root
    with pytest.raises(FileNotFoundError, match=r"imagenet_lt: ImageNet_LT_train\.txt lists .* which does not exist"):
        load_dataset("imagenet_lt", root=str(tmp_path), split_dir=splits)
    with pytest.raises(FileNotFoundError, match=rf"imagenet: no ImageNet folders under {tmp_path} \(missing: train, val\)"):
        load_dataset("imagenet", root=str(tmp_path))
    with pytest.raises(ValueError, match="test_split"):
        load_dataset("imagenet_lt", root=str(tmp_path), test_split="train")


def test_imagenet_lt_rejects_a_malformed_line(tmp_path):
    (tmp_path / "ImageNet_LT_train.txt").write_text("train/a.JPEG 3\ntrain/b.JPEG\n")
    (tmp_path / "ImageNet_LT_test.txt").write_text("val/a.JPEG 1000\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_train\.txt:2: expected"):
        load_dataset("imagenet_lt", root=str(tmp_path))


# ---------------------------------------------------------------- Fashion-MNIST

FASHION_TRAIN_PER_CLASS, FASHION_TEST_PER_CLASS = 12, 3


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root, gz: bool):
    rng = np.random.default_rng(4)
    os.makedirs(root, exist_ok=True)
    for part, per_class in (("train", FASHION_TRAIN_PER_CLASS), ("t10k", FASHION_TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = np.repeat((20 * labels)[:, None, None], 28, axis=1).repeat(28, axis=2)
        for kind, data, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            name = os.path.join(root, f"{part}-{kind}-ubyte")
            if gz:
                with gzip.open(name + ".gz", "wb") as f:
                    f.write(_idx_bytes(data, magic))
            else:
                with open(name, "wb") as f:
                    f.write(_idx_bytes(data, magic))


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fashion_mnist_counts_shapes_and_labels(tmp_path, gz):
    from trainer.datasets.fashion_mnist import FASHION_MEAN, FASHION_STD

    _write_fashion(str(tmp_path), gz)
    split = load_dataset("fashion_mnist", root=str(tmp_path))
    assert isinstance(split.train, TensorDataset) and (split.num_classes, split.in_channels) == (10, 1)
    x, y = split.train.tensors
    assert x.shape == (120, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert split.test.tensors[0].shape == (30, 1, 28, 28)
    assert _bincount(split.train_targets, 10) == [FASHION_TRAIN_PER_CLASS] * 10
    assert split.train_targets == y.tolist()
    for xs, ys in (split.train.tensors, split.test.tensors):  # every pixel = 20 * label
        raw = (xs * FASHION_STD + FASHION_MEAN) * 255
        assert torch.allclose(raw, (20 * ys).float().view(-1, 1, 1, 1).expand_as(raw), atol=1e-3)


def test_fashion_mnist_long_tailed_cut_matches_the_profile(tmp_path):
    _write_fashion(str(tmp_path), gz=True)
    counts = long_tailed_counts(FASHION_TRAIN_PER_CLASS, 10, 4.0)
    data = build_long_tailed("fashion_mnist", 4.0, root=str(tmp_path), split_seed=1)
    assert data.class_counts == counts
    assert isinstance(data.train, TensorDataset)
    assert _bincount(data.train.tensors[1], 10) == counts and data.train.tensors[0].shape[1:] == (1, 28, 28)
    assert build_long_tailed("fashion_mnist", 4.0, root=str(tmp_path), split_seed=1).train_indices == data.train_indices


def test_fashion_mnist_bad_magic_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"fashion_mnist: no Fashion-MNIST files under {tmp_path}: expected {tmp_path}/")
    assert "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz" in msg and "dataset-fashion-mnist" in msg
    _write_fashion(str(tmp_path), gz=False)
    with open(tmp_path / "train-labels-idx1-ubyte", "r+b") as f:
        f.write(np.array([2051], dtype=">i4").tobytes())
    with pytest.raises(ValueError, match="idx magic number 2051, expected 2049"):
        load_dataset("fashion_mnist", root=str(tmp_path))


def test_fashion_mnist_real_files():
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.fail("no Fashion-MNIST files: `apt-get install -y dataset-fashion-mnist` (make test installs it)", pytrace=False)
    split = load_dataset("fashion_mnist")
    assert len(split.train) == 60000 and len(split.test) == 10000
    assert _bincount(split.train_targets, 10) == [6000] * 10
    assert _bincount(split.test.tensors[1], 10) == [1000] * 10
    x = split.train.tensors[0]
    assert x.shape == (60000, 1, 28, 28) and split.test.tensors[0].shape == (10000, 1, 28, 28)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1.0) < 0.01  # the fixed mean/std fit


def test_without_augmentation_reads_training_images_with_the_test_transform(cifar_root, skip_md5):
    from trainer.data import build_long_tailed, without_augmentation

    data = build_long_tailed("cifar100", 5, root=cifar_root)
    plain = without_augmentation(data.train, data.test)
    assert len(plain) == len(data.train)
    from PIL import Image

    base = data.train.dataset
    for i in (0, len(plain) - 1):
        _, label = data.train[i]
        image, same_label = plain[i]
        assert same_label == label
        # Exactly the test transform of the stored training image: no crop, no flip.
        expected = data.test.transform(Image.fromarray(base.data[data.train.indices[i]]))
        assert torch.equal(image, expected)
    # The training set itself keeps its augmentation.
    assert data.train.dataset.transform is not data.test.transform


def test_imagenet_lt_validation_is_its_official_val_list(imagenet_root):
    """A search on ImageNet-LT evaluates on ImageNet_LT_val.txt (20 per class in the real list), never on the test list."""
    root, splits = imagenet_root
    options = {"split_dir": splits, "image_size": IMAGE_SIZE}
    data = build_long_tailed("imagenet_lt", 1.0, root=root, options=options, validation_per_class=20)
    assert len(data.validation) == 1000 and _bincount(data.validation.targets, 1000) == [1] * 1000
    assert all("/train/" in p for p, _ in data.validation.samples)  # the val list, not the test images under val/
    assert data.validation.transform is data.test.transform  # no augmentation on what is evaluated
    assert data.validation_indices is None and len(data.train) == sum(_lt_count(c) for c in range(1000))
    with pytest.raises(ValueError, match="no validation list"):
        build_long_tailed("imagenet_lt", 1.0, root=root, options={**options, "test_split": "val"}, validation_per_class=20)


def test_cifar_validation_is_held_out_before_the_cut_and_unaugmented(cifar_root, skip_md5):
    data = build_long_tailed("cifar100", 10.0, root=cifar_root, validation_per_class=2)
    targets = load_dataset("cifar100", root=cifar_root).train_targets
    assert _bincount([targets[i] for i in data.validation_indices], 100) == [2] * 100
    assert not set(data.validation_indices) & set(data.train_indices)
    assert data.validation.dataset.transform is not None and data.validation.dataset.transform is data.test.transform
