"""What reading a store gives back: a run's record and its state."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any



FINISHED = "FINISHED"
# A trial's outcomes that are not MLflow run statuses:
SKIPPED = "SKIPPED"  # not run: its teacher failed
PRUNED = "PRUNED"  # a search trial that ASHA stopped early (its run ends FINISHED, tagged pruned and search_state)


@dataclass
class RunRecord:
    run_id: str
    config_hash: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str


STATE_METRICS = ("acc_all", "acc_tail")  # the latest accuracies `RunState` carries


@dataclass
class RunState:
    """Where a trial's run stands, without its params: what `ltkd status` shows and what a sweep
    needs to continue an interrupted run."""

    run_id: str
    config_hash: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED (MLflow's run status)
    start_time: int  # ms since the epoch
    end_time: int | None  # ms; None while it runs
    error: str = ""  # the `error` tag: why it failed or was stopped
    attempts: int = 1  # the `attempts` tag: how many times the trial was started
    last_epoch: int = 0  # the step (epoch) of its latest `loss`; 0 before its first epoch
    metrics: dict[str, float] = field(default_factory=dict)  # latest values of STATE_METRICS it has


def _newest_per_hash(rows) -> dict[str, Any]:
    """config_hash -> the row of its newest FINISHED run, else of its newest run; `rows` are
    (run_id, config_hash, status, ...) newest first. A FINISHED run means the trial is done, even
    when a later attempt was stopped."""
    chosen: dict[str, Any] = {}
    for row in rows:
        old = chosen.get(row[1])
        if old is None or (row[2] == FINISHED and old[2] != FINISHED):
            chosen[row[1]] = row
    return chosen


def _int_tag(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default
