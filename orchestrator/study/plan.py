"""A study's trials with what is already done (FINISHED in the store); the schedule runs the rest."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.study.expand import Trial
from orchestrator.words import count
from trainer.datasets import class_counts_of, data_path_of, long_tailed_counts
from trainer.methods import METHODS

# The in-memory readers' augmentation, RandomCrop(size, padding=4) then a flip: 9 x 9 offsets x 2, the
# rows per image of a teacher-logit table (`trainer.teacher_logits.variants_of`).
AUGMENTED_VARIANTS = 9 * 9 * 2


@dataclass
class Plan:
    trials: list[Trial]
    done: dict[str, Any]  # config_hash -> the FINISHED run already tracked (tracking's RunRecord)

    def _of(self, role: str) -> list[Trial]:
        return [t for t in self.trials if t.role == role]

    def todo(self, role: str) -> list[Trial]:
        return [t for t in self._of(role) if t.config_hash not in self.done]

    def todo_all(self) -> list[Trial]:
        return [t for t in self.trials if t.config_hash not in self.done]

    def summary(self) -> str:
        parts = []
        for role, label in (("teacher", "teacher"), ("student", "student"), ("distill", "distillation")):
            total = len(self._of(role))
            done = total - len(self.todo(role))
            parts.append(f"{total} {label} ({done} done)")
        todo = len(self.todo_all())
        return f"{count(len(self.trials), 'trial')}: " + ", ".join(parts) + f"; {todo} to run"


def make_plan(trials: list[Trial], done: dict[str, Any]) -> Plan:
    order = {"teacher": 0, "student": 1, "distill": 2}
    planned = {t.config_hash for t in trials}
    return Plan(sorted(trials, key=lambda t: order[t.role]), {h: r for h, r in done.items() if h in planned})


def _training_images(trial: Trial) -> int | None:
    """How many images the trial trains on, from its long-tailed profile (None where only files tell)."""
    c = trial.config
    counts = class_counts_of(c.dataset, c.dataset_options)
    if counts is None:
        return None
    available = [n - c.validation_per_class for n in counts]
    top = c.n_max if c.n_max is not None else min(available)
    return sum(long_tailed_counts(top, len(counts), c.gamma))


def teacher_logits_line(trials: list[Trial]) -> str | None:
    """What the teacher-logit tables save the trials to run (`recipe.teacher_logits`): students that
    gather their teacher's logits from a table built once per teacher and training set (on each node
    that trains them) instead of running the teacher every step; None when no trial takes one."""
    tables: dict[tuple, int] = {}  # (teacher, training set) -> the table's teacher forwards
    students, live_forwards = 0, 0
    for t in trials:
        c = t.config
        if t.role != "distill" or c.method not in METHODS or METHODS[c.method].needs_features:
            continue
        try:
            if data_path_of(c.dataset, c.recipe.data_path) != "device":
                continue
        except ValueError:
            continue
        variants = AUGMENTED_VARIANTS if c.augment_stream() is not None else 1
        if c.recipe.teacher_logits == "live" or (c.recipe.teacher_logits == "auto" and variants > c.recipe.epochs):
            continue
        images = _training_images(t)
        if images is None:
            continue
        key = (t.teacher_hash, c.dataset, c.gamma, c.split_seed, c.n_max, c.validation_per_class,
               json.dumps(c.dataset_options, sort_keys=True, default=str))
        tables[key] = images * variants
        students += 1
        live_forwards += images * c.recipe.epochs
    if not students:
        return None
    with_tables = sum(tables.values())
    return (f"teacher logits: {students} student{'s' * (students != 1)} read {len(tables)} table{'s' * (len(tables) != 1)} "
            f"({_count(with_tables)} teacher forwards per node that trains them) instead of {_count(live_forwards)} live forwards")


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)
