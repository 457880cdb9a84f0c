"""Named training recipes a study can refer to (and override field by field).

- `cifar`: the KD literature's CIFAR-100 recipe (CRD / mdistiller): 240 epochs, batch 64, SGD
  momentum 0.9, lr 0.05 divided by 10 at epochs 150, 180 and 210, weight decay 5e-4.
  ShuffleNet and MobileNet students use lr 0.01 (`student_lr`).
- `imagenet`: 100 epochs, batch 512, lr 0.2 divided by 10 at 30, 60 and 90, weight decay 1e-4.
- `smoke`: a few epochs for the offline data.

Method defaults that go with a recipe (T = 4 and KD's CE 0.1 / KD 0.9 on CIFAR; T = 1 on
ImageNet; DKD beta 8, or 6 for the VGG13 and WRN-40-2 teachers, with a 20-epoch warm-up) are in
`method_defaults`: they are what a study gets unless it sets the hyperparameter itself.
"""
from __future__ import annotations

import dataclasses

from trainer.config import Recipe

RECIPES: dict[str, Recipe] = {
    "cifar": Recipe(epochs=240, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="multistep", milestones=(150, 180, 210), lr_decay=0.1),
    "imagenet": Recipe(epochs=100, batch_size=512, lr=0.2, momentum=0.9, weight_decay=1e-4,
                       lr_schedule="multistep", milestones=(30, 60, 90), lr_decay=0.1, num_workers=8),
    "smoke": Recipe(epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="multistep", milestones=(20, 25), lr_decay=0.1),
}

# Students that the CIFAR recipe trains at lr 0.01 instead of 0.05.
LOW_LR_STUDENTS = ("shufflenet_v1", "shufflenet_v2", "mobilenet_v2")


def resolve_recipe(preset: str | None, overrides: dict, student: str | None = None) -> Recipe:
    """The preset (or the dataclass defaults) with the CIFAR student-lr rule, then the overrides."""
    if preset is not None and preset not in RECIPES:
        raise KeyError(f"unknown recipe preset {preset!r}; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[preset] if preset else Recipe()
    if preset == "cifar" and student in LOW_LR_STUDENTS:
        recipe = dataclasses.replace(recipe, lr=0.01)
    fields = dict(overrides)
    if "milestones" in fields:
        fields["milestones"] = tuple(fields["milestones"])
    return dataclasses.replace(recipe, **fields)


def method_defaults(preset: str | None, method: str, teacher: str | None) -> dict:
    """Hyperparameter defaults a recipe brings for a method (the study's own values win)."""
    if preset == "cifar":
        if method == "kd":
            return {"ce_weight": 0.1, "alpha": 0.9, "temperature": 4.0}
        if method == "dkd":
            return {"beta": 6.0 if teacher in ("vgg13", "wrn_40_2") else 8.0, "warmup": 20, "temperature": 4.0}
    if preset == "imagenet":
        if method in ("kd", "ltkd", "dkd", "dist", "bkd") or method.startswith("ltkd"):
            return {"temperature": 1.0}
    return {}
