"""A distillation step with the teacher's logits gathered from its table against the live teacher:
ResNet32x4 -> ResNet8x4 KD on CIFAR-100-shaped data (the device data path, RandomCrop 32 pad 4 and a
flip: 162 variants per image), images/s of both measured in the same run, and what a table costs.

- live: `trainer.loop._train_epoch` as a trial runs it (the teacher's forward every step);
- table: the same pass, the teacher's logits gathered by (image, offset, flip) from a table
  (`trainer.teacher_logits.TeacherTable`) of the pass's images; its contents are random here (the
  gather's cost does not depend on them);
- build: the teacher's forwards per second as `compute_table` runs them (the pass's images, one
  variant each), and the epochs after which a whole table (162 variants) has paid for itself:
  its build time / (live pass time - table pass time), per image.
Passes are interleaved (live, table, live, ...), best of --repeats, so a load spike hits both.

    PYTHONPATH=. python3 bench/bench_teacher_logits.py [--device cpu|cuda] [--batches 2] [--batch-size 64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_trials import cifar_like, kd_pair, machine, synchronizer  # noqa: E402

from trainer.data import make_loader  # noqa: E402
from trainer.device_batches import DeviceBatches, ImageTensors  # noqa: E402
from trainer.loop import _train_epoch  # noqa: E402
from trainer.teacher_logits import TeacherTable, compute_table, variants_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, default=None, help="batches per pass (default 2 on the CPU, 100 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batches = args.batches or (100 if cuda else 2)
    n = batches * args.batch_size
    print(machine(device))

    loader = make_loader(cifar_like(n), args.batch_size, True, seed=0, device=device, path="device")
    assert isinstance(loader, DeviceBatches)
    variants = variants_of(loader.augmentation, loader.image_hw)
    student, teacher, method, optimizer = kd_pair(device)
    table = TeacherTable(torch.randn(n, len(variants), 100), variants, device, "built")
    sync = synchronizer(device)

    def one_pass(with_table: bool) -> float:
        sync()
        start = time.perf_counter()
        _train_epoch(student, teacher, method, optimizer, loader, 0, device, autocast=cuda, channels_last=cuda,
                     teacher_table=table if with_table else None)
        sync()
        return time.perf_counter() - start

    one_pass(False), one_pass(True)  # warm-up
    live, gathered = float("inf"), float("inf")
    for _ in range(args.repeats):
        live = min(live, one_pass(False))
        gathered = min(gathered, one_pass(True))
    print(f"pass of {n} images (batch {args.batch_size}): live teacher {n / live:.1f} img/s, "
          f"table {n / gathered:.1f} img/s: table / live = {live / gathered:.2f}x")

    # The build's cost per teacher forward: compute_table over the same images without augmentation
    # (one variant each), at its own chunk size, in eval mode.
    plain = DeviceBatches(ImageTensors(loader.images.cpu(), loader.targets.cpu(), tuple(loader.mean.tolist()),
                                       tuple(loader.std.tolist()), None), args.batch_size, False, None, device)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    compute_table(teacher, plain, 100, cuda, memory_format)  # warm-up
    sync()
    start = time.perf_counter()
    compute_table(teacher, plain, 100, cuda, memory_format)
    sync()
    per_forward = (time.perf_counter() - start) / n
    saved_per_image = (live - gathered) / n
    line = (f"build: {1 / per_forward:.1f} teacher forwards/s; a whole table ({len(variants)} variants per image) "
            f"costs {per_forward * len(variants) / (live / n):.1f} live passes")
    if saved_per_image > 0:
        line += f" and has paid for itself after {per_forward * len(variants) / saved_per_image:.1f} epochs of one student"
    print(line)


if __name__ == "__main__":
    main()
