"""`ltkd sweep`: validate, plan, run on Ray, track in MLflow."""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from orchestrator.commands.session import (DEFAULT_OUTAGE_LIMIT_S, browse_hint, earlier_spools, leased_writer, legacy_spool_folders,
                                           ltkd_command, migrate_legacy_spools, open_plan, spool_folder, spool_root, start_ray, store_refused,
                                           sweep_spool)
from orchestrator.commands.options import check_duration, check_storage
from orchestrator.errors import RunFailure, UserError, first_line, redact_credentials
from orchestrator.execution import leftovers
from orchestrator.paths import writable_folder
from orchestrator.study import StudySpec, make_plan, teacher_logits_line
from orchestrator.tables.regenerate import TablesRefresher, finish_interrupted_tables, interrupted_tables_run
from orchestrator.tracking import (FINISHED, SKIPPED, STUDY_PLAN, TEACHERS_PLAN, Lease, LeaseLost, SpooledWriter, Tracker, TrialRuns, base_tags, driver_calls_fail_fast, is_locked,
                                   is_transient_failure, lease_ttl, locked_store_line, resolve_tracking_uri, runs_view_state,
                                   resumable_runs, spooled_runs, store_gone, store_trouble, use_write_ahead_log)
from trainer.datasets import load_dataset

DEFAULT_TABLES_EVERY_S = 10 * 60.0


def command(args) -> int:
    """`ltkd sweep` (the cli has made SIGTERM an interrupt before importing this module)."""
    if args.ship:
        os.environ["LTKD_SHIP"] = args.ship  # read where Ray is joined (orchestrator.execution.runtime_env)
    check_storage(args.storage)
    check_duration("--outage-limit", args.outage_limit, "minutes", zero_allowed=False)
    check_duration("--tables-every", args.tables_every, "minutes", zero_allowed=True)
    check_duration("--wait-for-resources", args.wait_for_resources, "minutes", zero_allowed=True)
    return run_sweep(args.study, args.tracking_uri, args.address, args.dry_run, args.storage, outage_limit_s=args.outage_limit * 60,
                     resource_wait_s=args.wait_for_resources * 60, retrain_teachers=args.retrain_teacher,
                     tables_every_s=args.tables_every * 60)


def check_data(trials) -> None:
    """On one machine, read each dataset the trials need once before anything starts: missing or
    unreadable files are bad input (exit 2), not a failure of every trial after Ray has started.
    On a cluster the data may exist only on the workers, so this is left to the trials there."""
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
            raise UserError(f"dataset {cfg.dataset!r}: {first_line(exc, 300) or type(exc).__name__}") from None
        except TypeError as exc:
            raise UserError(f"dataset.options {cfg.dataset_options}: {exc}") from None


