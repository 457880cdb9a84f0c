"""CAT-KD (Guo et al., CVPR 2023, "Class Attention Transfer Based Knowledge Distillation").

    loss = ce_weight * CE + cat_weight * MSE(pool_r(CAM^S), pool_r(CAM^T))

CAM_k = sum_d W_kd F_d: the classifier's weight W [K, D] applied at every position of the final
conv feature map F [B, D, H, W] (the 1x1-conv form of a global-average-pool + linear head; the
bias is left out, as in the authors' converted models, so spatial mean of CAM + bias = logits).
Both CAM stacks are average-pooled to r x r (r = `cam_resolution`) and compared by MSE;
`normalize` L2-normalises each class map first (the authors' switch, off in their configs).

The classifier is found generically as the model's last nn.Linear, and F as the deepest 4-D map of
`forward_features` whose channel count equals the classifier's input width (found in `setup()`
from a probe batch). If the student has no such map, a learnable 1x1 conv from its last map to the
K classes (trained with it) stands in for its classifier; the teacher must have one.

The student's classifier as the authors build it: their students end in a bias-free 1x1 conv to
the K classes, initialised He-normal (fan_out), whose spatial mean is the logits and whose output
is the student's CAM stack. A bias-free linear layer on the pooled vector computes the same logits
(pooling and a 1x1 conv commute), so `setup()` re-initialises the student's classifier weight that
way and pins its bias at zero (kept as a frozen parameter, so checkpoints keep the zoo's layout). Teacher CAMs
are computed from detached features and weights: only the student (and that head) get gradients.
The CAMs and the loss are computed in float32 with autocast disabled (the loop runs `losses()`
under bf16 autocast on CUDA).

Defaults: the authors' CIFAR-100 configs use r = 2, CE weight 1, no normalisation and a per-pair
weight beta (15 for resnet32x4 -> resnet8x4, 4.5 for vgg13 -> vgg8, 1.5 for wrn_40_2 -> wrn_40_1;
ImageNet ResNet34 -> ResNet18: 0.5 with r = 4). The default cat_weight = 15 is the
resnet32x4 -> resnet8x4 value; the recipe presets set the per-pair values (`trainer.recipes`).
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.losses import cat_loss, class_activation_maps
from trainer.methods.base import FeatureMethod
from trainer.methods.reviewkd import map_indices, probe_features


def last_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear registered in `model` (its classifier, for the zoo's models)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def cam_map_index(feats: list[torch.Tensor], in_features: int) -> int | None:
    """Index of the deepest 4-D map whose channel count is the classifier's input width."""
    for i in reversed(map_indices(feats)):
        if feats[i].shape[1] == in_features:
            return i
    return None


@torch.no_grad()
def bias_free_conv_head(fc: nn.Linear) -> None:
    """Make `fc` the authors' CAT-KD student head: the weight He-normal as a 1x1 conv's (fan_out =
    classes, ReLU gain), the bias zero and frozen (no gradient, so no update or weight decay)."""
    nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
    if fc.bias is not None:
        fc.bias.zero_()
        fc.bias.requires_grad_(False)


class CATKD(FeatureMethod):
    NAME = "catkd"

    def __init__(self, class_counts, **params):
        super().__init__(class_counts, **params)
        self._refs: tuple[nn.Linear, nn.Linear] | None = None  # (student fc, teacher fc): not submodules
        self._student_idx: int | None = None
        self._teacher_idx: int | None = None
        self.cam_head: nn.Conv2d | None = None

    def setup(self, student, teacher, sample):
        if teacher is None:
            raise ValueError("catkd needs a teacher")
        s_fc, t_fc = last_linear(student), last_linear(teacher)
        s_feats, s_logits = probe_features(student, sample)
        t_feats, _ = probe_features(teacher, sample)
        self._teacher_idx = cam_map_index(t_feats, t_fc.in_features)
        if self._teacher_idx is None:
            raise ValueError(
                f"catkd: the teacher {type(teacher).__name__} has no feature map with {t_fc.in_features} channels "
                "(its classifier's input width), so its class activation maps cannot be formed"
            )
        self._student_idx = cam_map_index(s_feats, s_fc.in_features)
        if self._student_idx is not None:
            bias_free_conv_head(s_fc)
        else:
            last = map_indices(s_feats)
            if not last:
                raise ValueError("catkd: the student's forward_features gave no 4-D feature maps")
            self._student_idx = last[-1]
            self.cam_head = nn.Conv2d(s_feats[last[-1]].shape[1], s_logits.shape[1], 1, bias=False).to(sample.device)
        # A tuple attribute is not registered: the models' weights are not the method's parameters.
        self._refs = (s_fc, t_fc)

    def losses(self, student_logits, teacher_logits, target, epoch, student_features=None, teacher_features=None):
        h = self.hparams
        if self._refs is None:
            raise RuntimeError("catkd: setup() must run before losses()")
        s_fc, t_fc = self._refs
        s_map = student_features[self._student_idx]
        t_map = teacher_features[self._teacher_idx].detach()
        # CAMs and the loss in float32 even under the loop's bf16 autocast (an einsum of .float()
        # tensors inside autocast would be computed in bf16 again).
        with torch.autocast(device_type=s_map.device.type, enabled=False):
            if self.cam_head is not None:
                s_cams = self.cam_head(s_map.float())
            else:
                s_cams = class_activation_maps(s_map.float(), s_fc.weight.float())
            t_cams = class_activation_maps(t_map.float(), t_fc.weight.detach().float())
            cat = cat_loss(s_cams, t_cams, int(h["cam_resolution"]), bool(h["normalize"]))
        return {
            "ce": h["ce_weight"] * self.supervised_loss(student_logits, target),
            "cat": h["cat_weight"] * cat,
        }
