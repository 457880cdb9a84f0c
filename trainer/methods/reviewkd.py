"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review").

    loss = ce_weight * CE + ramp(epoch) * weight * sum_l HCL(O_l, F^T_l)

Levels (`level_spec`), shallow to deep: the outputs of the network's stages plus the pooled
embedding as the deepest level, reshaped to [B, C, 1, 1], as in the paper and its authors' code.
A model that says which entries of `forward_features` are stages (`stage_indices()`, e.g.
MobileNetV2, whose 1x1 head conv map is not a stage) gives those; otherwise, for the zoo's
convention (`feats` ends with the pooled 2-D vector), the stage maps are the 4-D entries of `feats`
after the first one (the stem is not a level). For models without a pooled vector (the small
`cnn_*` ones, `feats = [block1, block2]`) every 4-D map is a level and the global average of the
last map is the 1x1 level. Student and teacher levels are paired from the deep end: with n_s and
n_t levels, the last min(n_s, n_t) of each. For VGG13 -> MobileNetV2 that pairs the student's
12@16x16, 16@8x8, 48@4x4, 160@2x2 stage maps and its 1280-wide pooled vector with the teacher's
128@16x16, 256@8x8, 512@4x4, 512@4x4 block maps and its 512-wide pooled vector, as the authors do.

Features as the authors take them: the teacher's stage maps before their final ReLU
(`forward_features(x, preact=True)`; see `trainer.models`), and the student's post-ReLU maps,
or its pre-activation ones too with `student_preact` (the authors' ImageNet setting). A stage map
is the stage's own output: for WRN, whose last stage is followed by a BN + ReLU outside it, the raw
block-3 output (`raw_last_stage`), as the authors and mdistiller take it.

The student levels are "reviewed" from deep to shallow by attention-based fusion (ABF) modules:
the deepest level is reduced to `mid_channels` by a 1x1 conv + BN; every shallower level is reduced
the same way and fused with the (nearest-upsampled, e.g. 1x1 -> 4x4) fused map from the level
below through two spatial attention maps predicted by a 1x1 conv + sigmoid on their concatenation
(x * a_0 + y * a_1). Each level's fused map is resized to the teacher level's resolution and
expanded by a 3x3 conv + BN to the teacher's channels, giving O_l. HCL (`trainer.losses.hcl_loss`,
computed in float32 even under autocast) is the MSE at full resolution plus MSEs after pyramid
pooling to 4x4, 2x2, 1x1 (levels smaller than the map), weights halving per level, normalised; on
the 1x1 level it is plain MSE. The ABF modules are built in `setup()` from the shapes of a probe
batch and trained with the student; teacher features are detached. The connectors run under the
loop's autocast; only the loss is computed in float32.

