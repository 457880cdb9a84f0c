"""The device-resident data path: an in-memory image set held as one tensor on the trial's device,
batches cut by tensor indexing, random crop + flip and normalisation run batched on that device.

No DataLoader workers, no PIL per image. It reads the images exactly as the DataLoader path does:
the augmentation is taken from the dataset's own torchvision transform (`parse_transform`:
RandomCrop(size, padding) then RandomHorizontalFlip(p), then ToTensor and Normalize), so the two
paths cannot drift apart, and for the same crop offsets and flips they give the same float32
images, bit for bit (`tests/test_device_data.py`). A transform with anything else is not read here
(`image_tensors` returns None and the DataLoader path stays).

What differs is where the random draws come from: the DataLoader path draws each image's offsets and
flip from the global torch stream, one image at a time; here, at the start of every epoch, the
crop offsets (uniform over 0 .. padded size - crop size, as RandomCrop) and flips (probability p) of
the whole epoch are drawn on the CPU from the loader's own augmentation generator. So a trial's
augmentation depends only on its seed (the same on a CPU and a GPU), and the generator's state at an
epoch's end is all that resume has to keep (`DeviceBatches.augment_generator`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The augmentation stream's seed is the trial's seed plus this (seeds are < 2**32): a stream apart
# from the shuffle stream, which is seeded with the trial's seed itself.
AUGMENT_SEED_OFFSET = 1 << 32
# Keep the images on the GPU when they take at most this share of its free memory; else they stay
# in pinned host memory and each batch is gathered there and copied over (same draws, same images).
DEVICE_SHARE = 0.25


@dataclass(frozen=True)
class Augmentation:
    """RandomCrop(size, padding) (zero fill) then RandomHorizontalFlip(flip): torchvision's order."""

    size: tuple[int, int] | None  # crop (height, width); None: no crop
    padding: int  # zero padding on every side before the crop
    flip: float  # flip probability; 0: no flip


@dataclass
class ImageTensors:
    """An image set as tensors, and how the DataLoader path would turn an image into its input."""

    images: torch.Tensor  # uint8 [N, C, H, W] (pixels), or float [N, ...] already the model's input
    targets: torch.Tensor  # int64 [N]
    mean: tuple[float, ...] | None = None  # uint8 images: (x / 255 - mean) / std per channel
    std: tuple[float, ...] | None = None
    augmentation: Augmentation | None = None

    def __len__(self) -> int:
        return len(self.targets)


def parse_transform(transform) -> tuple[Augmentation | None, tuple[float, ...], tuple[float, ...]] | None:
    """(augmentation, mean, std) of a torchvision Compose this path reproduces exactly, else None:
    [RandomCrop(size, padding=p)] [RandomHorizontalFlip(p)] ToTensor Normalize(mean, std)."""
    try:
        from torchvision import transforms as T
    except ImportError:  # no torchvision: no transform to read
        return None
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    if len(steps) < 2 or type(steps[-2]) is not T.ToTensor or type(steps[-1]) is not T.Normalize:
        return None
    normalise = steps[-1]
    size, padding, flip = None, 0, 0.0
    rest = steps[:-2]
    if rest and type(rest[0]) is T.RandomCrop:
        crop = rest.pop(0)
        pad = crop.padding if crop.padding is not None else 0
        if isinstance(pad, (list, tuple)):
            if len(set(pad)) != 1:
                return None  # uneven padding: not reproduced here
            pad = pad[0]
        if crop.pad_if_needed or crop.padding_mode != "constant" or crop.fill != 0:
            return None
        size, padding = (int(crop.size[0]), int(crop.size[1])), int(pad)
    if rest and type(rest[0]) is T.RandomHorizontalFlip:
        flip = float(rest.pop(0).p)
    if rest:
        return None
    augmentation = Augmentation(size, padding, flip) if size is not None or flip > 0 else None
    return augmentation, tuple(float(m) for m in normalise.mean), tuple(float(s) for s in normalise.std)