def run_sweep(study_path: str, tracking_uri: str | None, address: str | None, dry_run: bool, storage: str | None, out=None,
              outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S, resource_wait_s: float = 0.0, retrain_teachers: list[str] | None = None,
              tables_every_s: float = DEFAULT_TABLES_EVERY_S, only: set[str] | None = None) -> int:
    """only: run just these trials (config hashes) of the study, and leave its tables alone (`ltkd search`
    trains the teachers it needs this way)."""
    out = out or sys.stdout
    study, uri, tracker, exp_id, plan = _only(only, *open_plan(study_path, tracking_uri, create=False, search_results_needed=only is None))
    retrain = teachers_to_retrain(plan.trials, retrain_teachers or [])
    lease_ttl()  # a garbled LTKD_LEASE_TTL_S is refused before anything runs
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not storage:
        # Trials on other nodes persist their checkpoints to Tune's storage: a temporary folder on
        # this machine would fail them only after training.
        raise UserError(f"--address {address}: a Ray cluster needs --storage, a path every node sees "
                        "(a shared filesystem, or s3://... / gs://...)")
    print(f"study {study.name}: {plan.summary()}", file=out)
    sharing = teacher_logits_line(plan.todo_all())
    if sharing:
        print(sharing, file=out)
    if dry_run:
        return _dry_run(plan, out)
    spellings = [resolve_tracking_uri(tracking_uri), uri]  # the earlier spool layout was named by the spelling
    spool = spool_folder(storage, uri, study.name, exp_id)
    legacy = legacy_spool_folders(storage, spellings, study.name) if exp_id is not None else []
    if not plan.todo_all() and not _has_queued_events(spool) and not any(spooled_runs(f) for f in legacy) and not retrain:
        print("nothing to run: every trial has a FINISHED run", file=out)
        if exp_id is not None:
            _close_orphans_alone(tracker, exp_id, study.name, out)
            _finish_tables_alone(study, plan.trials, tracker, exp_id, Path(spool + "-tables"), out, study_path)
            if only is None:  # `ltkd search` prints where its runs are once, at its end
                print(browse_hint(uri, study.name, exp_id, study_path), file=out)
        return 0
    _check_before_ray(study, plan, uri, tracker, exp_id, address, storage, retrain)
    try:
        for line in leftovers.clean_after_killed_sweeps():
            print(line, file=out, flush=True)
        # A search's teachers: its packing line comes once, when its own trials start.
        start_ray(address, study.resources.cpu, study.resources.gpu, resource_wait_s, out, packing=only is None)
        if tracker is None or exp_id is None:
            study, uri, tracker, exp_id, plan = _only(only, *open_plan(study_path, tracking_uri, create=True, search_results_needed=only is None))
            spool = spool_folder(storage, uri, study.name, exp_id)
        else:
            use_write_ahead_log(uri)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("before any trial started; nothing was marked KILLED: run the same command again") from None
    try:
        lease = Lease(tracker, exp_id, study.name, plans=STUDY_PLAN if only is None else TEACHERS_PLAN)
        lease.claim()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store went away between the plan and here
        raise store_refused(exc, uri, tracker, exp_id, study.name) from None
    leased = LeasedSweep(study, study_path, uri, tracker, exp_id, address, storage, spool, out, outage_limit_s, lease,
                         tables_every_s, tables=only is None, spellings=spellings, for_search=only is not None)
    try:
        return _run_leased(leased, plan, retrain)
    except LeaseLost as exc:
        raise RunFailure(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the driver's own store calls (plan, run states): one line
        failure = _store_failure(exc, leased)
        if failure is None:
            raise
        raise failure from None
    finally:
        lease.release()
        leftovers.forget()  # Ray stops with this process; its folder was removed by run_trials


def _dry_run(plan, out) -> int:
    try:
        for t in plan.trials:
            state = "done" if t.config_hash in plan.done else "to run"
            print(f"  {t.role:8s} {t.run_name:48s} {t.config_hash}  {state}", file=out)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("during the dry run; it writes nothing, and nothing was written") from None
    return 0


def _check_before_ray(study, plan, uri: str, tracker, exp_id, address: str | None, storage: str | None, retrain) -> None:
    """What would fail the sweep after Ray started, refused first (exit 2): the data (on one machine),
    the folders it writes, a read-only login, another sweep holding the study."""
    if not address:
        check_data(plan.trials)
    if storage and "://" not in storage:
        writable_folder(storage, "--storage")
    writable_folder(spool_root(storage), "--storage" if storage and "://" not in storage else "the tracking spool folder (under ~/.cache/ltkd)")
    if tracker is not None and exp_id is not None:
        try:
            tracker.check_write_access(exp_id, study.name, delete_runs=bool(retrain))
            Lease(tracker, exp_id, study.name).check()
        except Exception as exc:  # noqa: BLE001 - a SQLite store locked past MLflow's wait: say by whom
            if is_locked(exc):
                raise UserError(locked_store_line(uri, tracker, exp_id, study.name)) from None
            raise


def _store_failure(exc: BaseException, run: LeasedSweep) -> Exception | None:
    """A failure of the driver's own store calls while the sweep ran, as its one line (None: not the
    store's, raised as it is)."""
    if run.lease.lost is not None:
        return RunFailure(run.lease.lost)
    gone = store_gone(exc, run.uri)
    if gone:
        return RunFailure(f"{gone}; what was queued is kept in {run.spool}")
    if is_locked(exc):
        return UserError(locked_store_line(run.uri, run.tracker, run.exp_id, run.study.name))
    if not is_transient_failure(exc):
        return None
    first = first_line(exc, 300) or type(exc).__name__
    return RunFailure(f"the tracking store at {redact_credentials(run.uri)} failed while the sweep ran ({store_trouble(exc, run.uri)}: "
                      f"{first}); what was queued is kept in {run.spool}: rerun the same command once it is back")


def _only(only: set[str] | None, study, uri, tracker, exp_id, plan):
    if only is not None:
        plan = make_plan([t for t in plan.trials if t.config_hash in only], plan.done)
    return study, uri, tracker, exp_id, plan


def teachers_to_retrain(trials, given: list[str]) -> list:
    """The teacher trials that --retrain-teacher names (a config hash, or a unique start of one)."""
    teachers = [t for t in trials if t.role == "teacher"]
    chosen = []
    for prefix in given:
        match = [t for t in teachers if t.config_hash.startswith(prefix)] if len(prefix) >= 6 else []
        if len(match) != 1:
            shown = ", ".join(f"{t.config_hash} ({t.run_name})" for t in teachers[:6]) + (" …" if len(teachers) > 6 else "")
            problem = "names no teacher of this study" if not match else f"matches {len(match)} teachers; give more of the hash"
            raise UserError(f"--retrain-teacher {prefix}: {problem} (a config hash, at least 6 characters); its teachers: {shown or 'none'}")
        chosen += [t for t in match if t not in chosen]
    return chosen


def _close_orphans_alone(tracker, exp_id: str, study: str, out) -> None:
    """Every planned trial is done, yet a dead sweep of an earlier version of the study may have
    left runs RUNNING: close them under the study's lease (a live sweep's runs are its own)."""
    if not tracker.has_running(exp_id):
        return
    lease = Lease(tracker, exp_id, study)
    lease.claim()
    try:
        lease.confirm()
        closed = tracker.close_orphans(exp_id, keep=set())
        if closed:
            print(f"closed {len(closed)} run(s) that a sweep which died left RUNNING (now KILLED): "
                  f"{', '.join(closed[:5])}{' …' if len(closed) > 5 else ''}", file=out)
    finally:
        lease.release()


def _finish_tables_alone(study, trials, tracker, exp_id: str, tables_out: Path, out, study_path: str) -> None:
    """A sweep killed while it regenerated the final tables left the `tables` run RUNNING: regenerate it
    under the study's lease (`orchestrator.tables.regenerate.finish_interrupted_tables`)."""
    if not study.tables or interrupted_tables_run(tracker, exp_id, study.name) is None:
        return
    lease = Lease(tracker, exp_id, study.name)
    lease.claim()
    try:
        lease.confirm()
        line = finish_interrupted_tables(study, trials, tracker, exp_id, tables_out, _tables_command(study_path, tracker.uri))
        if line:
            print(line, file=out)
    finally:
        lease.release()


def _has_queued_events(study_spool: str) -> bool:
    return any(spooled_runs(folder) for folder in earlier_spools(study_spool, own=""))


def _read_state(tracker, exp_id, trials) -> tuple:
    """What is done, what is left, and which interrupted runs the trials left continue."""
    plan = make_plan(trials, tracker.final_metrics_by_hash(exp_id, keys=[]))
    todo = plan.todo_all()
    return plan, todo, resumable_runs(tracker.run_states(exp_id), {t.config_hash for t in todo})


@dataclass
class LeasedSweep:
    """A sweep once it holds the study's lease: where it writes and how it runs."""

    study: StudySpec
    study_path: str
    uri: str
    tracker: Tracker
    exp_id: str
    address: str | None
    storage: str | None  # Tune's storage (--storage); the spool sits beside it
    spool: str  # the study's spool folder
    out: TextIO
    outage_limit_s: float
    lease: Lease
    tables_every_s: float = 0.0
    tables: bool = True  # keep the study's tables current (not for `ltkd search`'s teachers)
    for_search: bool = False  # `ltkd search`'s teachers: their own words, and no browse line (the search prints it)
    spellings: list[str] = field(default_factory=list)  # how the URI was spelt: the earlier spool layout's names
    notes: list[str] = field(default_factory=list)  # the writers' and tables' lines, printed by the sweep
    writers: list[SpooledWriter] = field(default_factory=list)  # the replays' and this sweep's own, last

    def open_writer(self, folder: str) -> SpooledWriter:
        self.writers.append(leased_writer(self.tracker, self.uri, folder, self.spool, self.lease,
                                          lambda note: self.notes.append(redact_credentials(note))))
        return self.writers[-1]

    def outage_exceeded(self) -> bool:
        return bool(self.writers) and self.writers[-1].down_longer_than(self.outage_limit_s)

    def stop_now(self) -> bool:
        return self.outage_exceeded() or self.lease.lost is not None or any(w.fenced for w in self.writers)

    def lost_line(self) -> str | None:
        return self.lease.lost or next((w.fenced for w in self.writers if w.fenced), None)

    def print_notes(self) -> None:
        for note in self.notes:
            print(note, file=self.out, flush=True)
        self.notes.clear()


def _run_leased(run: LeasedSweep, plan, retrain=()) -> int:
    """Replay what earlier sweeps left, then train what is left, under the lease."""
    plan, todo, resumable = _settle(run, plan, retrain)
    print(f"tracking: {redact_credentials(run.uri)} (experiment {run.study.name!r}, id {run.exp_id}); ray: {run.address or 'local'}",
          file=run.out)
    run.tracker.describe_experiment(run.exp_id, run.study.description, runs_view_state(searched=run.study.search is not None))
    driver_calls_fail_fast()
    own_spool = sweep_spool(run.spool, run.lease)
    refresher = None
    runs = None
    try:
        plan, todo, resumable = _replay(run, own_spool, plan, todo, resumable)
        writer = run.open_writer(own_spool)
        _close_orphans(run, resumable)
        if not todo:
            return _nothing_left(run, plan)
        if resumable:
            print(f"continuing {len(resumable)} run(s) of trials that an earlier sweep did not finish", file=run.out)
        runs = TrialRuns(writer, run.exp_id, base_tags(run.study.name, str(Path(run.study_path))), resumable)
        refresher = _start_tables(run, plan) if run.tables else None
        started = time.time()
        outcomes = _train(run, todo, runs, writer, plan)
        # A sweep paused past its lease's expiry while its trials trained on (a driver's machine asleep,
        # the cluster's workers not) may have seen their ends with nothing left to write: not a success.
        run.lease.settle_pause()
        if run.lost_line():
            _stop_tables(refresher)
            raise RunFailure(_fenced_line(run.lost_line(), run.lease, run.spool))
        if run.outage_exceeded():
            raise RunFailure(_outage_line(run.uri, run.outage_limit_s, writer, run.spool))
        for note in run.notes:
            print(note, file=run.out)
        _final_tables(refresher, run.notes, run.out)
    except KeyboardInterrupt as exc:
        _interrupted(run, refresher, runs, exc)
        raise
    finally:
        _close_writers(run, own_spool)
    return _summary(run, plan, todo, outcomes, time.time() - started)


def _settle(run: LeasedSweep, plan, retrain):
    """The store read (again) while the lease settles (a sweep that ended meanwhile may have finished
    trials); the earlier layout's spools moved in to be replayed once; teachers to retrain retired."""
    plan, todo, resumable = _read_state(run.tracker, run.exp_id, plan.trials)
    run.lease.confirm()
    migrate_legacy_spools(run.storage, run.spellings or [run.uri], run.study.name, run.spool)
    if retrain:
        for t in retrain:
            deleted = run.tracker.retire_finished(run.exp_id, t.config_hash)
            what = f"its run(s) {', '.join(deleted)} moved to the experiment's trash" if deleted else "it had no FINISHED run"
            print(f"retraining teacher {t.run_name} ({t.config_hash}): {what}", file=run.out)
        plan, todo, resumable = _read_state(run.tracker, run.exp_id, plan.trials)
    return plan, todo, resumable


def _replay(run: LeasedSweep, own_spool: str, plan, todo, resumable):
    """What earlier sweeps queued, written first; the store read again when that finished some trials."""
    try:
        if _replay_earlier(run.spool, own_spool, run.open_writer, run.stop_now, run.uri, run.outage_limit_s, run.out):
            plan, todo, resumable = _read_state(run.tracker, run.exp_id, plan.trials)
        run.print_notes()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"while replaying the tracking writes of an earlier sweep; no trial had started, and what "
                                f"was not yet written stays in {run.spool}: run the same command again to go on") from None
    return plan, todo, resumable


