"""Typed configuration of one trial, passed down explicitly (there is no global config)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Role = Literal["teacher", "student", "distill"]


@dataclass(frozen=True)
class Recipe:
    """How a model is optimised. Milestones are epochs at which the learning rate is multiplied by lr_decay."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    warmup_epochs: int = 0  # linear learning-rate warm-up
    amp: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    num_workers: int = 0  # DataLoader workers for on-disk datasets
    # With a resume folder: write the resumable state every this many epochs (0: only at the end).
    # It does not change what is computed.
    checkpoint_every: int = 0
    eval_every: int = 1  # evaluate on the test set every N epochs (the last epoch always)


@dataclass(frozen=True)
class TrialConfig:
    """Everything that decides what one trial computes (and so its identity), plus where to run it."""

    role: Role
    dataset: str
    gamma: float
    model: str  # the model being trained (teacher or student)
    seed: int
    method: str = "ce"
    method_params: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None  # teacher architecture, for role == "distill"
    recipe: Recipe = field(default_factory=Recipe)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    n_max: int | None = None  # images of the largest class; None: the smallest class's full count
    split_seed: int = 0
    data_root: str | None = None  # where on-disk datasets live; not part of the identity
    device: str = "auto"  # "auto": CUDA when present; not part of the identity

    def to_dict(self) -> dict[str, Any]:
        """What `dataclasses.asdict` gives (the recipe as a dict too), built field by field: asdict
        deep-copies every value, which is most of the time a study of 10,000 trials takes to expand."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["recipe"] = {f.name: getattr(self.recipe, f.name) for f in fields(self.recipe)}
        data["method_params"] = copy.deepcopy(self.method_params)
        data["dataset_options"] = copy.deepcopy(self.dataset_options)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        data = dict(data)
        recipe = data.pop("recipe", {}) or {}
        if isinstance(recipe, dict):
            recipe = dict(recipe)
            if "milestones" in recipe:
                recipe["milestones"] = tuple(recipe["milestones"])
            recipe = Recipe(**recipe)
        return cls(recipe=recipe, **data)
