"""Loss speed: ltkd_loss against kd_loss (the reference, measured in the same run), forward + backward.

Prints, for each shape and n(G), the time per call and the ratio to kd_loss on the same logits, and
the ratio to a per-group Python loop (what a straightforward implementation does). Runs on CUDA
when present (the path users run), else on the CPU. Run from the source tree, no install needed:

    PYTHONPATH=. python3 bench/bench_losses.py [--device cuda|cpu] [--repeats 50]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from trainer.groups import partition_groups
from trainer.losses import kd_loss, ltkd_loss


def looped_ltkd(zs, zt, groups, n_groups, alpha=1.0, beta=1.0, T=4.0):
    """Reference: the same loss with a Python loop over groups (not used by the project)."""
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    pgs = torch.stack([ps[:, groups == g].sum(1) for g in range(n_groups)], 1)
    pgt = torch.stack([pt[:, groups == g].sum(1) for g in range(n_groups)], 1)
    pb = pgt.mean(0)
    q = pgt * (pb.mean() / pb)
    q = q / q.sum(1, keepdim=True)
    cross = (q * (q.clamp_min(1e-30).log() - pgs.clamp_min(1e-30).log())).sum(1)
    within = 0
    for g in range(n_groups):
        m = groups == g
        a = F.log_softmax(zt[:, m] / T, 1)
        b = F.log_softmax(zs[:, m] / T, 1)
        within = within + (a.exp() * (a - b)).sum(1)
    return (alpha * cross + beta * within).mean() * T * T


def timed(fn, device, repeats):
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; best of {args.repeats}, forward + backward")
    print(f"{'B':>5} {'C':>5} {'n(G)':>5} {'kd ms':>8} {'ltkd ms':>8} {'ltkd/kd':>8} {'loop ms':>9} {'loop/ltkd':>10}")
    for batch, classes in ((64, 100), (512, 1000)):
        g = torch.Generator().manual_seed(0)
        zs0 = torch.randn(batch, classes, generator=g).to(device)
        zt = torch.randn(batch, classes, generator=g).to(device)
        counts = sorted(torch.randint(5, 500, (classes,), generator=g).tolist(), reverse=True)

        def run_kd():
            zs = zs0.clone().requires_grad_(True)
            kd_loss(zs, zt).backward()

        t_kd = timed(run_kd, device, args.repeats)
        for n_groups in (3, 10, 100):
            groups = partition_groups(counts, n_groups).to(device)

            def run_ltkd():
                zs = zs0.clone().requires_grad_(True)
                ltkd_loss(zs, zt, groups, num_groups=n_groups).backward()

            def run_loop():
                zs = zs0.clone().requires_grad_(True)
                looped_ltkd(zs, zt, groups, n_groups).backward()

            t_ltkd = timed(run_ltkd, device, args.repeats)
            t_loop = timed(run_loop, device, max(3, args.repeats // 5))
            print(f"{batch:>5} {classes:>5} {n_groups:>5} {t_kd * 1e3:8.3f} {t_ltkd * 1e3:8.3f} {t_ltkd / t_kd:8.2f} "
                  f"{t_loop * 1e3:9.3f} {t_loop / t_ltkd:10.1f}")


if __name__ == "__main__":
    main()
