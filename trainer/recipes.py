"""Named training recipes a study can refer to (and override field by field), and the method
hyperparameters that go with them.

- `cifar`: the KD literature's CIFAR-100 recipe (CRD / mdistiller): 240 epochs, batch 64, SGD
  momentum 0.9, lr 0.05 divided by 10 at epochs 150, 180 and 210, weight decay 5e-4.
  ShuffleNet and MobileNet students use lr 0.01.
- `imagenet`: 100 epochs, batch 512, lr 0.2 divided by 10 at 30, 60 and 90, weight decay 1e-4.
- `smoke`: a few epochs for the offline data.

`method_defaults(preset, method, teacher, student)` gives the hyperparameters the baselines' own
released configurations use with that recipe and pair (mdistiller's configs for KD and DKD; the
ReviewKD authors' scripts and mdistiller's configs for ReviewKD; the CAT-KD authors' configs for
CAT-KD; the DIST paper's settings with its released ImageNet loss weight); a study's own values win.
"""
from __future__ import annotations

import dataclasses

from trainer.config import Recipe

RECIPES: dict[str, Recipe] = {
    # checkpoint_every: long runs keep a resumable state (not part of a trial's identity).
    "cifar": Recipe(epochs=240, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="multistep", milestones=(150, 180, 210), lr_decay=0.1,
                    num_workers=4, checkpoint_every=10),
    "imagenet": Recipe(epochs=100, batch_size=512, lr=0.2, momentum=0.9, weight_decay=1e-4,
                       lr_schedule="multistep", milestones=(30, 60, 90), lr_decay=0.1,
                       num_workers=8, checkpoint_every=5),
    "smoke": Recipe(epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="multistep", milestones=(20, 25), lr_decay=0.1),
}

# Students that the CIFAR recipe trains at lr 0.01 instead of 0.05. Every table below names only
# models of the zoo (`trainer.models.MODELS`; tests/test_paper_pairs.py checks it).
LOW_LR_STUDENTS = ("shufflenet_v1", "mobilenet_v2")

# CAT-KD on CIFAR-100, per (teacher, student): (CAT loss weight, CAM resolution, normalise CAMs),
# from the CAT-KD authors' configs; pairs not listed use the resnet32x4 -> resnet8x4 setting.
CATKD_CIFAR = {
    ("resnet32x4", "resnet8x4"): (15.0, 2, False),
    ("resnet32x4", "shufflenet_v1"): (600.0, 4, True),
    ("vgg13", "vgg8"): (4.5, 2, False),
    ("vgg13", "mobilenet_v2"): (15.0, 2, True),
    ("wrn_40_2", "wrn_40_1"): (1.5, 2, False),
    ("wrn_40_2", "wrn_16_2"): (12.0, 2, False),
    ("resnet56", "resnet20"): (0.7, 2, False),
    ("wrn_40_2", "shufflenet_v1"): (80.0, 4, True),
}

# DKD's beta on CIFAR-100 per (teacher, student) in mdistiller's configs (default 8).
DKD_BETA_CIFAR = {("vgg13", "vgg8"): 6.0, ("vgg13", "mobilenet_v2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
                  ("wrn_40_2", "wrn_16_2"): 6.0, ("resnet56", "resnet20"): 2.0}

# DKD's beta on ImageNet per (teacher, student) in mdistiller's configs.
DKD_BETA_IMAGENET = {("resnet34", "resnet18"): 0.5, ("resnet50", "mobilenet_v1"): 2.0}

# ReviewKD per (preset, teacher, student): the loss weight of the authors' CIFAR-100 training script
# (`--kd-loss-weight`; the VGG pairs are not in it and keep mdistiller's default 1.0) and, on
# ImageNet, mdistiller's configs (weight, 1-epoch warm-up, student pre-activation features) with the
# authors' own ImageNet connector width for MobileNetV1 (256; min(512, 512) = 512 for ResNet-18).
REVIEWKD = {
    ("cifar", "resnet32x4", "resnet8x4"): {"weight": 5.0},
    ("cifar", "resnet32x4", "shufflenet_v1"): {"weight": 5.0},
    ("cifar", "wrn_40_2", "wrn_40_1"): {"weight": 5.0},
    ("cifar", "wrn_40_2", "wrn_16_2"): {"weight": 5.0},
    ("cifar", "wrn_40_2", "shufflenet_v1"): {"weight": 5.0},
    ("cifar", "resnet56", "resnet20"): {"weight": 0.6},
    ("imagenet", "resnet34", "resnet18"): {"weight": 1.0, "student_preact": True},
    ("imagenet", "resnet50", "mobilenet_v1"): {"weight": 8.0, "mid_channels": 256, "student_preact": True},
}
REVIEWKD_DEFAULT = {"cifar": {"weight": 1.0, "warmup": 20}, "imagenet": {"weight": 1.0, "warmup": 1, "student_preact": True}}


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


def method_defaults(preset: str | None, method: str, teacher: str | None, student: str | None = None) -> dict:
    """Hyperparameter defaults a recipe brings for a method and pair (the study's own values win).

    Logit-based LTKD variants take the recipe's temperature (4 on CIFAR, 1 on ImageNet) and keep
    their own weights. Keys a method does not have are dropped by the caller.
    """
    pair = (teacher, student)
    if preset == "cifar":
        if method == "kd":
            return {"ce_weight": 0.1, "alpha": 0.9, "temperature": 4.0}
        if method == "dkd":
            return {"alpha": 1.0, "beta": DKD_BETA_CIFAR.get(pair, 8.0), "warmup": 20, "temperature": 4.0}
        if method == "reviewkd":
            return {**REVIEWKD_DEFAULT["cifar"], **REVIEWKD.get((preset, *pair), {})}
        if method == "catkd":
            weight, resolution, normalize = CATKD_CIFAR.get(pair, CATKD_CIFAR[("resnet32x4", "resnet8x4")])
            return {"cat_weight": weight, "cam_resolution": resolution, "normalize": normalize}
        if method == "dist":
            return {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}
    if preset == "imagenet":
        if method == "kd":
            return {"ce_weight": 0.5, "alpha": 0.5, "temperature": 1.0}
        if method == "dkd":
            return {"alpha": 1.0, "beta": DKD_BETA_IMAGENET.get(pair, 0.5), "warmup": 1, "temperature": 1.0}
        if method == "reviewkd":
            return {**REVIEWKD_DEFAULT["imagenet"], **REVIEWKD.get((preset, *pair), {})}
        if method == "catkd":
            # ResNet34 -> ResNet18 in the CAT-KD authors' configs; no released config has ResNet50 -> MobileNetV1.
            return {"cat_weight": 0.5, "cam_resolution": 4, "normalize": False}
        if method == "dist":
            # DIST's released ImageNet setting: beta = gamma = 1 at T = 1 under a loss weight of 2, i.e. 2 x (inter + intra).
            return {"beta": 2.0, "gamma": 2.0, "temperature": 1.0}
        if method == "bkd" or method.startswith("ltkd"):
            return {"temperature": 1.0}
    return {}
