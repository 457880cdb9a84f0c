"""A study's trials with what is already done (FINISHED in the store); the schedule runs the rest."""
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

    def todo_all(self) -> list[Trial]:
        return [t for t in self.trials if t.config_hash not in self.done]

    def summary(self) -> str:
        parts = []
        for role, label in (("teacher", "teacher"), ("student", "student"), ("distill", "distillation")):
            total = len(self._of(role))
            done = total - len(self.todo(role))
            parts.append(f"{total} {label} ({done} done)")
        todo = len(self.todo_all())
        return f"{len(self.trials)} trials: " + ", ".join(parts) + f"; {todo} to run"


def make_plan(trials: list[Trial], done: dict[str, RunRecord]) -> Plan:
    order = {"teacher": 0, "student": 1, "distill": 2}
    planned = {t.config_hash for t in trials}
    return Plan(sorted(trials, key=lambda t: order[t.role]), {h: r for h, r in done.items() if h in planned})
