"""A trial's training step (issue 14): ResNet32x4 -> ResNet8x4 KD on CIFAR-100-shaped data, the
project's loop against a reference loop written the usual way, images/s measured in the same run.

- project: `trainer.loop._train_epoch` over the device-resident path (`make_loader(path="device")`),
  with what `run_trial` sets up: on CUDA channels_last, bf16 autocast, fused SGD, the loss summed on
  the device and read once per pass; on the CPU fp32 NCHW (what a trial runs there).
- reference: a DataLoader reading PIL images through the reader's transform (RandomCrop, flip,
  ToTensor, Normalize; `--workers`, default 0 on the CPU and 4 on CUDA), fp32, NCHW, for-each SGD,
  `loss.item()` every step.
Both train the same models (same initial weights) on the same images, --batches batches of
--batch-size per pass, best of --repeats passes each, interleaved (reference, project, reference, ...)
so a load spike from another process hits both. Target on a GPU: project >= 5x reference.

    PYTHONPATH=. python3 bench/bench_step.py [--device cpu|cuda] [--batches 2] [--batch-size 64] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_trials import cifar_like, kd_pair, machine, project_kd_epoch, reference_kd_epoch, synchronizer  # noqa: E402

from trainer.data import make_loader  # noqa: E402

TARGET_GPU = 5.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, default=None, help="batches per pass (default 2 on the CPU, 100 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default 0 on the CPU, 4 on CUDA)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batches = args.batches or (100 if cuda else 2)
    workers = args.workers if args.workers is not None else (4 if cuda else 0)
    print(machine(device))
    n = batches * args.batch_size
    dataset = cifar_like(n)
    sync = synchronizer(device)

    ref_student, ref_teacher, _, ref_opt = kd_pair(device, project=False)
    student, teacher, method, optimizer = kd_pair(device, project=True)
    ref_loader = make_loader(dataset, args.batch_size, True, 0, num_workers=workers, pin_memory=cuda, path="loader")
    loader = make_loader(dataset, args.batch_size, True, 0, device=device, path="device")

    runs = {
        "reference": lambda: reference_kd_epoch(ref_student, ref_teacher, ref_loader, ref_opt, device),
        "project": lambda: project_kd_epoch(student, teacher, method, loader, optimizer, device),
    }
    for fn in runs.values():  # warm-up: cuDNN autotuning, allocator, worker start
        fn()
    sync()
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            images = fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - t) / images)
    print(f"ResNet32x4 -> ResNet8x4 KD, {batches} batches of {args.batch_size} per pass, best of {args.repeats}")
    ref = "reference (DataLoader + PIL, fp32, NCHW" + (f", {workers} workers)" if workers else ")")
    print(f"{ref:<48} {1 / best['reference']:9.1f} images/s")
    project = "project (device path" + (", channels_last, bf16, fused SGD)" if cuda else ", fp32)")
    print(f"{project:<48} {1 / best['project']:9.1f} images/s")
    ratio = best["reference"] / best["project"]
    target = f" (target on a GPU >= {TARGET_GPU:g}x)" if cuda else " (the GPU target, >= 5x, needs a GPU: none measured here)"
    print(f"project / reference: {ratio:.2f}x{target}")


if __name__ == "__main__":
    main()
