"""Training methods: one file each for the losses, one registry line each for the declaration.

A method turns (student logits, teacher logits, targets, epoch) into named loss terms; the loop
adds them up. What a method *is* -- its display name, its hyperparameters with their defaults
(which the study validator checks against), whether it distils from a teacher (and from the
teacher's features), and the hyperparameters it fixes -- is its `MethodSpec` line in `METHODS`
below. The declarations import nothing, so validating and planning a study and rebuilding its
tables load no PyTorch; the class that implements a method (`impl`) is imported on first use and
takes its declaration from its line here (`Method.__init_subclass__`, by the class's NAME).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainer.registry import import_object

if TYPE_CHECKING:
    from trainer.methods.base import Method


# The supervised term of a distillation method, chosen by its `ce` hyperparameter: name -> how a row
# label shows it ("" for the default; "KD + BalSoftmax"). `balanced_softmax` is the logit-adjusted
# CE of the `balanced_softmax` Student row (tau = 1) with the trial's own class counts.
SUPERVISED_LOSSES: dict[str, str] = {"standard": "", "balanced_softmax": "BalSoftmax"}
# Allowed values of string hyperparameters (the study validator checks them).
PARAM_CHOICES: dict[str, tuple[str, ...]] = {"ce": tuple(SUPERVISED_LOSSES)}
# Hyperparameters added after studies had been run, with the value that reproduces what ran before:
# at that value they are left out of a trial's identity (`orchestrator.study.config_hash`), so adding
# one changed no existing trial's config_hash and reruns nothing.
IDENTITY_NEUTRAL: dict[str, object] = {"ce": "standard"}


@dataclass(frozen=True)
class MethodSpec:
    impl: str  # "module:Class" that implements it (its NAME is the registry key)
    display: str  # how tables and run names show it
    params: dict[str, object]  # hyperparameter -> default
    needs_teacher: bool = True
    needs_features: bool = False  # the loop then passes student and teacher features to `losses`
    # Hyperparameters the method sets itself: not settable (passing one is an error), but written
    # into the instance's `hparams`, so what was run is recorded.
    fixed: dict[str, object] = field(default_factory=dict)
    # Bumped when a correction changes what the method computes for the same hyperparameters: it
    # enters the trial identity (`TrialConfig.identity`) when > 0, so runs of the old code are rerun.
    revision: int = 0
    # A correction that changes what is computed only for some trials: student model -> (revision,
    # the hyperparameter values under which the old code computed the same, so those keep `revision`).
    student_revisions: dict[str, tuple[int, dict[str, object]]] = field(default_factory=dict)

    def __post_init__(self):
        # Every distillation method takes `ce`, the loss of its supervised term (SUPERVISED_LOSSES).
        if self.needs_teacher and "ce" not in self.params and "ce" not in self.fixed:
            object.__setattr__(self, "params", {**self.params, "ce": "standard"})

    def revision_of(self, student: str, params: dict[str, object]) -> int:
        """The revision a trial of this method with this student model and these hyperparameters computes."""
        revised = self.student_revisions.get(student)
        if revised is None:
            return self.revision
        revision, unchanged_when = revised
        if unchanged_when and all(params.get(k) == v for k, v in unchanged_when.items()):
            return self.revision
        return revision

    @property
    def cls(self) -> type[Method]:
        return import_object(self.impl)


LTKD_PARAMS: dict[str, object] = {
    "ce_weight": 1.0, "alpha": 1.0, "beta": 1.0, "temperature": 4.0, "n_groups": 3, "rebalance": True, "reweight": True,
}


def _ltkd_variant(impl: str, display: str, fixed: dict[str, object] | None = None, drop: tuple[str, ...] = (),
                  extra: dict[str, object] | None = None, revision: int = 0) -> MethodSpec:
    """An LTKD variant: LTKD's hyperparameters less those it fixes or drops, plus its own."""
    fixed = fixed or {}
    params = {k: v for k, v in LTKD_PARAMS.items() if k not in fixed and k not in drop}
    return MethodSpec(impl, display, {**params, **(extra or {})}, fixed=fixed, revision=revision)


METHODS: dict[str, MethodSpec] = {
    "ce": MethodSpec("trainer.methods.ce:CrossEntropy", "CE", {}, needs_teacher=False),
    "kd": MethodSpec("trainer.methods.kd:KD", "KD", {"ce_weight": 1.0, "alpha": 1.0, "temperature": 4.0}),
    "ltkd": MethodSpec("trainer.methods.ltkd:LTKD", "LTKD", LTKD_PARAMS),
    "dkd": MethodSpec("trainer.methods.dkd:DKD", "DKD", {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}),
    # revision 1 (issue 26): Pearson correlation normalised as DIST's release does, by |a||b| + 1e-8.
    "dist": MethodSpec("trainer.methods.dist:DIST", "DIST", {"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0},
                       revision=1),
    "bkd": MethodSpec("trainer.methods.bkd:BKD", "BKD",
                      {"ce_weight": 1.0, "alpha": 1.0, "temperature": 2.0, "beta_cb": 0.9999, "reweight_from": 0}),
    "balanced_softmax": MethodSpec("trainer.methods.balanced_ce:BalancedSoftmax", "Balanced Softmax", {"tau": 1.0},
                                   needs_teacher=False),
    # The paper's ablations (trainer/methods/ltkd_variants.py says what each row is).
    "ltkd_cross": _ltkd_variant("trainer.methods.ltkd_variants:LTKDCross", "LTKD (cross only)",
                                fixed={"beta": 0.0, "reweight": True}),
    "ltkd_within": _ltkd_variant("trainer.methods.ltkd_variants:LTKDWithin", "LTKD (within only)",
                                 fixed={"alpha": 0.0, "rebalance": True}),
    "ltkd_biased": _ltkd_variant("trainer.methods.ltkd_variants:LTKDBiased", "LTKD (biased cross)", fixed={"rebalance": False}),
    # revision 1 (issue 13): within-group KLs over nested tail sets, meaningful at every n(G).
    "ltkd_continuous": _ltkd_variant("trainer.methods.ltkd_variants:LTKDContinuous", "LTKD (continuous reweighting)",
                                     drop=("reweight",), extra={"tau": 1.0}, revision=1),
    # revision 1 (issue 13): teacher pre-activation features, the authors' level pairing and connector width.
    # revision 2 for WRN students (issue 26): the deepest student level is block 3's raw output, not its
    # BN + ReLU; with student_preact (the pre-ReLU BN output, unchanged) those trials compute what they did.
    "reviewkd": MethodSpec("trainer.methods.reviewkd:ReviewKD", "ReviewKD",
                           {"ce_weight": 1.0, "weight": 1.0, "warmup": 20, "mid_channels": 0, "student_preact": False},
                           needs_features=True, revision=1,
                           student_revisions={m: (2, {"student_preact": True}) for m in ("wrn_16_2", "wrn_40_1", "wrn_40_2")}),
    # revision 1 (issue 13): the student's classifier as the authors build it (bias-free 1x1 conv head).
    "catkd": MethodSpec("trainer.methods.catkd:CATKD", "CAT-KD",
                        {"ce_weight": 1.0, "cat_weight": 15.0, "cam_resolution": 2, "normalize": False}, needs_features=True,
                        revision=1),
}


def build_method(name: str, params: dict, class_counts: list[int]) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name].cls(class_counts=class_counts, **params)
