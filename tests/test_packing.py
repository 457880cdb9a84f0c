"""Packed trials (issue 14): how many trials of a size a node holds under Ray's rules, the GPU memory
budget that keeps packed trials from running each other out of memory, and the sweep's line. No Ray
is started: the node lists are given, CUDA is stood in for where a test needs it."""
from __future__ import annotations

import io
import types

import pytest
import torch

from orchestrator.execution import packing
from orchestrator.execution.packing import CONTEXT_GIB, cap_gpu_memory, memory_fraction, packing_lines, trials_per_node


@pytest.mark.parametrize("cpu,gpu,node_cpu,node_gpu,trials,limit", [
    (1, 0.25, 16, 1, 4, "GPU"),  # four quarter-GPU trials on one GPU
    (1, 0.25, 2, 1, 2, "CPU"),  # ... unless the CPUs run out first
    (1, 0.25, 16, 2, 8, "GPU"),
    (1, 0.4, 16, 2, 4, "GPU"),  # 2 per GPU (0.8 of each), never 5 across the two GPUs
    (1, 0.4, 16, 1.5, 2, "GPU"),  # a partial GPU on the node holds no fractional trial of its own
    (1, 1 / 3, 16, 1, 3, "GPU"),  # thirds: float rounding does not lose the third trial
    (2, 1, 16, 4, 4, "GPU"),
    (1, 2, 16, 4, 2, "GPU"),
    (4, 1, 8, 4, 2, "CPU"),
    (1, 0, 2, 0, 2, "CPU"),  # CPU trials
    (0.5, 0, 2, 0, 4, "CPU"),
    (1, 0.5, 16, 0, 0, "GPU"),  # a GPU trial on a CPU node: none
])
def test_trials_per_node_follows_rays_rules(cpu, gpu, node_cpu, node_gpu, trials, limit):
    fit = trials_per_node(cpu, gpu, node_cpu, node_gpu)
    assert fit.trials == trials and fit.limit == limit


@pytest.mark.parametrize("per_gpu", [2, 3, 4, 8])
@pytest.mark.parametrize("gpu_gib", [16.0, 40.0, 80.0, 141.0])
def test_packed_budgets_and_contexts_fit_the_gpu(per_gpu, gpu_gib):
    """k trials of 1/k GPU: k allocator caps plus k CUDA contexts stay within the GPU's memory."""
    fraction = memory_fraction(1 / per_gpu, gpu_gib)
    assert 0 < fraction < 1 / per_gpu
    assert per_gpu * (fraction * gpu_gib + CONTEXT_GIB) <= gpu_gib + 1e-9


def test_whole_gpus_and_cpu_trials_get_no_cap():
    assert memory_fraction(1) is None and memory_fraction(2) is None and memory_fraction(0) is None
    assert memory_fraction(0.25) == 0.25  # GPU size unknown (the plan's line): the share itself


def test_cap_gpu_memory_sets_the_share_on_the_worker(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert cap_gpu_memory(0.25) == pytest.approx(0.25 - CONTEXT_GIB / 80)
    assert calls == [(pytest.approx(0.25 - CONTEXT_GIB / 80), 0)]
    assert cap_gpu_memory(1) is None and cap_gpu_memory(0) is None and len(calls) == 1


def test_cap_gpu_memory_without_cuda_does_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cap_gpu_memory(0.25) is None


def test_packing_lines_name_the_fit_the_limit_and_the_budget():
    lines = packing_lines([{"cpu": 16, "gpu": 1}], cpu=1, gpu=0.25)
    assert lines[0] == ("packing: 4 trials at once per node of 16 CPU / 1 GPU "
                        "(CPU allows 16, GPU 4 at 0.25 GPU each; limited by GPU)")
    assert lines[1].startswith("packing: each trial's CUDA memory is capped at its share, 25% of its GPU")
    cluster = packing_lines([{"cpu": 16, "gpu": 2}, {"cpu": 16, "gpu": 2}, {"cpu": 8, "gpu": 0}], cpu=2, gpu=0.5)
    assert cluster[0].startswith("packing: 4 trials at once per node of 16 CPU / 2 GPU (x2 nodes)")
    assert cluster[1].startswith("packing: 0 trials at once per node of 8 CPU / 0 GPU")
    assert cluster[2] == "packing: 8 trials at once on the cluster"
    assert packing_lines([{"cpu": 2, "gpu": 0}], cpu=1, gpu=0) == [
        "packing: 2 trials at once per node of 2 CPU / 0 GPU (CPU allows 2; limited by CPU)"]


def test_cluster_slots_and_the_sweeps_line_use_the_same_plan(monkeypatch):
    from orchestrator.commands import session
    from orchestrator.execution import cluster

    nodes = [{"cpu": 16.0, "gpu": 2.0}, {"cpu": 4.0, "gpu": 1.0}]
    monkeypatch.setattr(cluster, "largest_nodes", lambda: nodes)
    assert cluster.cluster_slots(1, 0.4) == 4 + 2  # per GPU, not floor(GPU / 0.4)
    assert cluster.cluster_slots(1, 0.25) == 8 + 4
    monkeypatch.setattr(cluster, "init_ray", lambda address: None)
    out = io.StringIO()
    session.start_ray(None, 1, 0.25, 0.0, out)
    assert out.getvalue().splitlines()[:3] == [
        "packing: 8 trials at once per node of 16 CPU / 2 GPU (CPU allows 16, GPU 8 at 0.25 GPU each; limited by GPU)",
        "packing: 4 trials at once per node of 4 CPU / 1 GPU (CPU allows 4, GPU 4 at 0.25 GPU each; limited by GPU)",
        "packing: 12 trials at once on the cluster",
    ]
    assert packing.CONTEXT_GIB > 0
