"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review").

    loss = ce_weight * CE + ramp(epoch) * weight * sum_l HCL(O_l, F^T_l)

Stage feature maps (the 4-D entries of `forward_features`; the pooled vector is ignored) are
paired from the deep end: with n_s student and n_t teacher maps, the last min(n_s, n_t) of each.
The student maps are "reviewed" from deep to shallow by attention-based fusion (ABF) modules:
the deepest map is reduced to `mid_channels` by a 1x1 conv + BN; every shallower map is reduced the
same way and fused with the (nearest-upsampled) fused map from the level below through two
spatial attention maps predicted by a 1x1 conv + sigmoid on their concatenation (x * a_0 + y * a_1).
Each level's fused map is resized to the teacher map's resolution and expanded by a 3x3 conv +
BN to the teacher's channels, giving O_l. HCL (`trainer.losses.hcl_loss`) is the MSE at full
resolution plus MSEs after pyramid pooling to 4x4, 2x2, 1x1 (levels smaller than the map), weights
halving per level, normalised. The ABF modules are built in `setup()` from the shapes of a probe
batch and trained with the student; teacher features are detached.

Defaults: the authors' CIFAR setting, weight 1 with a 20-epoch linear warm-up
(ramp = min((epoch + 1) / warmup, 1), 0-based epoch). mid_channels = 0 picks
min(256, largest student stage width).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses import hcl_loss
from trainer.methods.base import Method
from trainer.methods.dkd import warmup_factor


@torch.no_grad()
def probe_features(model: nn.Module, sample: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`model.forward_features(sample)` in eval mode (no BN statistics updated), mode restored."""
    was_training = model.training
    model.eval()
    try:
        feats, logits = model.forward_features(sample)
    finally:
        model.train(was_training)
    return list(feats), logits


def map_indices(feats: list[torch.Tensor]) -> list[int]:
    """Positions of the 4-D feature maps (stage outputs) in a `forward_features` list."""
    return [i for i, f in enumerate(feats) if f.dim() == 4]


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Spatially resize [B, C, H, W] to `size`: average pooling to shrink, nearest to enlarge."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


class AttentionFusion(nn.Module):
    """One ABF module: reduce to mid channels, fuse with the deeper level (if any), expand."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.expand = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
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


class ReviewKD(Method):
    NAME = "reviewkd"
    DISPLAY = "ReviewKD"
    PARAMS = {"ce_weight": 1.0, "weight": 1.0, "warmup": 20, "mid_channels": 0}
    NEEDS_FEATURES = True

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        self.fusions = nn.ModuleList()  # index l: the ABF of level l (shallow -> deep)
        self._student_idx: list[int] = []
        self._teacher_idx: list[int] = []

    def setup(self, student, teacher, sample):
        if teacher is None:
            raise ValueError("reviewkd needs a teacher")
        s_feats, _ = probe_features(student, sample)
        t_feats, _ = probe_features(teacher, sample)
        s_idx, t_idx = map_indices(s_feats), map_indices(t_feats)
        n = min(len(s_idx), len(t_idx))
        if n == 0:
            raise ValueError("reviewkd: forward_features gave no 4-D feature maps")
        self._student_idx, self._teacher_idx = s_idx[-n:], t_idx[-n:]
        s_channels = [s_feats[i].shape[1] for i in self._student_idx]
        t_channels = [t_feats[i].shape[1] for i in self._teacher_idx]
        mid = int(self.hparams["mid_channels"]) or min(256, max(s_channels))
        device = sample.device
        self.fusions = nn.ModuleList(
            AttentionFusion(s_channels[l], mid, t_channels[l], fuse=l < n - 1) for l in range(n)
        ).to(device)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        if not self._student_idx:
            raise RuntimeError("reviewkd: setup() must run before losses()")
        s_maps = [student_features[i] for i in self._student_idx]
        t_maps = [teacher_features[i].detach() for i in self._teacher_idx]
        total = student_logits.new_zeros(())
        deeper = None
        for level in reversed(range(len(s_maps))):  # review from the deepest level to the shallowest
            out, deeper = self.fusions[level](s_maps[level], deeper, t_maps[level].shape[-2:])
            total = total + hcl_loss(out.float(), t_maps[level].float())
        return {
            "ce": h["ce_weight"] * F.cross_entropy(student_logits, target),
            "reviewkd": warmup_factor(epoch, h["warmup"]) * h["weight"] * total,
        }
