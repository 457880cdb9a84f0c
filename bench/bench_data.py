"""Data path speed (issue 14): augmented CIFAR batches per second, the device-resident path against
the DataLoader + PIL path, both measured in the same run on the same images.

The set: CIFAR-100-LT's size at γ = 100 (10,847 images, 32x32 RGB, random pixels) in torchvision's
CIFAR-100 class with the reader's transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize), as `trainer.datasets.cifar` builds it. Each path serves whole epochs of
batches of 128 (x float32 on the device, y), best of --repeats epochs:
- loader: `make_loader(path="loader")`, a DataLoader reading every image through PIL and the
  transform; `--workers 0` (default) runs it in the calling thread;
- device: `make_loader(path="device")`, the set held as one uint8 tensor on the device, crops,
  flips and normalisation batched there.
On the CPU both run on one thread (issue 14's comparison; target: device >= 5x loader). On CUDA
the loader's batches are copied to the GPU too, as a trial's are.

    PYTHONPATH=. python3 bench/bench_data.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--workers 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_trials import LT_IMAGES, best_of, cifar_like, machine, synchronizer  # noqa: E402

from trainer.data import make_loader  # noqa: E402

TARGET = 5.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the loader path")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine(device))
    dataset = cifar_like(LT_IMAGES)
    sync = synchronizer(device)
    pin = device.type == "cuda"

    def epoch_of(loader):
        def run():
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
        return run

    loader = make_loader(dataset, args.batch_size, True, 0, num_workers=args.workers, pin_memory=pin, path="loader")
    on_device = make_loader(dataset, args.batch_size, True, 0, device=device, path="device")
    t_loader = best_of(epoch_of(loader), args.repeats, sync)
    t_device = best_of(epoch_of(on_device), args.repeats, sync)
    print(f"{LT_IMAGES} images per epoch, batch {args.batch_size}, best of {args.repeats} epochs")
    print(f"{'path':<36} {'s/epoch':>9} {'images/s':>10}")
    print(f"{'loader (DataLoader + PIL, ' + str(args.workers) + ' workers)':<36} {t_loader:9.3f} {LT_IMAGES / t_loader:10.0f}")
    print(f"{'device (' + str(device) + ')':<36} {t_device:9.3f} {LT_IMAGES / t_device:10.0f}")
    ratio = t_loader / t_device
    print(f"device / loader: {ratio:.1f}x (target >= {TARGET:g}x){'' if ratio >= TARGET else '  (below target)'}")


if __name__ == "__main__":
    main()