def _close_orphans(run: LeasedSweep, resumable) -> None:
    closed = run.tracker.close_orphans(run.exp_id, keep={r.run_id for r in resumable.values()})
    if closed:
        print(f"closed {len(closed)} run(s) that a sweep which died left RUNNING and that this study no longer continues "
              f"(now KILLED): {', '.join(closed[:5])}{' …' if len(closed) > 5 else ''}", file=run.out)


def _nothing_left(run: LeasedSweep, plan) -> int:
    print("nothing to run: every trial has a FINISHED run", file=run.out)
    if run.tables and run.study.tables:
        line = finish_interrupted_tables(run.study, plan.trials, run.tracker, run.exp_id, Path(run.spool + "-tables"),
                                         _tables_command(run.study_path, run.uri))
        if line:
            print(line, file=run.out)
    if not run.for_search:
        print(browse_hint(run.uri, run.study.name, run.exp_id, run.study_path), file=run.out)
    return 0


def _tables_command(study_path: str | None, uri: str) -> str:
    return ltkd_command("tables", study_path, uri, "--out DIR")


def _start_tables(run: LeasedSweep, plan) -> TablesRefresher:
    """The study's tables, kept current in its MLflow `tables` run while trials finish."""
    refresher = TablesRefresher(run.study, plan.trials, run.tracker, run.exp_id, Path(run.spool + "-tables"), run.tables_every_s,
                                run.notes.append, files_command=_tables_command(run.study_path, run.uri))
    refresher.out.mkdir(parents=True, exist_ok=True)
    refresher.start()
    return refresher


