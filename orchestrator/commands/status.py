"""`ltkd status`: where each trial of a study stands.

Running trials show their last epoch and latest accuracy, failed ones why (their run's `error`
tag), distillation trials that cannot start because their teacher failed show as skipped, and
trials without a run as missing, or as queued while a sweep that will run them holds the study's
lease (a running trial whose last epoch is logged is shown finishing); done and queued trials are
only counted. Everything comes from one read of
the store (`Tracker.run_states`: a few SQL queries on a SQL store), so a study of 10,000 trials
answers in seconds.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator.errors import UserError, describe, first_line
from orchestrator.study import Trial
from orchestrator.commands.session import open_plan
from orchestrator.search.space import SEARCH_KEY_TAG, targets
from orchestrator.tracking import FINISHED, STUDY_PLAN, TEACHERS_PLAN, Lease, RunState

STATE_OF_STATUS = {FINISHED: "done", "RUNNING": "running", "SCHEDULED": "running", "FAILED": "failed", "KILLED": "failed"}
SUMMARY_STATES = ("done", "running", "failed", "missing")  # skipped trials have no run: counted as missing
LISTED_STATES = ("running", "failed", "skipped", "missing")  # the order trials are listed in
REASON_CHARS = 150


def trial_state(trial: Trial, states: dict[str, RunState]) -> str:
    """done, running, failed, skipped (no run, and its teacher's run FAILED) or missing."""
    state = states.get(trial.config_hash)
    if state is not None:
        return STATE_OF_STATUS.get(state.status, "missing")
    teacher = states.get(trial.teacher_hash) if trial.teacher_hash else None
    return "skipped" if teacher is not None and teacher.status == "FAILED" else "missing"


def reason(error: str) -> str:
    """The first line of a run's error tag, cut to REASON_CHARS characters."""
    first = first_line(error, len(error))
    return first if len(first) <= REASON_CHARS else first[:REASON_CHARS - 1] + "…"


def detail(trial: Trial, state: str, states: dict[str, RunState], names: dict[str, str]) -> str:
    """What a listed trial's line says after its name."""
    run = states.get(trial.config_hash)
    if state == "running":
        if run.last_epoch >= trial.config.recipe.epochs:  # trained: its end is on its way to the store
            return f"epoch {run.last_epoch}/{trial.config.recipe.epochs} done, finishing (final evaluation, checkpoint, end of run)"
        acc = "".join(f"  {label} {run.metrics[key]:.1f}" for label, key in (("all", "acc_all"), ("tail", "acc_tail")) if key in run.metrics)
        attempt = f"  (attempt {run.attempts})" if run.attempts > 1 else ""
        return f"epoch {run.last_epoch}/{trial.config.recipe.epochs}{acc}{attempt}"
    if state == "failed":
        why = reason(run.error)
        if run.status == "KILLED":  # a sweep was stopped (the next one continues it)
            stopped = f"stopped after epoch {run.last_epoch}/{trial.config.recipe.epochs}" if run.last_epoch else "stopped before its first epoch"
            return stopped + (f": {why}" if why else "")
        return why or "no error recorded"
    if state == "skipped":
        return f"its teacher failed ({names[trial.teacher_hash]})"
    return ""


def live_sweep(tracker, exp_id: str | None, study: str) -> dict | None:
    """The lease record of the sweep that holds the study now, if one does (None on any doubt:
    its trials are then missing, as before a sweep)."""
    if tracker is None or exp_id is None:
        return None
    try:
        return Lease(tracker, exp_id, study).live_holder()
    except Exception:  # noqa: BLE001 - an unreadable lease only costs the queued/missing distinction
        return None


def command(args) -> int:
    """`ltkd status`."""
    return show_status(args.study, args.tracking_uri)


def show_status(study_path: str, tracking_uri: str | None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    # A grid method that takes its values from a search not run yet is left out, not refused.
    study, uri, tracker, exp_id, plan = open_plan(study_path, tracking_uri, create=False, search_results_needed=False)
    states: dict[str, RunState] = {}
    if tracker is not None and exp_id is not None:
        try:
            states = tracker.run_states(exp_id)
        except Exception as exc:  # noqa: BLE001 - any store failure here is the user's URI or server
            raise UserError(f"--tracking-uri {uri}: cannot read the tracking store "
                            f"({describe(exc)})") from None
    names = {t.config_hash: t.run_name for t in plan.trials}
    sweeping = live_sweep(tracker, exp_id, study.name)
    by_state: dict[str, list[Trial]] = {s: [] for s in ("done", "queued", *LISTED_STATES)}
    for t in plan.trials:
        # plan.done is what a sweep would skip; a FINISHED run found since counts as done too
        state = "done" if t.config_hash in plan.done else trial_state(t, states)
        if state == "missing" and sweeping and (sweeping.get("plans") == STUDY_PLAN or
                                                 (sweeping.get("plans") == TEACHERS_PLAN and t.role == "teacher")):
            state = "queued"  # no run yet, and the sweep that holds the study will run it
        by_state[state].append(t)
    listed = [(s, t) for s in LISTED_STATES for t in by_state[s]]
    width = max((len(t.run_name) for _, t in listed), default=0)
    for state, t in listed:
        print(f"  {state:8s} {t.run_name:<{width}}  {detail(t, state, states, names)}".rstrip(), file=out)
    counts = {s: len(by_state[s]) for s in ("queued", *SUMMARY_STATES)}
    counts["missing"] += len(by_state["skipped"])
    shown = SUMMARY_STATES if sweeping is None else ("done", "running", "failed", "queued", "missing")
    print(f"study {study.name}: " + ", ".join(f"{counts[s]} {s}" for s in shown), file=out)
    if sweeping is not None:
        print(f"  (being swept now by host {sweeping.get('host')}, pid {sweeping.get('pid')}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(sweeping.get('started') or 0)))}"
              + ("; queued: trials it will run" if counts["queued"] else "") + ")", file=out)
    if by_state["skipped"]:
        print(f"  ({len(by_state['skipped'])} of the missing are skipped: their teacher failed)", file=out)
    if study.search is not None:
        for line in search_lines(study, tracker, exp_id):
            print(line, file=out)
    return 0


def search_lines(study, tracker, exp_id: str | None) -> list[str]:
    """One line per (pair, γ) search of the study: its trials by outcome, and its best point so far."""

    metric = study.search.metric
    lines = []
    for target in targets(study):
        counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
        best = None
        if tracker is not None and exp_id is not None:
            runs = tracker.runs_tagged(exp_id, {SEARCH_KEY_TAG: target.key, "role": "distill"}, max_results=50_000)
            for run in runs:
                status = run.info.status
                # Pruned runs end FINISHED (KILLED in stores written before): told apart by their tag.
                if run.data.tags.get("pruned") == "true" and status in (FINISHED, "KILLED"):
                    counts["pruned"] += 1
                elif status == FINISHED:
                    counts["complete"] += 1
                    value, number = run.data.metrics.get(metric), int(run.data.tags.get("search_trial", -1))
                    if value is not None and (best is None or (value, -number) > (best[0], -best[1])):
                        best = (value, number)  # ties: the earliest trial, as Optuna's best_trial and `ltkd best`
                elif status == "FAILED":
                    counts["failed"] += 1
                else:
                    counts["running"] += 1  # RUNNING, or KILLED by a stopped search: continued by the next one
        shown = ", ".join(f"{n} {k}" for k, n in counts.items())
        best_text = f"; best {metric} {best[0]:.2f} (trial #{best[1]})" if best else ""
        lines.append(f"search {target.label}: {shown} of {study.search.trials}{best_text}")
    return lines
