"""`ltkd train`: one trial by hand, its options checked (one line each) before any training."""
from __future__ import annotations

import json
import math
import os

from orchestrator.errors import UserError, first_line
from orchestrator.paths import writable_folder


def command(args) -> int:
    """`ltkd train`: one trial by hand."""
    import yaml

    from trainer.config import Recipe, TrialConfig
    from trainer.loop import run_trial

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    from trainer.methods import METHODS

    needs_teacher = args.method in METHODS and METHODS[args.method].needs_teacher
    role = "distill" if needs_teacher else "student"
    if needs_teacher and not args.teacher_checkpoint:
        raise UserError(f"--method {args.method}: needs --teacher-checkpoint (a folder saved by `ltkd train --save`)")
    config = TrialConfig(role=role, dataset=args.dataset, gamma=args.gamma, model=args.model, seed=args.seed,
                         method=args.method, method_params=params, recipe=Recipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
                         data_root=args.root, device=args.device)
    _check_train_config(config)
    _check_train_paths(args, config)

    def report(ep) -> None:
        accuracy = f"  all {ep.eval.acc_all:5.1f}  tail {ep.eval.acc_tail:5.1f}" if ep.eval else ""
        print(f"epoch {ep.epoch:3d}  loss {ep.loss:.4f}{accuracy}", flush=True)

    result = run_trial(config, report=report, teacher_checkpoint=args.teacher_checkpoint, checkpoint_dir=args.save)
    print(json.dumps({"final": result.final.metrics(), "best_epoch": result.best_epoch, "best": result.best.metrics()}, indent=1))
    return 0


def _check_train_config(config) -> None:
    from trainer.datasets import DATASETS
    from trainer.methods import METHODS
    from trainer.models import MODELS

    if config.dataset not in DATASETS:
        raise UserError(f"--dataset {config.dataset}: unknown; allowed: {', '.join(sorted(DATASETS))}")
    if config.model not in MODELS:
        raise UserError(f"--model {config.model}: unknown; allowed: {', '.join(sorted(MODELS))}")
    if config.method not in METHODS:
        raise UserError(f"--method {config.method}: unknown; allowed: {', '.join(sorted(METHODS))}")
    if not (config.gamma >= 1 and math.isfinite(config.gamma)):
        raise UserError(f"--gamma {config.gamma:g}: the imbalance factor must be a finite number >= 1")
    recipe = config.recipe
    for option, value in (("--epochs", recipe.epochs), ("--batch-size", recipe.batch_size)):
        if value < 1:
            raise UserError(f"{option} {value}: must be >= 1")
    if not (recipe.lr > 0 and math.isfinite(recipe.lr)):
        raise UserError(f"--lr {recipe.lr:g}: the learning rate must be a finite number > 0")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed {config.seed}: must be between 0 and 2**32 - 1")
    _check_device(config.device)
    from orchestrator.study import check_param
    from trainer.datasets import num_classes_of

    allowed = METHODS[config.method].params
    for key, value in config.method_params.items():
        if key not in allowed:
            raise UserError(f"--param {key}: unknown hyperparameter of {config.method}; allowed: {', '.join(allowed) or 'none'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--param {key}={value}: NaN or infinite numbers are not allowed")
        check_param(f"--param {key}", key, value, allowed[key], num_classes_of(config.dataset))


def _check_device(name: str) -> None:
    import torch

    if name in ("auto", "cpu"):
        return
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()):
        raise UserError(f"--device {name}: allowed: auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and (not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: PyTorch sees {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA "
                        "device(s) here; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no MPS device here; use --device auto or cpu")


def _check_train_paths(args, config) -> None:
    """The data, the teacher and the output folder, before any training."""
    from trainer.datasets import load_dataset
    from trainer.loop import CHECKPOINT_FILE

    if args.teacher_checkpoint:
        file = os.path.join(args.teacher_checkpoint, CHECKPOINT_FILE) if os.path.isdir(args.teacher_checkpoint) else args.teacher_checkpoint
        if not os.path.isfile(file):
            raise UserError(f"--teacher-checkpoint {args.teacher_checkpoint}: no {CHECKPOINT_FILE} there (save one with `ltkd train --save DIR`)")
    if args.save:
        writable_folder(args.save, "--save")
    if args.teacher_checkpoint and args.save:
        teacher_file = os.path.realpath(file)
        if os.path.realpath(os.path.join(args.save, CHECKPOINT_FILE)) == teacher_file:
            raise UserError(f"--save {args.save}: holds the --teacher-checkpoint's {CHECKPOINT_FILE}; the student's weights would "
                            "overwrite the teacher's: save into another folder")
    if args.teacher_checkpoint:
        _check_teacher_fits(args.teacher_checkpoint, file, config)
    try:
        load_dataset(config.dataset, root=config.data_root)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise UserError(f"--dataset {config.dataset}: {first_line(exc, 500) or type(exc).__name__}") from None


def _check_teacher_fits(option_value: str, file: str, config) -> None:
    """The teacher checkpoint is readable and was trained on as many classes and input channels as
    the dataset has: a mismatch would fail as a tensor-size error on the first batch."""
    import torch

    from trainer.datasets import DATASET_INFO, num_classes_of

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model, classes, channels = state["model"], int(state["num_classes"]), int(state["in_channels"])
    except Exception as exc:  # noqa: BLE001 - not a checkpoint of `ltkd train --save`, whatever the reason
        raise UserError(f"--teacher-checkpoint {option_value}: not a checkpoint written by `ltkd train --save` "
                        f"({type(exc).__name__}: {first_line(exc, 120)})") from None
    want = (num_classes_of(config.dataset), DATASET_INFO[config.dataset].in_channels)
    if (classes, channels) != want:
        raise UserError(f"--teacher-checkpoint {option_value}: its {model} has {classes} classes and {channels} input channel(s); "
                        f"--dataset {config.dataset} has {want[0]} and {want[1]}: give a teacher trained on {config.dataset}")

