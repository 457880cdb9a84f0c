"""What is searched: one search per (teacher-student pair, γ) of a study, and the ltkd trial of each point Optuna proposes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any


from orchestrator.errors import UserError
from orchestrator.study import FROM_SEARCH, PairSpec, StudySpec, Trial, config_hash, expand, full_params
from trainer.config import TrialConfig
from trainer.methods import METHODS
from trainer.recipes import resolve_recipe


SEARCH_KEY_TAG = "ltkd.search_key"  # the parent run of a search, and its trials, carry the search's key
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
SEARCH_STATE_TAG = "search_state"  # a search trial's outcome as Optuna has it: complete, pruned or failed


# ---------------------------------------------------------------------------------------------
# What is searched


@dataclass(frozen=True)
class Target:
    """One search: the study's method over one (teacher-student pair, γ)."""

    pair: PairSpec
    gamma: float
    teacher: Trial  # the study's teacher trial for this pair, γ and the search's seed
    base: TrialConfig  # a search trial's config before the searched values are filled in
    key: str  # identity of the search: base config, teacher, space, sampler, pruner, metric (not the budget)

    @property
    def label(self) -> str:
        return f"{self.base.method} {self.pair.teacher}>{self.pair.student} g{self.gamma:g}"


def fixed_params(study: StudySpec) -> dict[str, Any]:
    """The method's values the study fixes (methods.<m>) and the search does not vary."""
    search = study.search
    given = study.methods.get(search.method, {})
    out = {}
    for key, value in given.items():
        if key in search.space or key == FROM_SEARCH:
            continue
        out[key] = value[0] if isinstance(value, list) else value
    return out


def targets(study: StudySpec, trials: list[Trial] | None = None) -> list[Target]:
    """The study's searches, in the order of its pairs and γ values."""
    search = study.search
    if search is None:
        raise UserError("the study has no search: block (method, space, trials, metric, sampler, pruner)")
    trials = trials if trials is not None else expand(study)
    seed = search.seed if search.seed is not None else study.seeds[0]
    spec_blob = search.model_dump(exclude={"trials"}, mode="json")
    out = []
    for gamma in study.dataset.gammas:
        for pair in study.pairs:
            teacher = _teacher_trial(study, trials, pair, gamma, seed)
            recipe = resolve_recipe(study.recipe.preset, {**study.recipe.overrides(), "eval_every": 1}, student=pair.student)
            params = full_params(study, search.method, fixed_params(study), pair.teacher, pair.student)
            base = replace(teacher.config, role="distill", model=pair.student, teacher=pair.teacher, seed=seed, method=search.method,
                           method_params=params, recipe=recipe, validation_per_class=search.validation_per_class)
            blob = json.dumps({"base": base.identity(), "teacher": teacher.config_hash, "search": spec_blob}, sort_keys=True)
            out.append(Target(pair, float(gamma), teacher, base, hashlib.sha256(blob.encode()).hexdigest()[:16]))
    return out


def _teacher_trial(study: StudySpec, trials: list[Trial], pair: PairSpec, gamma: float, seed: int) -> Trial:
    for t in trials:
        c = t.config
        if t.role == "teacher" and c.model == pair.teacher and c.gamma == gamma and c.seed == seed:
            return t
    raise UserError(f"search.seed = {seed}: the study has no teacher trial for it; use one of its seeds {study.seeds}")




def search_trial(target: Target, number: int, params: dict[str, Any], study: StudySpec) -> Trial:
    """The ltkd trial of Optuna's trial `number`: the base config with the proposed values. Its key
    is unique per (search, number), so two trials that propose one point stay two runs."""
    method = target.base.method
    point = {**fixed_params(study), **params}
    cfg = replace(target.base, method_params=full_params(study, method, point, target.pair.teacher, target.pair.student))
    ident = config_hash(cfg, target.teacher.config_hash)
    key = hashlib.sha256(f"{ident}:{target.key}:{number}".encode()).hexdigest()[:16]
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    label = f"{METHODS[method].display or method} #{number} ({shown})"  # the run's name starts with it
    return Trial(cfg, key, target.teacher.config_hash, label, f"search {target.label} #{number}")
