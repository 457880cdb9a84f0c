"""Train one configuration: the only training loop. It reports each epoch through a callback."""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from trainer.config import TrialConfig
from trainer.data import LongTailedData, build_long_tailed, make_loader, without_augmentation
from trainer.datasets import data_path_of
from trainer.device_batches import DeviceBatches
from trainer.evaluate import EvalResult, evaluate, group_probability
from trainer.files import write_atomically
from trainer.methods import IDENTITY_NEUTRAL, METHODS, build_method
from trainer.methods.base import Method
from trainer.models import build_model
from trainer.teacher_logits import TeacherTable, cached_table, fits_in_memory, has_cached_table, table_bytes, variants_of

CHECKPOINT_FILE = "model.pt"
RESUME_FILE = "state.pt"  # in run_trial's resume_dir: everything needed to continue a stopped trial


@dataclass
class EpochReport:
    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch (sum of the method's terms)
    lr: float
    eval: EvalResult | None  # None on epochs that recipe.eval_every skips
    terms: dict[str, float] = field(default_factory=dict)  # mean of each loss term


@dataclass
class TrialResult:
    final: EvalResult  # the result: the last epoch
    best: EvalResult  # the best epoch by acc_all, reported apart and never as the result
    best_epoch: int
    class_counts: list[int]
    train_indices: list[int]
    epochs: int
    # Mean softmax mass (percent) on head / medium / tail of the final model, on the balanced
    # evaluation set ("test", or "val" for a search trial) and on the long-tailed training set ("train").
    group_probability: dict[str, dict[str, float]] = field(default_factory=dict)
    # What `final` and `best` were measured on: "test", or "val" (the balanced validation set of a
    # search trial, `TrialConfig.validation_per_class`; such a trial never reads the test set).
    evaluated_on: str = "test"
    validation_indices: list[int] | None = None  # the held-out images of the full training set (a search trial)
    # Where the teacher's logits came from: "live" (its forward pass), or its table "table:built" / "table:read".
    teacher_logits: str = "live"


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


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", expected_model: str | None = None) -> torch.nn.Module:
    """A model rebuilt from a checkpoint folder (or file) written by `save_checkpoint`.

    expected_model: the architecture the caller needs (a distillation trial's teacher); a
    checkpoint of another model is refused rather than silently distilled from."""
    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    state = torch.load(file, map_location=map_location, weights_only=True)
    if expected_model is not None and state["model"] != expected_model:
        raise ValueError(f"{file} holds a {state['model']!r} model, this trial's teacher is {expected_model!r}")
    model = build_model(state["model"], state["num_classes"], in_channels=state["in_channels"])
    model.load_state_dict(state["state_dict"])
    return model


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{name}: absent in the saved state, {current[key]!r} here")
            elif key not in current:
                out.append(f"{name}: {stored[key]!r} in the saved state, absent here")
            else:
                out.extend(_differences(stored[key], current[key], name))
        return out
    return [] if stored == current else [f"{prefix}: {stored!r} in the saved state, {current!r} here"]


def _rng_states(train_loader) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}},
        "loader": train_loader.generator.get_state(),  # the train loader's shuffle stream
        **({"augment": augment.get_state()} if (augment := _augment_generator(train_loader)) is not None else {}),
    }


def _augment_generator(train_loader) -> torch.Generator | None:
    """The device path's augmentation stream (crop offsets and flips), None on the other paths."""
    return getattr(train_loader, "augment_generator", None)


