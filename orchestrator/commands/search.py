"""`ltkd search`: the study's teachers through the sweep, then its searches under the study's lease."""
from __future__ import annotations

import sys


from orchestrator.errors import RunFailure, UserError
from orchestrator.study import expand, load_study
from orchestrator.tracking import check_reachable, resolve_tracking_uri
from orchestrator.errors import redact_credentials
from orchestrator.words import count
from orchestrator.commands.options import check_duration, check_storage
from orchestrator.commands.session import browse_hint, leased_writer, spool_folder, start_ray, trial_tracker
from orchestrator.commands.sweep import run_sweep
from orchestrator.execution import leftovers
from orchestrator.tracking import Lease
from orchestrator.search.optuna_adapter import make_sampler, optuna_storage_uri
from orchestrator.search.space import targets


# ---------------------------------------------------------------------------------------------
# `ltkd search`


def command(args) -> int:
    """`ltkd search` (the cli has made SIGTERM an interrupt before importing this module)."""
    check_storage(args.storage)
    check_duration("--outage-limit", args.outage_limit, "minutes", zero_allowed=False)
    return run_search(args.study, args.tracking_uri, args.address, args.storage, args.optuna_storage,
                      outage_limit_s=args.outage_limit * 60)


def run_search(study_path: str, tracking_uri: str | None, address: str | None, storage: str | None,
               optuna_storage: str | None = None, out=None, outage_limit_s: float = 30 * 60.0) -> int:
    out = out or sys.stdout
    study = load_study(study_path, search_results_needed=False)
    if study.search is None:
        raise UserError(f"{study_path}: the study has no search: block; add one (method, space, trials, metric, sampler, "
                        "pruner) or run its grid with `ltkd sweep`")
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    trials = expand(study)
    chosen = targets(study, trials)
    ostorage = optuna_storage_uri(uri, optuna_storage)
    search = study.search
    make_sampler(search.sampler, 0)  # a sampler whose package is missing: refused before anything runs
    for target in chosen:
        if search.pruner == "asha" and search.grace_period >= target.base.recipe.epochs:
            raise UserError(f"search.grace_period = {search.grace_period}: the trials run {target.base.recipe.epochs} epochs; "
                            "ASHA can stop a trial only after its grace period: lower it, or use pruner: none")
    # The teachers first, through the sweep (they are the study's own teacher trials, shared with its grid).
    teachers = {t.teacher.config_hash for t in chosen}
    run_sweep(study_path, tracking_uri, address, False, storage, out=out, outage_limit_s=outage_limit_s, only=teachers,
              tables_every_s=0)
    tracker = trial_tracker(uri)
    exp_id = tracker.experiment_id(study.name, create=True)
    done = tracker.final_metrics_by_hash(exp_id, keys=[])
    missing = [t.teacher.run_name for t in chosen if t.teacher.config_hash not in done]
    if missing:
        raise RunFailure(f"no FINISHED teacher for {', '.join(missing)}; rerun `ltkd search` to train it again")
    lease = Lease(tracker, exp_id, study.name)
    lease.claim()
    try:
        lease.confirm()
        print(f"search {study.name}: {count(len(chosen), 'search', 'searches')} of {search.method} ({search.sampler}, "
              f"{'ASHA' if search.pruner == 'asha' else 'no pruning'}), {search.trials} trials each, maximising "
              f"{search.metric}; optuna storage {ostorage}", file=out, flush=True)
        ray_ready = False

        def ensure_ray() -> None:  # only when a search has trials to run (joined already if the sweep ran teachers)
            nonlocal ray_ready
            if not ray_ready:
                for line in leftovers.clean_after_killed_sweeps():
                    print(line, file=out, flush=True)
                start_ray(address, study.resources.cpu, study.resources.gpu, 0.0, out)
                ray_ready = True

        from orchestrator.search.driver import SearchContext, search_all  # Ray Tune: only once the search runs

        spool = spool_folder(storage, uri, study.name, exp_id)
        ctx = SearchContext(tracker, exp_id, uri, storage, done, out, outage_limit_s, ensure_ray,
                            open_writer=lambda on_warning: leased_writer(tracker, uri, spool, spool, lease, on_warning))
        failures = search_all(study, study_path, chosen, ostorage, ctx)
    finally:
        lease.release()
        leftovers.forget()
    print(browse_hint(uri, study.name, exp_id, study_path) + " (each search is a parent run; expand it for its trials)", file=out)
    print(f"best points: ltkd best {study_path}" + (f" --tracking-uri {redact_credentials(uri)}" if tracking_uri else ""), file=out)
    if failures:
        raise RunFailure(f"{failures} search trial(s) failed (their errors are on their runs); rerun to fill the budget "
                         "only if you raised it: failed trials count toward it")
    return 0
