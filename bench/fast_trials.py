"""Shared by the fast-trial benchmarks (issue 14): the machine line, a CIFAR-100-LT-sized in-memory set
read through torchvision's CIFAR class (the reader's real transform and __getitem__, random pixels: no
dataset is downloaded), the two training loops (the project's and the usual reference) and timing.

Not a benchmark itself; `bench_data.py`, `bench_step.py` and `bench_packing.py` import it.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

LT_IMAGES = 10_847  # CIFAR-100-LT at gamma 100


def machine(device: torch.device) -> str:
    """One line naming what measured: the device, the threads, the load, the software."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    if device.type == "cuda":
        what = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        gpu = "no GPU available" if not torch.cuda.is_available() else "GPU present, not used"
        what = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} thread(s)); {gpu}"
    return (f"device: {what}; torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            f"(1/5/15 min, before the run)")


def cifar_like(n: int = LT_IMAGES, classes: int = 100, seed: int = 0, augment: bool = True):
    """A torchvision CIFAR-100 dataset object holding n random 32x32 RGB images in memory, with the
    reader's own transforms (`trainer.datasets.cifar`): the DataLoader path reads it as it reads
    CIFAR-100 from disk (PIL per image), the device path as it reads that."""
    from torchvision.datasets import CIFAR100

    from trainer.datasets.cifar import CIFAR100_MEAN, CIFAR100_STD, _transforms

    rng = np.random.default_rng(seed)
    dataset = CIFAR100.__new__(CIFAR100)
    dataset.root, dataset.train, dataset.target_transform, dataset.transforms = "", True, None, None
    dataset.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    dataset.targets = rng.integers(0, classes, n).tolist()
    dataset.transform = _transforms(CIFAR100_MEAN, CIFAR100_STD, augment)[0]
    return dataset


def best_of(fn, repeats: int, sync) -> float:
    """Best wall time of `fn` over `repeats` calls (after one warm-up call)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def reference_kd_epoch(student, teacher, loader, optimizer, device, temperature=4.0) -> int:
    """A KD training pass written the usual way: DataLoader batches copied per step, fp32, NCHW, the
    loss read back every step (`loss.item()` for a running mean), plain (for-each) SGD. Returns images."""
    student.train()
    seen, running = 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kd = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean") * temperature**2
        loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
        seen += y.shape[0]
    return seen


def project_kd_epoch(student, teacher, method, loader, optimizer, device) -> int:
    """The project's training pass (`trainer.loop._train_epoch`): channels_last and bf16 autocast on
    CUDA, the loss summed on the device. Returns images."""
    from trainer.loop import _train_epoch

    cuda = device.type == "cuda"
    _train_epoch(student, teacher, method, optimizer, loader, 0, device, autocast=cuda, channels_last=cuda)
    return len(loader.targets)


def kd_pair(device: torch.device, classes: int = 100, project: bool = True):
    """(student, teacher, method, optimizer): ResNet32x4 -> ResNet8x4 with KD at the CIFAR recipe, built
    as `run_trial` builds them (project) or plainly (reference: NCHW, for-each SGD)."""
    from trainer.methods import build_method
    from trainer.models import build_model

    torch.manual_seed(0)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (project and cuda) else torch.contiguous_format
    student = build_model("resnet8x4", classes).to(device, memory_format=memory_format)
    teacher = build_model("resnet32x4", classes).to(device, memory_format=memory_format).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    method = build_method("kd", {"alpha": 0.9, "ce_weight": 0.1, "temperature": 4.0}, [1] * classes).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                                fused=True if (project and cuda) else None)
    return student, teacher, method, optimizer
