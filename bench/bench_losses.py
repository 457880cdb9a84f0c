"""Loss speed: ltkd_loss against kd_loss (the reference, measured in the same run), forward + backward.

Prints, for each shape and n(G), the time per call and the ratio to kd_loss on the same logits
(issue 14's targets: at most 3x at B 64, C 100 and at most 8x at B 512, C 1000), the ratio of the
scatter form (the group sums as scatter_add / scatter_reduce, how the loss was computed before the
padded group layout, still its fallback) and of a per-group Python loop (what a straightforward
implementation does). ltkd_loss is called as a method calls it: with the group layout built once.
The calls are interleaved (kd, ltkd, scatter, kd, ...) and each keeps its best time, so a load
spike from another process hits them alike. Runs on CUDA when present (the path users run), else on
the CPU with one thread unless --threads says otherwise. From the source tree, no install needed:

    PYTHONPATH=. python3 bench/bench_losses.py [--device cuda|cpu] [--repeats 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from trainer.groups import partition_groups
from trainer.losses import _decompose, group_layout, kd_loss, ltkd_loss

TARGETS = {(64, 100): 3.0, (512, 1000): 8.0}  # ltkd / kd at most (issue 14)


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


def scatter_ltkd(zs, zt, groups, n_groups, T=4.0):
    """The same loss through the scatter form of the group sums (the layout-free fallback)."""
    d = _decompose(zs, zt, groups, T, True, n_groups, layout=None)
    return (d.cross + d.within.sum(1)).mean() * T * T


def interleaved_best(fns: dict, device, repeats: int) -> dict:
    """Best time of each function, the functions run in turn within every repeat."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(3):
            fn()
    sync()
    best = {name: float("inf") for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if name == "loop" and r % 5:  # the loop is slow at n(G) = 100: every fifth repeat
                continue
            t = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        name = f"CPU ({torch.get_num_threads()} thread(s), {os.cpu_count()} cores); no GPU used"
    else:
        name = torch.cuda.get_device_name(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: {name}; torch {torch.__version__}; load average {load:.2f}; best of {args.repeats}, forward + backward")
    print(f"{'B':>5} {'C':>5} {'n(G)':>5} {'kd ms':>8} {'ltkd ms':>8} {'ltkd/kd':>8} {'target':>7} "
          f"{'scatter/kd':>10} {'loop ms':>9} {'loop/ltkd':>10}")
    for batch, classes in ((64, 100), (512, 1000)):
        g = torch.Generator().manual_seed(0)
        zs0 = torch.randn(batch, classes, generator=g).to(device)
        zt = torch.randn(batch, classes, generator=g).to(device)
        counts = sorted(torch.randint(5, 500, (classes,), generator=g).tolist(), reverse=True)
        for n_groups in (3, 10, 100):
            groups = partition_groups(counts, n_groups).to(device)
            layout = group_layout(groups, n_groups).to(device)

            def backward(loss_fn):
                def run():
                    zs = zs0.clone().requires_grad_(True)
                    loss_fn(zs).backward()
                return run

            best = interleaved_best({
                "kd": backward(lambda zs: kd_loss(zs, zt)),
                "ltkd": backward(lambda zs: ltkd_loss(zs, zt, groups, layout=layout)),
                "scatter": backward(lambda zs: scatter_ltkd(zs, zt, groups, n_groups)),
                "loop": backward(lambda zs: looped_ltkd(zs, zt, groups, n_groups)),
            }, device, args.repeats)
            ratio = best["ltkd"] / best["kd"]
            target = TARGETS[(batch, classes)]
            print(f"{batch:>5} {classes:>5} {n_groups:>5} {best['kd'] * 1e3:8.3f} {best['ltkd'] * 1e3:8.3f} {ratio:8.2f} "
                  f"{'<=' + format(target, 'g'):>7} {best['scatter'] / best['kd']:10.2f} {best['loop'] * 1e3:9.3f} "
                  f"{best['loop'] / best['ltkd']:10.1f}{'' if ratio <= target else '  (above target)'}")


if __name__ == "__main__":
    main()