Defaults: weight 1 with a 20-epoch linear warm-up (ramp = min((epoch + 1) / warmup, 1), 0-based
epoch); mid_channels = 0 picks min(512, the width of the student's deepest level), the authors'
rule. The recipe presets set the per-pair values of the authors' released scripts and configs
(`trainer.recipes.REVIEWKD`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses import hcl_loss
from trainer.methods.base import FeatureMethod, features_of
from trainer.methods.dkd import warmup_factor


@torch.no_grad()
def probe_features(model: nn.Module, sample: torch.Tensor, preact: bool = False,
                   raw_last_stage: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`model.forward_features(sample)` in eval mode (no BN statistics updated), mode restored."""
    was_training = model.training
    model.eval()
    try:
        feats, logits = features_of(model, sample, preact, raw_last_stage)
    finally:
        model.train(was_training)
    return list(feats), logits


def map_indices(feats: list[torch.Tensor]) -> list[int]:
    """Positions of all 4-D feature maps in a `forward_features` list (stem included)."""
    return [i for i, f in enumerate(feats) if f.dim() == 4]


def review_levels(feats: list[torch.Tensor], model: nn.Module | None = None) -> list[torch.Tensor]:
    """ReviewKD's levels of one `forward_features` list of `model`, shallow to deep: the stage maps,
    then the pooled embedding as a [B, C, 1, 1] map (`level_spec` says which entries)."""
    return take_levels(feats, level_spec(model, feats))


def level_spec(model: nn.Module, feats: list[torch.Tensor]) -> list[tuple[str, int]]:
    """Which entries of `feats` (a `forward_features` list of `model`) are ReviewKD's levels, shallow
    to deep: ("map", i) for a stage map, then ("pooled", i) for a pooled [B, C] vector or ("gap", i)
    for the global average of map i. See the module docstring for the rules."""
    if feats and feats[-1].dim() == 2:
        stages = model.stage_indices() if hasattr(model, "stage_indices") else \
            [i for i in range(1, len(feats) - 1) if feats[i].dim() == 4]
        return [("map", i) for i in stages] + [("pooled", len(feats) - 1)]
    maps = map_indices(feats)
    return [("map", i) for i in maps] + [("gap", maps[-1])] if maps else []


def take_levels(feats: list[torch.Tensor], spec: list[tuple[str, int]]) -> list[torch.Tensor]:
    """The level tensors a `level_spec` names, the 1x1 level as [B, C, 1, 1]."""
    out = []
    for kind, i in spec:
        f = feats[i]
        if kind == "pooled":
            f = f.reshape(f.shape[0], f.shape[1], 1, 1)
        elif kind == "gap":
            f = f.mean(dim=(2, 3), keepdim=True)
        out.append(f)
    return out


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Spatially resize [B, C, H, W] to `size`: average pooling to shrink, nearest to enlarge."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


class _LevelBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that also takes a training batch of one value per channel (a 1x1 level with
    batch size 1, e.g. a loader's last batch): it is normalised with the running statistics then
    (which are left unchanged) instead of failing. Same parameters and state as BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class AttentionFusion(nn.Module):
    """One ABF module: reduce to mid channels, fuse with the deeper level (if any), expand.
    Works for any spatial sizes, the 1x1 pooled level included (a deeper 1x1 map is upsampled)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), _LevelBatchNorm(mid_channels))
        self.expand = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), _LevelBatchNorm(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.expand[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = resize_to(deeper, x.shape[-2:])
            att = self.attention(torch.cat([x, deeper], dim=1))
            x = x * att[:, 0:1] + deeper * att[:, 1:2]
        return self.expand(resize_to(x, out_size)), x


class ReviewKD(FeatureMethod):
    """ReviewKD; see the module docstring."""

    NAME = "reviewkd"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        self.teacher_preact = True  # the authors distil the teacher's pre-activation stage maps
        self.student_preact = bool(self.hparams["student_preact"])
        self.student_raw_last_stage = True  # the stage's own output (WRN: before the BN + ReLU after block 3)
        self.fusions = nn.ModuleList()  # index l: the ABF of paired level l (shallow -> deep)
        self._levels: tuple[list[tuple[str, int]], list[tuple[str, int]]] = ([], [])  # (student, teacher) specs
        self.mid_channels = 0
        self.level_shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (student, teacher) [C, H, W] per level

    def setup(self, student, teacher, sample):
        if teacher is None:
            raise ValueError("reviewkd needs a teacher")
        s_feats, _ = probe_features(student, sample, self.student_preact, self.student_raw_last_stage)
        t_feats, _ = probe_features(teacher, sample, self.teacher_preact)
        s_spec, t_spec = level_spec(student, s_feats), level_spec(teacher, t_feats)
        n = min(len(s_spec), len(t_spec))
        if n == 0:
            raise ValueError("reviewkd: forward_features gave no 4-D feature maps")
        self._levels = (s_spec[-n:], t_spec[-n:])
        s_levels, t_levels = take_levels(s_feats, self._levels[0]), take_levels(t_feats, self._levels[1])
        self.level_shapes = [(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in zip(s_levels, t_levels)]
        s_channels = [s.shape[1] for s in s_levels]
        t_channels = [t.shape[1] for t in t_levels]
        self.mid_channels = int(self.hparams["mid_channels"]) or min(512, s_channels[-1])
        self.fusions = nn.ModuleList(
            AttentionFusion(s_channels[l], self.mid_channels, t_channels[l], fuse=l < n - 1) for l in range(n)
        ).to(sample.device)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        n = len(self.fusions)
        if not n:
            raise RuntimeError("reviewkd: setup() must run before losses()")
        s_maps = take_levels(list(student_features), self._levels[0])
        t_maps = [t.detach() for t in take_levels(list(teacher_features), self._levels[1])]
        total = torch.zeros((), device=student_logits.device, dtype=torch.float32)
        deeper = None
        for level in reversed(range(n)):  # review from the deepest level to the shallowest
            out, deeper = self.fusions[level](s_maps[level], deeper, t_maps[level].shape[-2:])
            total = total + hcl_loss(out, t_maps[level])  # float32, autocast off inside
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "reviewkd": warmup_factor(epoch, h["warmup"]) * h["weight"] * total,
        }