def _set_rng_states(states: dict[str, Any], train_loader) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(states["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    train_loader.generator.set_state(states["loader"])
    augment = _augment_generator(train_loader)
    if augment is not None:
        if "augment" not in states:
            raise ValueError("the saved state has no augmentation stream, this trial draws its augmentation on the device path")
        augment.set_state(states["augment"])


def _report_to_dict(report: EpochReport) -> dict[str, Any]:
    """An epoch report as plain values for the resume state (per-class accuracy left out: reports
    carry the group accuracies; the per-class result is the final and best epochs')."""
    out = asdict(report)
    if out["eval"] is not None:
        out["eval"]["per_class"] = []
    return out


def _report_from_dict(item: dict[str, Any]) -> EpochReport:
    item = dict(item)
    item["eval"] = EvalResult(**item["eval"]) if item["eval"] is not None else None
    return EpochReport(**item)


def _write_resume_state(resume_dir: str, state: dict[str, Any]) -> None:
    """Write `resume_dir/state.pt` atomically (a reader finds the previous state or this one, whole)."""
    write_atomically(os.path.join(resume_dir, RESUME_FILE), lambda f: torch.save(state, f))


def _stored_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A saved state's identity as `TrialConfig.identity` writes it today: states written before the
    identity was defined once kept identity-neutral hyperparameters (`ce: standard`) in it."""
    stored = dict(stored)
    if isinstance(stored.get("method_params"), dict):
        stored["method_params"] = {k: v for k, v in stored["method_params"].items()
                                   if not (k in IDENTITY_NEUTRAL and v == IDENTITY_NEUTRAL[k])}
    return stored


def _read_resume_state(resume_dir: str, config: TrialConfig) -> dict[str, Any] | None:
    """The saved state of this trial, or None when there is none; ValueError when it is another trial's."""
    file = os.path.join(resume_dir, RESUME_FILE)
    if not os.path.isfile(file):
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    diffs = _differences(_stored_identity(state["config"]), config.identity())
    if diffs:
        raise ValueError(f"{file} belongs to another trial config, not resuming it: " + "; ".join(diffs))
    if not 1 <= state["epoch"] <= config.recipe.epochs:
        raise ValueError(f"{file}: saved epoch {state['epoch']} is outside 1..{config.recipe.epochs}")
    return state


@dataclass
class _Progress:
    """Where a trial stands: the epochs done, the evaluation results so far and the epoch reports."""

    start_epoch: int = 0
    final: EvalResult | None = None
    best: EvalResult | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # kept in the resume state


@dataclass
class _Trial:
    """One trial's parts, built on its device: the data and its loaders, the models, the method and
    the optimizer."""

    config: TrialConfig
    device: torch.device
    data: LongTailedData
    train_loader: Any
    eval_loader: Any
    eval_path: str  # the data path of the passes that draw nothing
    evaluated_on: str  # "test", or "val" for a search trial
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    teacher_table: TeacherTable | None = None  # the teacher's logits by (image, crop offset, flip)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _restore(saved: dict[str, Any], trial: _Trial, saved_report: Callable[[EpochReport], None] | None) -> _Progress:
    """Put a saved state back into the freshly built trial and hand its reports to `saved_report`."""
    model, method, optimizer, train_loader = trial.model, trial.method, trial.optimizer, trial.train_loader
    model.load_state_dict(saved["model"])
    method.load_state_dict(saved["method"])
    # How the update is run (fused on CUDA, per tensor on the CPU) is this device's choice, not the
    # saved one's: load_state_dict would take the saved groups' flags along with their hyperparameters.
    kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved["optimizer"])
    for group, flags in zip(optimizer.param_groups, kernels):
        group.update(flags)
    progress = _Progress(
        start_epoch=saved["epoch"],
        final=EvalResult(**saved["final"]) if saved["final"] is not None else None,
        best=EvalResult(**saved["best"]) if saved["best"] is not None else None,
        best_epoch=saved["best_epoch"],
        history=list(saved.get("reports", [])),
    )
    _set_rng_states(saved["rng"], train_loader)  # last: the set-up above drew from the same streams
    if saved_report is not None:
        for item in progress.history:
            saved_report(_report_from_dict(item))
    return progress


def _forward(model, teacher, method, x, y, epoch: int, autocast: bool,
             teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One batch through the method's forward (student, teacher, losses) under the trial's autocast."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        return method.forward_train(model, teacher, x, y, epoch, teacher_logits=teacher_logits)


def _train_epoch(model, teacher, method, optimizer, train_loader, epoch: int, device, autocast: bool,
                 channels_last: bool = False, teacher_table: TeacherTable | None = None) -> tuple[float, dict[str, float]]:
    """One pass over the training set: the mean loss and the mean of each loss term. With a
    `teacher_table`, each batch's teacher logits are its rows (the batch's images and draws).

    Nothing in the pass waits for the device: the loss and its terms are summed on it and read once,
    at the end (the device path's batches are already there; the loader's are copied asynchronously)."""
    model.train()
    method.train()
    loss_sum = torch.zeros((), device=device)
    term_sums: dict[str, torch.Tensor] = {}
    seen = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = train_loader.keyed() if teacher_table is not None else ((x, y, None, None) for x, y in train_loader)
    for x, y, index, draws in batches:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        teacher_logits = teacher_table.logits(index, draws) if teacher_table is not None else None
        terms = _forward(model, teacher, method, x, y, epoch, autocast, teacher_logits)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        seen += n
        loss_sum += loss.detach() * n
        for k, v in terms.items():
            term_sums[k] = term_sums.get(k, torch.zeros((), device=device)) + v.detach() * n
    return float(loss_sum) / max(seen, 1), {k: float(v) / max(seen, 1) for k, v in term_sums.items()}


def _check(config: TrialConfig, teacher_checkpoint: str | None) -> None:
    if config.recipe.checkpoint_every < 0:
        raise ValueError(f"recipe.checkpoint_every must be >= 0, got {config.recipe.checkpoint_every}")
    if config.method not in METHODS:
        raise KeyError(f"unknown method {config.method!r}; known: {', '.join(sorted(METHODS))}")
    spec = METHODS[config.method]
    if spec.needs_teacher and teacher_checkpoint is None:
        raise ValueError(f"method {config.method!r} distils from a teacher: pass teacher_checkpoint")
    if config.role == "teacher" and spec.needs_teacher:
        raise ValueError(f"a teacher is trained without a teacher: method {config.method!r} is not allowed for role teacher")


def _build(config: TrialConfig, teacher_checkpoint: str | None, teacher_logits_dir: str | None = None) -> _Trial:
    """Data, loaders, models, method and optimizer, in the order in which they draw from the seeded
    streams (a resumed trial is built the same way before its state is put back)."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    # channels_last on CUDA: cuDNN's bf16 convolutions run on tensor cores in NHWC without transposes.
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    data = build_long_tailed(
        config.dataset, config.gamma, root=config.data_root, split_seed=config.split_seed,
        n_max=config.n_max, options=config.dataset_options, validation_per_class=config.validation_per_class,
    )
    # The device-resident path for in-memory sets (trainer.device_batches), a DataLoader for folders;
    # passes that draw nothing (evaluation) take the device path wherever it can read the set.
    data_path = data_path_of(config.dataset, config.recipe.data_path)
    eval_path = "auto" if data_path == "device" else "loader"
    train_loader = make_loader(data.train, config.recipe.batch_size, True, config.seed, config.recipe.num_workers, cuda,
                               device=device, path=data_path)
    # A search trial evaluates on its validation set and never builds a loader over the test set.
    evaluated_on = "val" if config.validation_per_class else "test"
    eval_set = data.validation if evaluated_on == "val" else data.test
    eval_loader = make_loader(eval_set, max(256, config.recipe.batch_size), False, config.seed, config.recipe.num_workers, cuda,
                              device=device, path=eval_path)

    model = build_model(config.model, data.num_classes, in_channels=data.in_channels).to(device, memory_format=memory_format)
    method = build_method(config.method, config.method_params, data.class_counts).to(device)
    teacher = None
    if METHODS[config.method].needs_teacher:
        teacher = load_checkpoint(teacher_checkpoint, map_location=device, expected_model=config.teacher).to(
            device, memory_format=memory_format).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    sample_x = next(iter(train_loader))[0][:2].to(device)
    method.setup(model, teacher, sample_x)
    method.to(device)
    params = list(model.parameters()) + list(method.parameters())
    # On CUDA: one fused kernel for the whole update (PyTorch's fused SGD); on the CPU the reference
    # per-tensor update, which keeps CPU runs bit-identical to the runs before it.
    optimizer = torch.optim.SGD(params, lr=config.recipe.lr, momentum=config.recipe.momentum, weight_decay=config.recipe.weight_decay,
                                fused=True if cuda else None)
    if config.recipe.compile:
        model.compile()  # in place: the state_dict keeps its keys (no `_orig_mod.` prefix)
    table = None
    if teacher is not None:  # draws from no seeded stream
        table = _teacher_table(config, teacher_checkpoint, teacher_logits_dir, teacher, method, train_loader,
                               data.num_classes, device, config.recipe.amp and cuda, memory_format)
    return _Trial(config, device, data, train_loader, eval_loader, eval_path, evaluated_on, model, teacher, method, optimizer,
                  table)


def _teacher_table(config: TrialConfig, teacher_checkpoint: str, cache_dir: str | None, teacher, method, train_loader,
                   num_classes: int, device: torch.device, autocast: bool, memory_format) -> TeacherTable | None:
    """The teacher's logit table for this trial, or None where the live teacher serves (see
    `Recipe.teacher_logits`). Cached in `cache_dir`, by default `teacher_logits/` beside the checkpoint."""
    mode = config.recipe.teacher_logits
    if mode == "live":
        return None
    logit_method = type(method).model_outputs is Method.model_outputs
    if not (logit_method and isinstance(train_loader, DeviceBatches)):
        if mode == "table":
            raise ValueError(f"recipe.teacher_logits = table: method {config.method!r} on the "
                             f"{'device' if isinstance(train_loader, DeviceBatches) else 'DataLoader'} data path cannot "
                             "take it (a table serves logit-based methods on the device data path); use auto or live")
        return None
    nbytes = table_bytes(train_loader, num_classes)
    if not fits_in_memory(nbytes, device):
        if mode == "table":
            raise ValueError(f"recipe.teacher_logits = table: the table takes {nbytes / 2**30:.2f} GiB, more than the "
                             "memory budget; use auto or live")
        return None
    variants = variants_of(train_loader.augmentation, train_loader.image_hw)
    folder = os.path.abspath(teacher_checkpoint if os.path.isdir(teacher_checkpoint) else os.path.dirname(teacher_checkpoint))
    file = os.path.join(folder, CHECKPOINT_FILE) if os.path.isdir(teacher_checkpoint) else teacher_checkpoint
    if cache_dir is None:  # beside the checkpoint folder: one cache for the teachers kept side by side
        cache_dir = os.path.join(os.path.dirname(folder), "teacher_logits")
    # auto: building a table costs one teacher pass per variant, the live teacher one per epoch
    if mode == "auto" and len(variants) > config.recipe.epochs and not has_cached_table(
            cache_dir, file, train_loader, autocast):
        return None
    table, source = cached_table(cache_dir, file, teacher, train_loader, num_classes, autocast, memory_format)
    return TeacherTable(table, variants, device, source)


def _save_resume_state(trial: _Trial, progress: _Progress, resume_dir: str, epochs_done: int) -> None:
    _write_resume_state(resume_dir, {
        "epoch": epochs_done,
        "config": trial.config.identity(),
        "model": {k: v.detach().cpu() for k, v in trial.model.state_dict().items()},
        "method": {k: v.detach().cpu() for k, v in trial.method.state_dict().items()},
        "optimizer": trial.optimizer.state_dict(),
        "final": asdict(progress.final) if progress.final is not None else None,
        "best": asdict(progress.best) if progress.best is not None else None,
        "best_epoch": progress.best_epoch,
        "rng": _rng_states(trial.train_loader),
        "reports": progress.history,
    })


def _run_epoch(trial: _Trial, progress: _Progress, epoch: int) -> EpochReport:
    """Train one 0-based epoch at its learning rate, evaluate when due, and record it in `progress`."""
    recipe = trial.config.recipe
    lr = lr_at(recipe, epoch)
    for group in trial.optimizer.param_groups:
        group["lr"] = lr
    epoch_loss, terms = _train_epoch(trial.model, trial.teacher, trial.method, trial.optimizer, trial.train_loader, epoch,
                                     trial.device, recipe.amp and trial.cuda, channels_last=trial.cuda,
                                     teacher_table=trial.teacher_table)
    evaluated = None
    if (epoch + 1) % max(1, recipe.eval_every) == 0 or epoch + 1 == recipe.epochs:
        # In float32, also on a GPU: bf16 logits tie often enough to bias argmax toward low class ids (the head).
        progress.final = evaluated = evaluate(trial.model, trial.eval_loader, trial.data.class_counts, trial.device)
        if progress.best is None or evaluated.acc_all > progress.best.acc_all:
            progress.best, progress.best_epoch = evaluated, epoch + 1
    if not math.isfinite(epoch_loss):
        raise FloatingPointError(f"training loss is {epoch_loss} at epoch {epoch + 1}: lower the lr or the loss weights")
    epoch_report = EpochReport(epoch + 1, epoch_loss, lr, evaluated, terms)
    progress.history.append(_report_to_dict(epoch_report))
    return epoch_report


def _finish(trial: _Trial, progress: _Progress, checkpoint_dir: str | None) -> TrialResult:
    """Save the final weights if asked, measure the group probabilities, and return the result."""
    config, data = trial.config, trial.data
    final, best = progress.final, progress.best
    assert final is not None and best is not None, "recipe.epochs must be >= 1"
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, trial.model, config, data.num_classes, data.in_channels)
    # No shuffling and the test-size batches: a pass over the training set without touching the RNG streams.
    train_eval_loader = make_loader(without_augmentation(data.train, data.test), max(256, config.recipe.batch_size), False,
                                    config.seed, config.recipe.num_workers, trial.cuda, device=trial.device, path=trial.eval_path)
    group_prob = {
        trial.evaluated_on: group_probability(trial.model, trial.eval_loader, data.class_counts, trial.device),
        "train": group_probability(trial.model, train_eval_loader, data.class_counts, trial.device),
    }
    source = "live" if trial.teacher_table is None else f"table:{trial.teacher_table.source}"
    return TrialResult(final, best, progress.best_epoch, data.class_counts, data.train_indices, config.recipe.epochs, group_prob,
                       trial.evaluated_on, data.validation_indices, source)


def run_trial(
    config: TrialConfig,
    report: Callable[[EpochReport], None] | None = None,
    teacher_checkpoint: str | None = None,
    checkpoint_dir: str | None = None,
    resume_dir: str | None = None,
    saved_report: Callable[[EpochReport], None] | None = None,
    teacher_logits_dir: str | None = None,
) -> TrialResult:
    """Train `config.model` for `config.role`; evaluate every epoch; save the final weights if asked.

    With `resume_dir`, the trial writes its resumable state to `resume_dir/state.pt` every
    `recipe.checkpoint_every` epochs and at the end, and a call that finds a state of the same config
    there continues after its epoch (`report` is then called only for the epochs run here). A
    resumed run ends with the same weights and metrics as an uninterrupted one (on the same device).
    On resume, `saved_report` is first called with each epoch report the saved state holds: a report
    can be lost after its state was saved (the process that took the reports died), and a caller
    that drops the epochs it already has then still receives every epoch once.
    `teacher_logits_dir`: where the teacher's logit table is cached (`Recipe.teacher_logits`).
    """
    _check(config, teacher_checkpoint)
    # read (and check) a saved state first: one of another config fails before any work
    saved = _read_resume_state(resume_dir, config) if resume_dir is not None else None
    trial = _build(config, teacher_checkpoint, teacher_logits_dir)
    progress = _restore(saved, trial, saved_report) if saved is not None else _Progress()
    del saved
    epochs, every = config.recipe.epochs, config.recipe.checkpoint_every
    for epoch in range(progress.start_epoch, epochs):
        epoch_report = _run_epoch(trial, progress, epoch)
        if resume_dir is not None and (epoch + 1 == epochs or (every and (epoch + 1) % every == 0)):
            _save_resume_state(trial, progress, resume_dir, epoch + 1)  # before the report, so a report that stops the run keeps this epoch
        if report is not None:
            report(epoch_report)
    return _finish(trial, progress, checkpoint_dir)