def _train(run: LeasedSweep, todo, runs: TrialRuns, writer: SpooledWriter, plan) -> dict:
    """The trials on Ray, the progress view fed with the writer's state; ends once their tracking
    writes are in the store (or the store stays away too long)."""
    # Ray Tune (and the progress view) imported only here, where trials start: a dry run, a plan or
    # bad input never waits for it.
    from orchestrator.execution.progress import SweepProgress
    from orchestrator.execution.run import TuneRun, run_trials

    progress = SweepProgress(len(todo), out=run.out, pending={t.config_hash: (t.run_name, t.config.recipe.epochs) for t in todo},
                             label="teachers" if run.for_search else "sweep")
    last_poll = 0.0

    def poll(force: bool = False) -> None:
        nonlocal last_poll
        now = time.monotonic()
        if now - last_poll < 1.0 and not force:
            return
        last_poll = now
        while run.notes:
            progress.note(run.notes.pop(0))
        st = writer.state()
        down = None if st.down_since is None else time.monotonic() - (time.time() - st.down_since)
        progress.tracking_state(st.lag_s, st.pending_events, down, st.error, st.trouble)

    study = run.study
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    teacher_artifacts = {h: r.artifact_uri + "/checkpoint" for h, r in plan.done.items()}
    try:
        tune_run = TuneRun(study.name, resources, study.resources.max_retries, run.storage, run.uri, should_stop=run.stop_now)
        outcomes = run_trials(todo, runs, progress, teacher_artifacts, tune_run, poll=poll)
        while not writer.drained() and not run.stop_now():
            poll()
            time.sleep(0.1)
        poll(force=True)
    finally:
        progress.close()
    return outcomes


