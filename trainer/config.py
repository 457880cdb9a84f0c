"""Typed configuration of one trial, passed down explicitly (there is no global config)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Role = Literal["teacher", "student", "distill"]

# Fields that say where and how a trial runs, not what it computes: left out of its identity.
NOT_IDENTITY = ("data_root", "device")
RECIPE_NOT_IDENTITY = ("num_workers", "checkpoint_every", "eval_every", "data_path", "compile", "teacher_logits")
# The device data path draws a trial's crops and flips from a stream of its own (trainer.device_batches),
# not image by image from the global one as the DataLoader did: the same distribution, other draws.
# An augmented trial on that path says so in its identity, so runs of the DataLoader path (all such
# runs before it existed) are not taken for its runs; without augmentation both paths read the same
# batches and the identity is unchanged.
AUGMENT_STREAM = "device-v1"


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
    # Training data path: "auto" (the device-resident path for in-memory sets, a DataLoader for image
    # folders), "device" or "loader". Its effect on the draws enters the identity (AUGMENT_STREAM).
    data_path: Literal["auto", "device", "loader"] = "auto"
    compile: bool = False  # torch.compile the trained model (CUDA; the same computation, compiled)
    # Where a distillation step gets the teacher's logits: "table" (computed once per image, crop
    # offset and flip, `trainer.teacher_logits`; logit methods on the device data path), "live" (the
    # teacher's forward pass every step) or "auto" (the table where it applies, fits the memory budget
    # and costs fewer teacher passes than the epochs, or is already built). The table holds the live
    # teacher's logits up to floating-point reassociation, so, like compile, it is not identity.
    teacher_logits: Literal["auto", "table", "live"] = "auto"


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
    # > 0: a search trial. That many images per class are held out of the training set as a balanced
    # validation set (trainer.data), and the trial evaluates on it, never on the test set.
    validation_per_class: int = 0
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

    def identity(self) -> dict[str, Any]:
        """What decides the trial's result, as plain JSON values: the one definition behind both the
        config hash (`orchestrator.study.config_hash`) and the resume check (`trainer.loop`).

        Left out: where and how it runs (NOT_IDENTITY, RECIPE_NOT_IDENTITY) and hyperparameters at the
        value that reproduces what ran before they existed (`trainer.methods.IDENTITY_NEUTRAL`).
        A method whose implementation was corrected after studies had run adds its `revision`
        (`MethodSpec.revision`, or `revision_of` a correction that concerns some students only), so
        its old runs are not taken for the corrected ones; revision 0
        adds nothing, so no other trial's identity moved. Likewise an augmented trial on the device
        data path adds `augment_stream` (AUGMENT_STREAM); the rest keep their identity."""
        from trainer.methods import IDENTITY_NEUTRAL, METHODS  # declarations only: no PyTorch

        ident = self.to_dict()
        for key in NOT_IDENTITY:
            ident.pop(key)
        for key in RECIPE_NOT_IDENTITY:
            ident["recipe"].pop(key)
        if not ident["validation_per_class"]:
            ident.pop("validation_per_class")  # added with searches: grid trials keep their identity
        ident["method_params"] = {k: v for k, v in ident["method_params"].items()
                                  if not (k in IDENTITY_NEUTRAL and v == IDENTITY_NEUTRAL[k])}
        if self.augment_stream() is not None:
            ident["augment_stream"] = self.augment_stream()
        spec = METHODS.get(self.method)
        revision = 0 if spec is None else spec.revision_of(self.model, self.method_params)
        if revision:
            ident["method_revision"] = revision
        return json.loads(json.dumps(ident, sort_keys=True, default=str))  # tuples -> lists, as stored

    def augment_stream(self) -> str | None:
        """AUGMENT_STREAM when this trial's training images are augmented on the device path, else None."""
        from trainer.datasets import DATASET_INFO, data_path_of  # declarations only: no PyTorch

        info = DATASET_INFO.get(self.dataset)
        if info is None or not info.augments or self.dataset_options.get("augment", True) is False:
            return None
        try:
            path = data_path_of(self.dataset, self.recipe.data_path)
        except ValueError:  # a path the dataset cannot take: refused where the trial is validated or run
            return None
        return AUGMENT_STREAM if path == "device" else None

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
