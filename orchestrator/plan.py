"""Order a study's trials (teachers first: distillation needs their checkpoints) and skip what is done."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.study import Trial
from orchestrator.tracking import RunRecord


@dataclass
class Plan:
    trials: list[Trial]
    done: dict[str, RunRecord]  # config_hash -> FINISHED run already tracked

    def _of(self, role: str) -> list[Trial]:
        return [t for t in self.trials if t.role == role]

    def todo(self, role: str) -> list[Trial]:
        return [t for t in self._of(role) if t.config_hash not in self.done]

    @property
    def first_phase(self) -> list[Trial]:
        """Teachers and Student (CE) baselines: they depend on nothing."""
        return self.todo("teacher") + self.todo("student")

    @property
    def second_phase(self) -> list[Trial]:
        return self.todo("distill")

    def summary(self) -> str:
        parts = []
        for role, label in (("teacher", "teacher"), ("student", "student"), ("distill", "distillation")):
            total = len(self._of(role))
            done = total - len(self.todo(role))
            parts.append(f"{total} {label} ({done} done)")
        todo = len(self.first_phase) + len(self.second_phase)
        return f"{len(self.trials)} trials: " + ", ".join(parts) + f"; {todo} to run"


def make_plan(trials: list[Trial], done: dict[str, RunRecord]) -> Plan:
    order = {"teacher": 0, "student": 1, "distill": 2}
    return Plan(sorted(trials, key=lambda t: order[t.role]), {h: r for h, r in done.items() if h in {t.config_hash for t in trials}})
