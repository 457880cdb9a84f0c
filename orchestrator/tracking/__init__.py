"""Tracking: the only package that imports MLflow. Its modules, each with one job:

store (what a tracking URI is: resolved, checked, reachable; what a failed write says about it),
tracker (`Tracker`, the MLflow adapter), records (what reading runs gives back), layout (what a
trial's run holds: names, params, tags, metric and artifact names), runs (a sweep's trials as runs),
spool (the durable write queue and `RunStore`, the store contract it writes through), lease (one
sweep per study), checkpoints (checkpoint manifests and fetching a teacher's checkpoint).
"""
from orchestrator.tracking.checkpoints import CorruptCheckpoint, checkpoint_problem, fetch_checkpoint, write_manifest
from orchestrator.tracking.layout import (CELL_TAG, EPOCH_METRICS, NOTE_TAG, SPLIT_FILE, base_tags, dataset_input, epoch_metrics, experiment_url, git_commit,
                                          logged_value, param_str, run_name, runs_view_state, short_model, split_digest, system_sampler,
                                          teacher_link_tags, teacher_run_name, trial_params, trial_tags)
from orchestrator.tracking.lease import STUDY_PLAN, TEACHERS_PLAN, Lease, LeaseLost, lease_ttl, locked_store_line
from orchestrator.tracking.records import FINISHED, PRUNED, SKIPPED, RunRecord, RunState
from orchestrator.tracking.runs import ResumableRun, TrialRuns, resumable_runs
from orchestrator.tracking.spool import Fenced, RunStore, SpooledWriter, spooled_runs
from orchestrator.tracking.store import (DEFAULT_TRACKING_URI, absolute_store_uri, check_reachable, driver_calls_fail_fast, is_locked, is_transient_failure,
                                         resolve_tracking_uri, store_gone, store_identity, store_trouble, use_write_ahead_log)
from orchestrator.tracking.tracker import Tracker, filter_literal

__all__ = ["CELL_TAG", "DEFAULT_TRACKING_URI", "EPOCH_METRICS", "FINISHED", "NOTE_TAG", "PRUNED", "SKIPPED", "SPLIT_FILE", "STUDY_PLAN", "TEACHERS_PLAN", "CorruptCheckpoint", "Fenced", "Lease",
           "LeaseLost", "ResumableRun", "RunRecord", "RunState", "RunStore", "SpooledWriter", "Tracker", "TrialRuns",
           "absolute_store_uri", "base_tags", "check_reachable", "checkpoint_problem", "dataset_input", "driver_calls_fail_fast", "epoch_metrics", "experiment_url",
           "fetch_checkpoint", "filter_literal", "git_commit", "is_locked", "is_transient_failure", "lease_ttl", "locked_store_line",
           "logged_value", "param_str", "resolve_tracking_uri", "resumable_runs", "run_name", "runs_view_state", "short_model", "split_digest", "spooled_runs",
           "store_gone", "store_identity", "store_trouble", "system_sampler", "teacher_link_tags", "teacher_run_name", "trial_params",
           "trial_tags", "use_write_ahead_log", "write_manifest"]
