"""What `ltkd sweep` and `ltkd search` both set up: the plan against the store, the spool folders,
Ray, the study's leased writer, and the lines that tell a user where the runs are."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from orchestrator.errors import UserError, describe, first_line, redact_credentials, without_userinfo
from orchestrator.execution import cluster
from orchestrator.execution.packing import packing_lines
from orchestrator.study import expand, load_study, make_plan
from orchestrator.tables.plots import run_group_curves_png, run_per_class_png
from orchestrator.tracking.ui import ui_base_url
from orchestrator.tracking import (Fenced, Lease, LeaseLost, SpooledWriter, Tracker, absolute_store_uri, check_reachable,
                                   experiment_url, is_locked, is_transient_failure, locked_store_line, resolve_tracking_uri,
                                   spooled_runs, store_gone, store_identity, store_trouble, use_write_ahead_log)

DEFAULT_OUTAGE_LIMIT_S = 30 * 60.0


def store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).expanduser().exists()
    return True


def browse_hint(uri: str, experiment: str, experiment_id: str, study_path: str | None = None) -> str:
    """How to look at the runs: a link to the runs table in MLflow's model-training view, grouped by
    table cell (`experiment_url`), on the UI that serves the store (LTKD_UI_URL, the tracking server, or
    the one `ltkd ui` started); where none runs yet, the `ltkd ui` command that starts one."""
    base = ui_base_url(uri)
    if base is not None:
        where = "at" if uri.startswith(("http://", "https://")) else f"in {redact_credentials(uri)}, browse at"
        return f"runs: experiment {experiment!r} {where} {experiment_url(base, experiment_id)}"
    return f"runs: experiment {experiment!r} in {redact_credentials(uri)}; browse them with `{ltkd_command('ui', study_path, uri)}`"


def ltkd_command(verb: str, study_path: str | None, uri: str, *more: str) -> str:
    """The command a user types for `verb` on this study and store: `ltkd` as found on PATH (else this
    environment's, by its path), the study as given, --tracking-uri unless it is the default."""
    ltkd = shutil.which("ltkd")
    own = Path(sys.executable).with_name("ltkd")
    shown = "ltkd" if ltkd and own.exists() and Path(ltkd).resolve() == own.resolve() else str(own if own.exists() else "ltkd")
    store = "" if uri == absolute_store_uri(resolve_tracking_uri(None)) else f" --tracking-uri {redact_credentials(uri)}"
    return " ".join([f"{shown} {verb} {shlex.quote(study_path) if study_path else 'STUDY.yaml'}{store}", *more])


def trial_tracker(uri: str) -> Tracker:
    """The tracker of a command that writes trial runs: with the drawers of a run's figures."""
    return Tracker(uri, draw_per_class=run_per_class_png, draw_group_curves=run_group_curves_png)


def open_plan(study_path: str, tracking_uri: str | None, create: bool, search_results_needed: bool = True):
    """Validate the study and the tracking store (nothing written on bad input); return its plan."""
    study = load_study(study_path, search_results_needed)
    trials = expand(study)
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    # The default sqlite:///mlflow.db means the file in this folder: named by its absolute path from
    # here on (the plan line shows it, and the spool is keyed by it).
    uri = absolute_store_uri(uri)
    if not create and not store_exists(uri):
        return study, uri, None, None, make_plan(trials, {})
    tracker = trial_tracker(uri)
    exp_id = None
    try:
        exp_id = tracker.experiment_id(study.name, create=create)
        if create:
            use_write_ahead_log(uri)
        # Only identities and artifact locations are needed to plan: the fast reader, no params or metrics.
        return study, uri, tracker, exp_id, make_plan(trials, tracker.final_metrics_by_hash(exp_id, keys=[]))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure here is the user's URI or server
        raise store_refused(exc, uri, tracker, exp_id, study.name) from None


def store_refused(exc: BaseException, uri: str, tracker: Tracker | None, exp_id: str | None, study: str) -> UserError:
    """A store failure before any trial ran, as bad input: a SQLite store locked past MLflow's own
    20 s wait says who holds it; anything else is the user's URI or server."""
    if is_locked(exc):
        return UserError(locked_store_line(uri, tracker, exp_id, study))
    return UserError(f"--tracking-uri {redact_credentials(uri)}: cannot use the tracking store ({describe(exc)})")


def spool_root(storage: str | None) -> str:
    """Beside the Tune storage when that is a path, else the user's cache."""
    return (os.path.join(os.path.abspath(storage), "ltkd-spool") if storage and "://" not in storage
            else os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "spool"))


def _safe(study: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study)[:80]


