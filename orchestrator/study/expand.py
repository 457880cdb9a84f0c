"""A study expanded into trials (teachers first), each with its identity hash."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any


from orchestrator.errors import UserError
from trainer.config import TrialConfig
from trainer.recipes import resolve_recipe
from trainer.methods import METHODS
from orchestrator.study.rows import FROM_SEARCH, full_params, gamma_text, method_rows
from orchestrator.study.schema import PairSpec, StudySpec


# ---------------------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True)
class Trial:
    """One planned trial: its configuration, identity and how tables and people refer to it."""

    config: TrialConfig
    config_hash: str
    teacher_hash: str | None  # the teacher trial whose checkpoint a distillation trial needs
    row: str  # table row: "Teacher", "Student", "KD", "LTKD", "LTKD (beta=2)", ...
    run_name: str

    @property
    def role(self) -> str:
        return self.config.role


def config_hash(config: TrialConfig, teacher_hash: str | None = None) -> str:
    """Identity of a trial: sha256 over what decides its result (`TrialConfig.identity`) and its teacher's."""
    ident = config.identity()
    ident["teacher_hash"] = teacher_hash
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]




def _searched_point(study: StudySpec, method: str, pair: PairSpec, gamma: float) -> dict[str, Any] | None:
    if method in study._search_points and study._search_points[method] is None:
        return None
    points = study._search_points.get(method)
    if points is None:
        raise UserError(f"methods.{method}.{FROM_SEARCH}: the search's file was not read (load the study with load_study)")
    return points[(pair.teacher, pair.student, float(gamma))]



def expand(study: StudySpec, data_root: str | None = None) -> list[Trial]:
    """All trials of the study, teachers first, each once (shared teachers and students deduplicated)."""
    ds = study.dataset
    preset, overrides = study.recipe.preset, study.recipe.overrides()
    teacher_recipe = resolve_recipe(preset, {**overrides, **study.teacher_recipe.overrides()})
    root = data_root or ds.root
    if root is not None:
        # Relative to where the sweep runs, made absolute here: Ray workers run in other folders.
        root = os.path.abspath(os.path.expanduser(root))
    common = dict(dataset=ds.name, dataset_options=dict(ds.options), n_max=ds.n_max, split_seed=ds.split_seed, data_root=root)
    teachers: dict[str, Trial] = {}
    students: dict[str, Trial] = {}
    distills: dict[str, Trial] = {}
    for gamma in ds.gammas:
        for seed in study.seeds:
            for pair in study.pairs:
                recipe = resolve_recipe(preset, overrides, student=pair.student)
                tcfg = TrialConfig(role="teacher", gamma=gamma, model=pair.teacher, seed=seed, recipe=teacher_recipe, **common)
                th = config_hash(tcfg)
                teachers.setdefault(th, Trial(tcfg, th, None, "Teacher", f"teacher {pair.teacher} g{gamma_text(gamma)} s{seed}"))
                if study.student_baseline:
                    scfg = TrialConfig(role="student", gamma=gamma, model=pair.student, seed=seed, recipe=recipe, **common)
                    sh = config_hash(scfg)
                    students.setdefault(sh, Trial(scfg, sh, None, "Student", f"student {pair.student} g{gamma_text(gamma)} s{seed}"))
                for label, method, point in method_rows(study):
                    if FROM_SEARCH in study.methods[method]:
                        searched = _searched_point(study, method, pair, gamma)
                        if searched is None:
                            continue
                        point = {**point, **searched}
                    params = full_params(study, method, point, pair.teacher, pair.student)
                    if not METHODS[method].needs_teacher:
                        # A teacher-free method (balanced softmax, ...) is another Student row.
                        bcfg = TrialConfig(role="student", gamma=gamma, model=pair.student, seed=seed, method=method,
                                           method_params=params, recipe=recipe, **common)
                        bh = config_hash(bcfg)
                        name = f"{method}{label[len(METHODS[method].display or method):]} {pair.student} g{gamma_text(gamma)} s{seed}"
                        students.setdefault(bh, Trial(bcfg, bh, None, label, name))
                        continue
                    dcfg = TrialConfig(
                        role="distill", gamma=gamma, model=pair.student, seed=seed, method=method,
                        method_params=params, teacher=pair.teacher, recipe=recipe, **common,
                    )
                    dh = config_hash(dcfg, th)
                    suffix = label[len(METHODS[method].display or method):]
                    name = f"{method}{suffix} {pair.teacher}>{pair.student} g{gamma_text(gamma)} s{seed}"
                    distills.setdefault(dh, Trial(dcfg, dh, th, label, name))
    return [*teachers.values(), *students.values(), *distills.values()]
