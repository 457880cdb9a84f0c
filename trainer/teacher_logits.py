"""Teacher-logit tables: a frozen teacher's logits for every input a student can be shown, computed once.

A distillation step spends most of its time in the teacher's forward pass, and every student of a
teacher recomputes the same outputs, epoch after epoch. On the device data path the inputs come from
a finite set: each image under one of the crop offsets and flips that RandomCrop(size, padding) and
RandomHorizontalFlip can draw (9 x 9 x 2 = 162 for CIFAR's 32-pixel crop with padding 4), or the
image itself without augmentation. The teacher is in eval mode and frozen, so its logits for
(image, offset, flip) never change: a table [N, V, C] of them (V variants per image) serves every
epoch of every student of that teacher on that training set, and a step gathers its batch's rows
instead of running the teacher.

The table holds what the live teacher computes, up to floating-point reassociation (other batch
sizes, other kernels): the same autocast, the same memory format, float32 logits. So, like
`recipe.compile`, `recipe.teacher_logits` stays out of a trial's identity.

On disk a table lives in a cache folder (beside the teacher's checkpoint unless told otherwise),
under a key made of everything it depends on: the teacher checkpoint's bytes, the training images'
bytes, their normalisation and augmentation, the device type and the autocast. It is written by one
process (an exclusive lock per key; the others wait on it and then read), to a temporary file that is
renamed into place after a manifest with its SHA-256; a reader checks the digest, and a table whose
digest or shape does not match (a partial or corrupt file) is rebuilt, never used.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass

import torch

from trainer.device_batches import DEVICE_SHARE, Augmentation, DeviceBatches, crop_flip, normalise
from trainer.files import file_sha256, write_atomically

TABLE_FILE = "logits.pt"
MANIFEST_FILE = "manifest.json"
FORMAT = 1  # bumped when what a table holds changes, so older tables are not read as new ones
# Host memory a table may take (of what the machine has free) when it stays off the GPU.
HOST_SHARE = 0.25


@dataclass(frozen=True)
class Variants:
    """The finite set of inputs an image can become: tops x lefts crop offsets, flips 1 or 2."""

    tops: int
    lefts: int
    flips: int

    def __len__(self) -> int:
        return self.tops * self.lefts * self.flips

    def variant(self, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """The variant number of each (top, left, flip) draw."""
        return (top * self.lefts + left) * self.flips + flip.long()

    def draws(self, v: int) -> tuple[int, int, bool]:
        """(top, left, flip) of variant v."""
        return v // (self.lefts * self.flips), (v // self.flips) % self.lefts, bool(v % self.flips)


def variants_of(augmentation: Augmentation | None, image_hw: tuple[int, int] | None) -> Variants:
    """Every (offset, flip) that RandomCrop + RandomHorizontalFlip can draw for images of `image_hw`."""
    if augmentation is None:
        return Variants(1, 1, 1)
    height, width = image_hw
    p = augmentation.padding
    out_h, out_w = augmentation.size if augmentation.size is not None else (height, width)
    flips = 2 if augmentation.flip > 0 else 1
    return Variants(height + 2 * p - out_h + 1, width + 2 * p - out_w + 1, flips)


def table_bytes(batches: DeviceBatches, num_classes: int) -> int:
    return len(batches.targets) * len(variants_of(batches.augmentation, batches.image_hw)) * num_classes * 4


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def table_key(teacher_file: str, batches: DeviceBatches, autocast: bool, device: torch.device) -> str:
    """What a table depends on, as one digest: the teacher's weights (its checkpoint file), the
    training images and how they become inputs, and how the teacher runs."""
    parts = {
        "format": FORMAT,
        "teacher": file_sha256(teacher_file),
        "images": _digest(batches.images),
        "uint8": batches.uint8,
        "mean": batches.mean.tolist() if batches.uint8 else None,
        "std": batches.std.tolist() if batches.uint8 else None,
        "augmentation": None if batches.augmentation is None else
        [batches.augmentation.size, batches.augmentation.padding, batches.augmentation.flip],
        "device": device.type,
        "autocast": autocast,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def compute_table(teacher: torch.nn.Module, batches: DeviceBatches, num_classes: int, autocast: bool,
                  memory_format: torch.memory_format = torch.contiguous_format, chunk: int = 512) -> torch.Tensor:
    """float32 [N, V, C]: the teacher's logits for every image under every variant, computed as the
    training step computes them (the device path's crop, flip and normalisation, the same autocast)."""
    device = batches.device
    variants = variants_of(batches.augmentation, batches.image_hw)
    n = len(batches.targets)
    table = torch.empty((n, len(variants), num_classes), dtype=torch.float32)
    for v in range(len(variants)):
        top, left, flip = variants.draws(v)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            x = batches.images[start:stop].to(device, non_blocking=True)
            if batches.augmentation is not None:
                size = stop - start
                x = crop_flip(x, torch.full((size,), top, device=device), torch.full((size,), left, device=device),
                              torch.full((size,), flip, device=device), batches.augmentation)
            if batches.uint8:
                x = normalise(x, batches.mean, batches.std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = teacher(x.contiguous(memory_format=memory_format))
            table[start:stop, v] = logits.float().cpu()
    return table


def _read(folder: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The table in `folder` if its manifest, digest and shape say it is whole, else None."""
    try:
        with open(os.path.join(folder, MANIFEST_FILE)) as f:
            manifest = json.load(f)
        file = os.path.join(folder, TABLE_FILE)
        if manifest.get("sha256") != file_sha256(file):
            return None
        table = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError):  # absent, partial or corrupt: rebuilt
        return None
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != shape or table.dtype != torch.float32:
        return None
    return table


def _write(folder: str, table: torch.Tensor, key: str) -> None:
    """The table, then its manifest, each through a temporary file renamed into place (a reader that
    finds a manifest finds the whole table it describes)."""
    os.makedirs(folder, exist_ok=True)
    for stale in (MANIFEST_FILE, TABLE_FILE):  # an old manifest must never describe a new, half-written table
        if os.path.exists(os.path.join(folder, stale)):
            os.remove(os.path.join(folder, stale))
    write_atomically(os.path.join(folder, TABLE_FILE), lambda f: torch.save(table, f))
    manifest = {"key": key, "sha256": file_sha256(os.path.join(folder, TABLE_FILE)), "shape": list(table.shape)}
    write_atomically(os.path.join(folder, MANIFEST_FILE), lambda f: f.write(json.dumps(manifest).encode()))


def cached_table(cache_dir: str | None, teacher_file: str, teacher: torch.nn.Module, batches: DeviceBatches,
                 num_classes: int, autocast: bool, memory_format: torch.memory_format) -> tuple[torch.Tensor, str]:
    """The table from `cache_dir` or computed (and then stored there): (table on the CPU, "read" |
    "built"). One process per key computes it; the others wait on its lock and read what it wrote.
    Without a cache folder (None, or one that cannot be written) the table is computed here."""
    shape = (len(batches.targets), len(variants_of(batches.augmentation, batches.image_hw)), num_classes)
    key = table_key(teacher_file, batches, autocast, batches.device) if cache_dir is not None else ""
    folder = os.path.join(cache_dir, key) if cache_dir is not None else None
    try:
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = None
    if folder is None:
        return compute_table(teacher, batches, num_classes, autocast, memory_format), "built"
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, also if this process dies
        table = _read(folder, shape)
        if table is not None:
            return table, "read"
        table = compute_table(teacher, batches, num_classes, autocast, memory_format)
        _write(folder, table, key)
        return table, "built"


def has_cached_table(cache_dir: str, teacher_file: str, batches: DeviceBatches, autocast: bool) -> bool:
    """Whether `cache_dir` holds a finished table for this teacher and training set (its manifest is
    there; `cached_table` checks its digest before it is used)."""
    key = table_key(teacher_file, batches, autocast, batches.device)
    return os.path.isfile(os.path.join(cache_dir, key, MANIFEST_FILE))


class TeacherTable:
    """A table placed where its rows are gathered: on the GPU when it takes at most DEVICE_SHARE of its
    free memory, else in (pinned) host memory, rows gathered there and copied over."""

    def __init__(self, table: torch.Tensor, variants: Variants, device: torch.device, source: str):
        self.variants = variants
        self.device = device
        self.source = source  # "read" from the cache or "built" here
        on_device = device.type != "cuda" or table.numel() * 4 <= DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]
        if on_device:
            self.rows = table.to(device)
        else:
            self.rows = table.pin_memory()
        self.flat = self.rows.view(-1, table.shape[-1])  # [N * V, C]

    def logits(self, index: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """float32 [B, C]: the teacher's logits for a batch's images under its draws."""
        variant = torch.zeros_like(index) if draws is None else self.variants.variant(*draws)
        row = index * len(self.variants) + variant
        if self.flat.device == self.device:
            return self.flat[row]
        return self.flat[row.cpu()].to(self.device, non_blocking=True)


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether a table of `nbytes` fits the memory budget: a share of the GPU's free memory, or else a
    share of the host's available memory."""
    if device.type == "cuda" and nbytes <= DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
        return True
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return False
    return nbytes <= HOST_SHARE * available