def _base_and_indices(dataset):
    from torch.utils.data import Subset

    indices = None
    while isinstance(dataset, Subset):  # nested subsets compose their indices
        sub = np.asarray(dataset.indices, dtype=np.int64)
        indices = sub if indices is None else sub[indices]
        dataset = dataset.dataset
    return dataset, indices


def _decode_image_list(base, indices) -> np.ndarray | None:
    """The images of an image list (`trainer.datasets.imagenet.ImageList`) as one uint8 [N, H, W, 3]
    array, decoded as its __getitem__ does (PIL, RGB); None when their sizes differ."""
    from PIL import Image

    chosen = range(len(base.samples)) if indices is None else indices
    arrays = []
    for i in chosen:
        with Image.open(base.samples[int(i)][0]) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        if arrays[-1].shape != arrays[0].shape:
            return None
    return np.stack(arrays) if arrays else None


def image_tensors(dataset) -> ImageTensors | None:
    """`dataset` as tensors the device path can serve, or None (the DataLoader path stays):
    - an in-memory TensorDataset (images, targets): as it is, no augmentation;
    - a torchvision-style dataset holding its pixels (`.data`, uint8 [N, H, W(, C)], e.g. CIFAR) or
      an image list of same-size files (`.samples`, e.g. Tiny ImageNet: decoded once here), or a
      Subset of one, whose transform `parse_transform` reads and which has no target transform."""
    from torch.utils.data import TensorDataset

    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) != 2:
            return None
        return ImageTensors(dataset.tensors[0], dataset.tensors[1].long())
    base, indices = _base_and_indices(dataset)
    if getattr(base, "target_transform", None) is not None or not hasattr(base, "transform"):
        return None
    parsed = parse_transform(base.transform) if base.transform is not None else None
    if parsed is None:
        return None
    augmentation, mean, std = parsed
    if isinstance(getattr(base, "data", None), np.ndarray) and base.data.dtype == np.uint8 and hasattr(base, "targets"):
        pixels = base.data if indices is None else base.data[indices]
    elif hasattr(base, "samples") and hasattr(base, "targets"):
        pixels = _decode_image_list(base, indices)
        if pixels is None:
            return None
    else:
        return None
    if pixels.ndim == 3:
        pixels = pixels[..., None]  # grey images: one channel
    targets = np.asarray(base.targets, dtype=np.int64)
    targets = targets if indices is None else targets[indices]
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W] as ToTensor
    if len(mean) != images.shape[1]:
        return None
    return ImageTensors(images, torch.from_numpy(targets), mean, std, augmentation)


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              augmentation: Augmentation) -> torch.Tensor:
    """RandomCrop then RandomHorizontalFlip on a batch [B, C, H, W] (any dtype) with the given draws:
    `top`/`left` [B] the crop's offsets in the zero-padded image, `flip` [B] bool. One gather."""
    batch, channels, height, width = images.shape
    p = augmentation.padding
    padded = F.pad(images, (p, p, p, p)) if p else images
    out_h, out_w = augmentation.size if augmentation.size is not None else (height, width)
    rows = top[:, None] + torch.arange(out_h, device=images.device)  # [B, h]
    cols = left[:, None] + torch.arange(out_w, device=images.device)  # [B, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip of the crop reads its columns backwards
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32, as ToTensor then Normalize compute it (same operations, same order)."""
    return images.to(torch.float32).div(255).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


def draw_augmentation(n: int, augmentation: Augmentation, image_hw: tuple[int, int], generator: torch.Generator):
    """One epoch's draws for n images, on the CPU: crop offsets uniform over every position of the crop
    in the padded image (as RandomCrop.get_params) and flips with probability p (as RandomHorizontalFlip)."""
    height, width = image_hw
    p = augmentation.padding
    out_h, out_w = augmentation.size if augmentation.size is not None else (height, width)
    if out_h > height + 2 * p or out_w > width + 2 * p:
        raise ValueError(f"crop {out_h}x{out_w} is larger than the padded image {height + 2 * p}x{width + 2 * p}")
    top = torch.randint(0, height + 2 * p - out_h + 1, (n,), generator=generator)
    left = torch.randint(0, width + 2 * p - out_w + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < augmentation.flip
    return top, left, flip


class DeviceBatches:
    """Batches (x, y) of an `ImageTensors` set on `device`: x float32 [B, C, h, w] ready for the model.

    Shuffled by `generator` (torch.randperm, drawn when an epoch starts: the order `_TensorBatches`
    gives for the same generator, and with `loader_order` the order a DataLoader gives: it first
    draws one int64, its workers' base seed, from the generator); augmented with draws from
    `augment_generator` (one epoch's draws at once, on the CPU). Both generators live on the CPU, so
    a run draws the same on every device and its resume state is their two states.
    """

    def __init__(self, data: ImageTensors, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 device: torch.device | str = "cpu", augment_generator: torch.Generator | None = None,
                 loader_order: bool = False):
        self.device = torch.device(device)
        self.loader_order = loader_order
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.augmentation = data.augmentation
        self.augment_generator = augment_generator
        if self.augmentation is not None and augment_generator is None:
            raise ValueError("an augmented set needs its augment_generator")
        self.image_hw = tuple(data.images.shape[2:4]) if data.images.dim() == 4 else None
        self.storage = self._storage_device(data.images)
        images = data.images.to(self.storage)
        if self.storage.type == "cpu" and self.device.type == "cuda":
            images = images.pin_memory()
        self.images = images
        self.targets = data.targets.to(self.device)
        self.uint8 = data.images.dtype == torch.uint8
        if self.uint8:
            self.mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device)
            self.std = torch.tensor(data.std, dtype=torch.float32, device=self.device)

    def _storage_device(self, images: torch.Tensor) -> torch.device:
        if self.device.type != "cuda":
            return self.device
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if images.numel() * images.element_size() <= DEVICE_SHARE * free else torch.device("cpu")

    def __len__(self) -> int:
        return (len(self.targets) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for x, y, _, _ in self.keyed():
            yield x, y

    def keyed(self):
        """The epoch's batches as `__iter__` gives them (the same draws), each with what identifies its
        inputs: (x, y, index, draws), index [B] the images' positions in the set and draws the batch's
        (top, left, flip) or None without augmentation, all on the device (`trainer.teacher_logits`)."""
        n = len(self.targets)
        if self.loader_order and self.generator is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # as DataLoader.__iter__ does
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        draws = None
        if self.augmentation is not None:
            draws = [d.to(self.device, non_blocking=True) for d in
                     draw_augmentation(n, self.augmentation, self.image_hw, self.augment_generator)]
        order_dev = order.to(self.device, non_blocking=True)
        order_store = order if self.storage.type == "cpu" else order_dev
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            x = self.images[order_store[start:stop]].to(self.device, non_blocking=True)
            batch_draws = None
            if draws is not None:
                batch_draws = (draws[0][start:stop], draws[1][start:stop], draws[2][start:stop])
                x = crop_flip(x, *batch_draws, self.augmentation)
            if self.uint8:
                x = normalise(x, self.mean, self.std)
            index = order_dev[start:stop]
            yield x, self.targets[index], index, batch_draws

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The streams a resumed trial must continue: shuffle and augmentation."""
        state = {"loader": self.generator.get_state()} if self.generator is not None else {}
        if self.augment_generator is not None:
            state["augment"] = self.augment_generator.get_state()
        return state


def device_batches(dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device | str) -> DeviceBatches | None:
    """The device path for `dataset`, or None when it is not an in-memory image set (`image_tensors`)."""
    from torch.utils.data import TensorDataset

    data = image_tensors(dataset)
    if data is None:
        return None
    generator = torch.Generator().manual_seed(seed)
    augment = torch.Generator().manual_seed(seed + AUGMENT_SEED_OFFSET) if data.augmentation is not None else None
    # Sets that `make_loader` gave a DataLoader before this path existed keep its shuffle order.
    return DeviceBatches(data, batch_size, shuffle, generator, device, augment,
                         loader_order=not isinstance(dataset, TensorDataset))
