"""Packed trials: how many trials of a study's size run at once on a node, and the GPU memory each may take.

Small trials (a ResNet-8x4 student at batch 64) use a fraction of a modern GPU, so a study packs
them: `resources: {gpu: 0.25}` asks Ray for a quarter GPU per trial, and four trials share each
GPU. Ray only counts; nothing stops one of them from filling the GPU's memory and failing the other
three. So each trial's worker caps its CUDA allocator at its share of the GPU (`cap_gpu_memory`),
less the memory its CUDA context takes outside the allocator, and packed trials cannot run each
other out of memory: one that needs more fails alone, with CUDA's out-of-memory error.

Ray's rules, which `trials_per_node` follows: a request below one GPU is served by a single GPU (a
trial never spans two), so a node holds floor(1 / gpu) such trials per GPU; a request of one GPU or
more must be whole and takes that many GPUs; CPUs are a pool shared by the node's trials.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from orchestrator.words import count

_EPS = 1e-9
# GiB a CUDA context holds outside the caching allocator (kernels, cuBLAS/cuDNN workspaces): taken
# off each packed trial's share so that the shares and the contexts together fit the GPU.
CONTEXT_GIB = 0.75


@dataclass(frozen=True)
class NodeFit:
    """How many trials of one size a node holds, and what limits it."""

    trials: int
    by_cpu: int
    by_gpu: int | None  # None: the trials ask for no GPU

    @property
    def limit(self) -> str:
        if self.by_gpu is not None and self.by_gpu <= self.by_cpu:
            return "GPU"
        return "CPU"


def trials_per_node(cpu: float, gpu: float, node_cpu: float, node_gpu: float) -> NodeFit:
    """Trials of `cpu` CPUs and `gpu` GPUs each that run at once on a node of `node_cpu` / `node_gpu`."""
    by_cpu = math.floor(node_cpu / cpu + _EPS) if cpu > 0 else 10**6
    if gpu <= 0:
        return NodeFit(by_cpu, by_cpu, None)
    if gpu < 1:
        by_gpu = math.floor(1 / gpu + _EPS) * math.floor(node_gpu + _EPS)  # per whole GPU, never across two
    else:
        by_gpu = math.floor(node_gpu / gpu + _EPS)
    return NodeFit(min(by_cpu, by_gpu), by_cpu, by_gpu)


def memory_fraction(gpu: float, gpu_memory_gib: float | None = None) -> float | None:
    """The share of its GPU's memory a trial asking for `gpu` GPUs may allocate: None for whole GPUs
    (nothing shares them) and for CPU trials; else its share less a CUDA context (when the GPU's
    memory is known), never below a tenth of the share."""
    if not 0 < gpu < 1:
        return None
    if gpu_memory_gib is None or gpu_memory_gib <= 0:
        return gpu
    return max(gpu / 10, gpu - CONTEXT_GIB / gpu_memory_gib)


def packing_lines(nodes: list[dict[str, float]], cpu: float, gpu: float) -> list[str]:
    """What the sweep prints before it starts: per kind of node, how many trials of the study's size
    run at once and what limits them, the total, and each trial's GPU memory budget."""
    if not nodes:
        return []
    kinds = Counter((n["cpu"], n["gpu"]) for n in nodes)
    lines, total = [], 0
    for (node_cpu, node_gpu), nodes in sorted(kinds.items(), key=lambda kv: (-kv[0][1], -kv[0][0])):
        fit = trials_per_node(cpu, gpu, node_cpu, node_gpu)
        total += fit.trials * nodes
        why = f"CPU allows {fit.by_cpu}" + (f", GPU {fit.by_gpu} at {gpu:g} GPU each" if fit.by_gpu is not None else "")
        times = f" (x{nodes} nodes)" if nodes > 1 else ""
        lines.append(f"packing: {count(fit.trials, 'trial')} at once per node of "
                     f"{node_cpu:g} CPU / {node_gpu:g} GPU{times} ({why}; limited by {fit.limit})")
    if len(kinds) > 1 or next(iter(kinds.values())) > 1:
        lines.append(f"packing: {count(total, 'trial')} at once on the cluster")
    fraction = memory_fraction(gpu)
    if fraction is not None:
        lines.append(f"packing: each trial's CUDA memory is capped at its share, {fraction:.0%} of its GPU "
                     f"less {CONTEXT_GIB:g} GiB for its CUDA context")
    return lines


def cap_gpu_memory(gpu: float) -> float | None:
    """In a trial's worker: cap the CUDA caching allocator of this process at the trial's share of the
    GPU Ray gave it (`memory_fraction`). Returns the fraction set, or None (no CUDA, or a whole GPU)."""
    import torch

    if not torch.cuda.is_available() or not 0 < gpu < 1:
        return None
    device = torch.cuda.current_device()
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = memory_fraction(gpu, total_gib)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