def _interrupted(run: LeasedSweep, refresher, runs, exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: the one line of a sweep that lost its lease, else what is queued flushed
    briefly (the rest stays for the next sweep) and the final tables; returns to re-raise `exc`."""
    run.lease.settle_pause()
    if run.lost_line():
        _stop_tables(refresher)
        raise RunFailure(_fenced_line(run.lost_line(), run.lease, run.spool)) from None
    if run.writers:
        run.writers[-1].flush(timeout=15)
    _final_tables(refresher, run.notes, run.out)
    if not str(exc) and not (runs is not None and runs.key_of):
        raise KeyboardInterrupt("before any trial had started; nothing was marked KILLED: run the same command again") from None


def _close_writers(run: LeasedSweep, own_spool: str) -> None:
    for w in run.writers:
        w.close()
    writer = run.writers[-1] if run.writers else None
    if writer is not None and run.lease.lost is None and not writer.fenced and os.path.isdir(own_spool) and not spooled_runs(own_spool):
        shutil.rmtree(own_spool, ignore_errors=True)  # all written: nothing for the next sweep to replay


def _summary(run: LeasedSweep, plan, todo, outcomes: dict, elapsed: float) -> int:
    counts = {s: sum(1 for o in outcomes.values() if o.status == s) for s in (FINISHED, "FAILED", SKIPPED)}
    print(f"{'teachers ' if run.for_search else ''}done in {elapsed:.0f} s: {counts[FINISHED]} finished, {counts['FAILED']} failed, "
          f"{counts[SKIPPED]} skipped, {len(plan.done)} already done before.", file=run.out)
    if not run.for_search:
        print(browse_hint(run.uri, run.study.name, run.exp_id, run.study_path), file=run.out)
    missing = len(todo) - sum(counts.values())
    if counts["FAILED"] or counts[SKIPPED] or missing:
        raise RunFailure(f"{counts['FAILED']} failed, {counts[SKIPPED]} skipped, {missing} not run; rerun the same command to retry only those")
    return 0


def _final_tables(refresher, notes: list[str], out) -> None:
    """The sweep ends (finished, failed or interrupted): its tables once more, plots included."""
    if refresher is None:
        return
    refresher.stop()  # a periodic regeneration under way ends here: its note is not the final one
    notes.clear()
    result = refresher.close()
    for note in notes:
        print(note, file=out, flush=True)  # a regeneration's note says where its tables are (not the internal folder)


def _outage_line(uri: str, limit_s: float, writer: SpooledWriter, spool: str) -> str:
    st = writer.state()
    what = "was unreachable" if st.trouble == "server unreachable" else f"could not take writes ({st.trouble})"
    return (f"the tracking store at {redact_credentials(uri)} {what} for more than {limit_s / 60:g} min ({st.error or 'no answer'}); "
            f"{st.pending_events} tracking events are kept in {spool}: rerun the same command once it is back "
            "(it writes them first, then continues the unfinished trials)")


def _fenced_line(why: str, lease: Lease, spool: str) -> str:
    """The sweep's one line once it may write no more: the lease lost (its runs go on in the sweep
    that took over), or the store gone."""
    if lease.lost is not None:
        return lease.lost
    return f"{why}; what was queued is kept in {spool}"


def _stop_tables(refresher) -> None:
    """A sweep that may not write: its periodic tables stop, and no final tables are written."""
    if refresher is not None:
        refresher.stop()


def _replay_earlier(study_spool: str, own: str, open_writer, stop_now, uri: str, outage_limit_s: float, out) -> bool:
    """Write what earlier sweeps of the study queued and did not write, folder by folder, under this
    sweep's lease (theirs are superseded); a folder written in full is removed. True when anything
    was replayed."""
    replayed = False
    for folder in earlier_spools(study_spool, own):
        writer = open_writer(folder)
        if writer.replayed:
            replayed = True
            print(f"replaying {writer.replayed} run(s) of tracking writes queued by an earlier sweep ({folder})", file=out, flush=True)
        if not writer.flush(give_up=stop_now):
            if writer.fenced:
                raise RunFailure(writer.fenced)
            raise RunFailure(_outage_line(uri, outage_limit_s, writer, folder))
        writer.forget_drained()
        writer.close()
        if folder != study_spool and not spooled_runs(folder):
            shutil.rmtree(folder, ignore_errors=True)
    return replayed
