"""Train one configuration: the only training loop. It reports each epoch through a callback."""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.config import TrialConfig
from trainer.data import build_long_tailed, make_loader
from trainer.evaluate import EvalResult, evaluate
from trainer.methods import METHODS, build_method
from trainer.models import build_model

CHECKPOINT_FILE = "model.pt"


@dataclass
class EpochReport:
    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch (sum of the method's terms)
    lr: float
    eval: EvalResult
    terms: dict[str, float] = field(default_factory=dict)  # mean of each loss term


@dataclass
class TrialResult:
    final: EvalResult  # the result: the last epoch
    best: EvalResult  # the best epoch by acc_all, reported apart and never as the result
    best_epoch: int
    class_counts: list[int]
    train_indices: list[int]
    epochs: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(recipe, epoch: int) -> float:
    """Learning rate for a 0-based epoch: warm-up, then the schedule."""
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        return recipe.lr * (epoch + 1) / recipe.warmup_epochs
    if recipe.lr_schedule == "multistep":
        return recipe.lr * recipe.lr_decay ** sum(epoch >= m for m in recipe.milestones)
    if recipe.lr_schedule == "cosine":
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return recipe.lr


def save_checkpoint(path: str, model: torch.nn.Module, config: TrialConfig, num_classes: int, in_channels: int) -> str:
    os.makedirs(path, exist_ok=True)
    file = os.path.join(path, CHECKPOINT_FILE)
    state = {
        "model": config.model,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
    }
    torch.save(state, file)
    return file


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """A model rebuilt from a checkpoint folder (or file) written by `save_checkpoint`."""
    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    state = torch.load(file, map_location=map_location, weights_only=True)
    model = build_model(state["model"], state["num_classes"], in_channels=state["in_channels"])
    model.load_state_dict(state["state_dict"])
    return model


def run_trial(
    config: TrialConfig,
    report: Callable[[EpochReport], None] | None = None,
    teacher_checkpoint: str | None = None,
    checkpoint_dir: str | None = None,
) -> TrialResult:
    """Train `config.model` for `config.role`; evaluate every epoch; save the final weights if asked."""
    if config.method not in METHODS:
        raise KeyError(f"unknown method {config.method!r}; known: {', '.join(sorted(METHODS))}")
    method_cls = METHODS[config.method]
    if method_cls.NEEDS_TEACHER and teacher_checkpoint is None:
        raise ValueError(f"method {config.method!r} distils from a teacher: pass teacher_checkpoint")
    if config.role == "teacher" and method_cls.NEEDS_TEACHER:
        raise ValueError(f"a teacher is trained without a teacher: method {config.method!r} is not allowed for role teacher")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    autocast = config.recipe.amp and device.type == "cuda"
    data = build_long_tailed(
        config.dataset, config.gamma, root=config.data_root, split_seed=config.split_seed,
        n_max=config.n_max, options=config.dataset_options,
    )
    pin = device.type == "cuda"
    train_loader = make_loader(data.train, config.recipe.batch_size, True, config.seed, config.recipe.num_workers, pin)
    test_loader = make_loader(data.test, max(256, config.recipe.batch_size), False, config.seed, config.recipe.num_workers, pin)

    model = build_model(config.model, data.num_classes, in_channels=data.in_channels).to(device)
    method = build_method(config.method, config.method_params, data.class_counts).to(device)
    teacher = None
    if method_cls.NEEDS_TEACHER:
        teacher = load_checkpoint(teacher_checkpoint, map_location=device).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    sample_x = next(iter(train_loader))[0][:2].to(device)
    method.setup(model, teacher, sample_x)
    method.to(device)
    params = list(model.parameters()) + list(method.parameters())
    optimizer = torch.optim.SGD(params, lr=config.recipe.lr, momentum=config.recipe.momentum, weight_decay=config.recipe.weight_decay)

    best: EvalResult | None = None
    best_epoch = 0
    final: EvalResult | None = None
    for epoch in range(config.recipe.epochs):
        lr = lr_at(config.recipe, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        method.train()
        loss_sum = torch.zeros((), device=device)
        term_sums: dict[str, torch.Tensor] = {}
        seen = 0
        for x, y in train_loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            student_features = teacher_features = teacher_logits = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if method_cls.NEEDS_FEATURES:
                    student_features, student_logits = model.forward_features(x)
                else:
                    student_logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        if method_cls.NEEDS_FEATURES:
                            teacher_features, teacher_logits = teacher.forward_features(x)
                        else:
                            teacher_logits = teacher(x)
                # Logit losses in float32: softmax at temperature T and KL terms lose too much in bf16.
                terms = method.losses(
                    student_logits.float(),
                    None if teacher_logits is None else teacher_logits.float(),
                    y,
                    epoch,
                    student_features=student_features,
                    teacher_features=teacher_features,
                )
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = y.shape[0]
            seen += n
            loss_sum += loss.detach() * n
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, torch.zeros((), device=device)) + v.detach() * n
        final = evaluate(model, test_loader, data.class_counts, device, autocast)
        if best is None or final.acc_all > best.acc_all:
            best, best_epoch = final, epoch + 1
        epoch_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"training loss is {epoch_loss} at epoch {epoch + 1}: lower the lr or the loss weights")
        if report is not None:
            report(EpochReport(epoch + 1, epoch_loss, lr, final, {k: float(v) / max(seen, 1) for k, v in term_sums.items()}))

    assert final is not None and best is not None, "recipe.epochs must be >= 1"
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, model, config, data.num_classes, data.in_channels)
    return TrialResult(final, best, best_epoch, data.class_counts, data.train_indices, config.recipe.epochs)
