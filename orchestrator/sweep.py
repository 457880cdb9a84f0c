"""`ltkd sweep`: validate, plan, run on Ray, track in MLflow."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from orchestrator.errors import RunFailure, UserError
from orchestrator.plan import make_plan
from orchestrator.study import expand, load_study
from orchestrator.tracking import FINISHED, Tracker, check_reachable, git_commit, is_tracking_failure, resolve_tracking_uri


def _store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).expanduser().exists()
    return True


def browse_hint(uri: str, experiment: str, experiment_id: str) -> str:
    """How to look at the runs: the server's page, or the MLflow UI over the local store."""
    if uri.startswith(("http://", "https://")):
        return f"runs: experiment {experiment!r} at {uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    try:
        shown = os.path.relpath(mlflow_bin) if mlflow_bin.exists() else "mlflow"
    except ValueError:
        shown = str(mlflow_bin)
    return (f"runs: experiment {experiment!r} in {uri}. Browse them with `{shown} ui --backend-store-uri {uri}` "
            f"and open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")


def open_plan(study_path: str, tracking_uri: str | None, create: bool):
    """Validate the study and the tracking store (nothing written on bad input); return its plan."""
    study = load_study(study_path)
    trials = expand(study)
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    if not create and not _store_exists(uri):
        return study, uri, None, None, make_plan(trials, {})
    tracker = Tracker(uri)
    try:
        exp_id = tracker.experiment_id(study.name, create=create)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure here is the user's URI or server
        raise UserError(f"--tracking-uri {uri}: cannot use the tracking store ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    # Only identities and artifact locations are needed to plan: the fast reader, no params or metrics.
    return study, uri, tracker, exp_id, make_plan(trials, tracker.final_metrics_by_hash(exp_id, keys=[]))


def check_data(trials) -> None:
    """On one machine, read each dataset the trials need once before anything starts: missing or
    unreadable files are bad input (exit 2), not a failure of every trial after Ray has started.
    On a cluster the data may exist only on the workers, so this is left to the trials there."""
    from trainer.datasets import load_dataset

    seen = set()
    for t in trials:
        cfg = t.config
        key = (cfg.dataset, cfg.data_root, repr(sorted(cfg.dataset_options.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            load_dataset(cfg.dataset, root=cfg.data_root, **cfg.dataset_options)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            raise UserError(f"dataset {cfg.dataset!r}: {str(exc).splitlines()[0]}") from None
        except TypeError as exc:
            raise UserError(f"dataset.options {cfg.dataset_options}: {exc}") from None


def run_sweep(study_path: str, tracking_uri: str | None, address: str | None, dry_run: bool, storage: str | None, out=None) -> int:
    out = out or sys.stdout
    study, uri, tracker, exp_id, plan = open_plan(study_path, tracking_uri, create=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not storage:
        # Trials on other nodes persist their checkpoints to Tune's storage: a temporary folder on
        # this machine would fail them only after training.
        raise UserError(f"--address {address}: a Ray cluster needs --storage, a path every node sees "
                        "(a shared filesystem, or s3://... / gs://...)")
    print(f"study {study.name}: {plan.summary()}", file=out)
    if dry_run:
        for t in plan.trials:
            state = "done" if t.config_hash in plan.done else "to run"
            print(f"  {t.role:8s} {t.run_name:48s} {t.config_hash}  {state}", file=out)
        return 0
    if not plan.first_phase and not plan.second_phase:
        print("nothing to run: every trial has a FINISHED run", file=out)
        if exp_id is not None:
            print(browse_hint(uri, study.name, exp_id), file=out)
        return 0
    if not address:
        check_data(plan.trials)
    if tracker is None or exp_id is None:
        study, uri, tracker, exp_id, plan = open_plan(study_path, tracking_uri, create=True)

    from orchestrator.ray_runner import init_ray, run_trials

    print(f"tracking: {uri} (experiment {study.name!r}, id {exp_id}); ray: {address or 'local'}", file=out)
    stale = tracker.close_stale_runs(exp_id, {t.config_hash for t in plan.first_phase + plan.second_phase})
    if stale:
        print(f"closed {stale} run(s) left RUNNING by an earlier sweep that stopped (now KILLED)", file=out)
    init_ray(address)
    base_tags = {"study": study.name, "git_commit": git_commit(), "study_file": str(Path(study_path))}
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    total = len(plan.first_phase) + len(plan.second_phase)
    counter = {"n": 0}
    started = time.time()

    def on_done(o) -> None:
        counter["n"] += 1
        if o.status == FINISHED:
            m = o.metrics
            detail = f"all {m.get('acc_all', float('nan')):5.1f}  tail {m.get('acc_tail', float('nan')):5.1f}  ({m.get('train_seconds', 0):.1f} s)"
        else:
            detail = o.error
        print(f"[{counter['n']:>{len(str(total))}}/{total}] {o.status:8s} {o.trial.run_name:44s} {detail}", file=out, flush=True)

    try:
        outcomes = run_trials(plan.first_phase, tracker, exp_id, base_tags, resources, {}, on_done, storage, f"{study.name}-1")
        teacher_artifacts = {h: r.artifact_uri + "/checkpoint" for h, r in plan.done.items()}
        teacher_artifacts.update({h: o.artifact_uri + "/checkpoint" for h, o in outcomes.items() if o.status == FINISHED})
        runnable = [t for t in plan.second_phase if t.teacher_hash in teacher_artifacts]
        blocked = [t for t in plan.second_phase if t.teacher_hash not in teacher_artifacts]
        for t in blocked:
            counter["n"] += 1
            print(f"[{counter['n']}/{total}] SKIPPED  {t.run_name:44s} its teacher did not finish", file=out)
        outcomes.update(run_trials(runnable, tracker, exp_id, base_tags, resources, teacher_artifacts, on_done, storage, f"{study.name}-2"))
    except Exception as exc:  # noqa: BLE001 - only tracking failures are turned into a one-line exit 1
        if not is_tracking_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RunFailure(f"the tracking store at {uri} failed while the sweep ran ({first}); runs already FINISHED "
                         "are kept: rerun the same command once it is back") from None

    failed = [o for o in outcomes.values() if o.status != FINISHED]
    finished = len(outcomes) - len(failed)
    elapsed = time.time() - started
    print(f"done in {elapsed:.0f} s: {finished} finished, {len(failed)} failed, {len(blocked)} skipped, "
          f"{len(plan.done)} already done before.", file=out)
    print(browse_hint(uri, study.name, exp_id), file=out)
    missing = total - finished - len(failed) - len(blocked)
    if failed or blocked or missing:
        raise RunFailure(f"{len(failed)} failed, {len(blocked)} skipped, {missing} not run; rerun the same command to retry only those")
    return 0
