"""Packed trials (issue 14): aggregate training images/s of 1, 2 and 4 small trials running at once on
one machine, each in its own process as Ray runs packed trials, measured in the same run.

Each trial trains a ResNet8x4 student with KD from a ResNet32x4 teacher (a CIFAR-100 pair of the
paper's tables) through the project's loop on the device-resident path, on CIFAR-100-shaped data.
The trials start together (a barrier after their warm-up) and train for --seconds; the aggregate is
the images all of them trained divided by the longest one's time. On CUDA, k packed trials each cap
their CUDA memory at a 1/k share (`orchestrator.execution.packing.cap_gpu_memory`, what a trial with
`resources.gpu: 1/k` does) and each takes one CPU thread; on the CPU each takes one thread.

    PYTHONPATH=. python3 bench/bench_packing.py [--device cpu|cuda] [--seconds 20] [--trials 1 2 4]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_trials import cifar_like, kd_pair, machine, project_kd_epoch, synchronizer  # noqa: E402


def _trial(device_name: str, share: float, seconds: float, batch_size: int, batches: int, barrier, results, slot: int) -> None:
    torch.set_num_threads(1)
    device = torch.device(device_name)
    if device.type == "cuda" and share < 1:
        from orchestrator.execution.packing import cap_gpu_memory

        cap_gpu_memory(share)
    from trainer.data import make_loader

    loader = make_loader(cifar_like(batch_size * batches, seed=slot), batch_size, True, slot, device=device, path="device")
    student, teacher, method, optimizer = kd_pair(device, project=True)
    sync = synchronizer(device)
    project_kd_epoch(student, teacher, method, loader, optimizer, device)  # warm-up
    sync()
    barrier.wait()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        images += project_kd_epoch(student, teacher, method, loader, optimizer, device)
        sync()
    results[slot] = (images, time.perf_counter() - start)


def run_packed(k: int, args) -> tuple[float, float]:
    """(aggregate images/s, per-trial images/s) of k trials at once."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    results = ctx.Manager().dict()
    procs = [ctx.Process(target=_trial, args=(args.device, 1 / k, args.seconds, args.batch_size, args.batches, barrier, results, i))
             for i in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if len(results) != k or any(p.exitcode for p in procs):
        raise RuntimeError(f"{k} packed trials: {k - len(results)} failed (exit codes {[p.exitcode for p in procs]})")
    images = sum(r[0] for r in results.values())
    longest = max(r[1] for r in results.values())
    return images / longest, images / longest / k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=None, help="training time per setting (default 20 on the CPU, 30 on CUDA)")
    ap.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=None, help="batches per pass (default 1 on the CPU, 50 on CUDA)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.seconds = args.seconds or (30.0 if cuda else 20.0)
    args.batches = args.batches or (50 if cuda else 1)
    torch.set_num_threads(1)
    print(machine(torch.device(args.device)))
    print(f"ResNet32x4 -> ResNet8x4 KD trials, batch {args.batch_size}, {args.seconds:g} s each setting, one CPU thread per trial"
          + (", CUDA memory capped at 1/k per trial" if cuda else ""))
    print(f"{'trials at once':>14} {'aggregate img/s':>16} {'per trial':>10} {'vs 1 trial':>11}")
    base = None
    for k in args.trials:
        total, each = run_packed(k, args)
        base = base or total
        print(f"{k:>14} {total:16.1f} {each:10.1f} {total / base:10.2f}x")


if __name__ == "__main__":
    main()