def spool_folder(storage: str | None, uri: str, study: str, experiment_id: str | None = None) -> str:
    """The study's spool: one folder per (what the store is, experiment), however the URI is spelt
    (`store_identity`), so the next sweep of the study into that store, from any folder, replays it
    and a sweep into another store never does. Each sweep queues into its own subfolder
    (`sweep_spool`); the next one replays the others."""
    key = store_identity(uri) + "#" + (experiment_id or "")
    return os.path.join(spool_root(storage), f"{hashlib.sha256(key.encode()).hexdigest()[:12]}-{_safe(study)}")


def legacy_spool_folders(storage: str | None, spellings: list[str], study: str) -> list[str]:
    """Spool folders of the earlier layout (named from the URI's spelling alone) that may hold this
    study's events."""
    names = {f"{hashlib.sha256(u.encode()).hexdigest()[:12]}-{_safe(study)}" for u in spellings}
    return [os.path.join(spool_root(storage), n) for n in sorted(names) if os.path.isdir(os.path.join(spool_root(storage), n))]


def sweep_spool(study_spool: str, lease: Lease) -> str:
    """This sweep's own spool folder inside the study's: named by its lease token."""
    return os.path.join(study_spool, f"{SWEEP_SPOOL_PREFIX}g{lease.generation}-{lease.holder['id']}")

SWEEP_SPOOL_PREFIX = "sweep-"


def earlier_spools(study_spool: str, own: str) -> list[str]:
    """Folders of the study's spool that hold events of sweeps before this one (older tokens, the
    study folder itself for a writer that queues there directly, migrated folders)."""
    found = [study_spool] if spooled_runs(study_spool) else []
    if os.path.isdir(study_spool):
        for name in sorted(os.listdir(study_spool)):
            path = os.path.join(study_spool, name)
            if path != own and name.startswith((SWEEP_SPOOL_PREFIX, "legacy-")) and os.path.isdir(path):
                found.append(path)
    return found


def migrate_legacy_spools(storage: str | None, spellings: list[str], study: str, study_spool: str) -> list[str]:
    """Move folders of the earlier layout into the study's spool (as `legacy-NAME`), where the next
    replay writes them once; returns what was moved."""
    moved = []
    for old in legacy_spool_folders(storage, spellings, study):
        if os.path.abspath(old) == os.path.abspath(study_spool) or not spooled_runs(old):
            continue
        os.makedirs(study_spool, exist_ok=True)
        target = os.path.join(study_spool, "legacy-" + os.path.basename(old))
        if os.path.exists(target):
            continue
        os.rename(old, target)
        moved.append(old)
    return moved


def start_ray(address: str | None, cpu: float, gpu: float, wait_s: float, out, packing: bool = True) -> None:
    """Start or join Ray and make sure some node can run a trial of the study's size, before the
    store is written: a trial no node can hold would wait in Tune's queue forever. packing: print
    how many trials run at once."""
    try:
        cluster.init_ray(address)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise UserError(f"--address {address or '(local)'}: cannot start or join Ray ({first_line(exc, 300) or type(exc).__name__})") from None
    why = cluster.unsatisfiable(cpu, gpu)
    if why and wait_s > 0:
        print(f"waiting up to {wait_s / 60:g} min for a node with {cpu:g} CPU / {gpu:g} GPU ({why})", file=out, flush=True)
        deadline = time.monotonic() + wait_s
        while why and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            why = cluster.unsatisfiable(cpu, gpu)
    if why:
        raise UserError(f"resources: a trial asks for {cpu:g} CPU and {gpu:g} GPU on one node, and {why}; lower resources.cpu/gpu "
                        "in the study, add a node that size, or pass --wait-for-resources MINUTES to an autoscaling cluster")
    if packing:  # how many trials run at once, before any starts
        for line in packing_lines(cluster.largest_nodes(), cpu, gpu):
            print(line, file=out, flush=True)


def leased_writer(tracker, uri: str, folder: str, study_spool: str, lease: Lease, on_warning) -> SpooledWriter:
    """A spooled writer into `folder` whose every store call is made under the sweep's lease token,
    that refuses runs queued for another store and says what a failed write means."""
    def fence(decisive: bool) -> None:
        try:
            lease.check_current(decisive)
        except LeaseLost as exc:
            raise Fenced(str(exc)) from None

    return SpooledWriter(tracker, folder, workers=4, is_transient=is_transient_failure, on_warning=on_warning,
                         store_identity=store_identity(uri), fence=fence, describe=lambda exc: store_trouble(exc, uri),
                         is_fatal=lambda exc: store_gone(exc, uri), quarantine=os.path.join(study_spool, "quarantine"),
                         may_queue=lease.settle_pause)
