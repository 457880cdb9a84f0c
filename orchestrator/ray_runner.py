"""The only Ray adapter: one Ray Tune run per sweep, which releases each trial when its dependencies are done.

A searcher (`DependencySearcher`) hands Tune the next runnable trial whenever a slot frees: teachers
first, a distillation trial as soon as its own teacher has finished (other teachers may still be
training), Student baselines to fill what is left. A trial whose worker dies (killed, out of memory,
node lost) is retried by Tune up to `max_retries` times and resumes from its last saved state; a
deterministic error (NaN loss, a bad checkpoint, bad data) is reported as the trial's result and not
retried. Trials send per-epoch metrics with `tune.report`; a callback in the driver moves them to the
run layout in `orchestrator.tracking` (which queues them on disk, never waiting on the network) and to
the progress view. A teacher trained in this sweep reaches its students through its Tune checkpoint
(on the Tune storage, shared on a cluster), so students start even while the tracking store is down.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Tune's own CSV/JSON/TensorBoard loggers would duplicate what MLflow records.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

from orchestrator.study import Trial  # noqa: E402
from orchestrator.tracking import FINISHED, TrialRuns  # noqa: E402
from orchestrator.errors import error_line, redact_credentials

FINAL_KEY = "ltkd_final"
ERROR_KEY = "ltkd_error"
# Errors that would happen again on a retry: the trial is failed at once, not retried.
DETERMINISTIC_ERRORS = (FloatingPointError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, AssertionError)


def _train_one(tune_config: dict[str, Any], tracking_uri: str | None = None) -> None:
    """The Tune trainable: runs in a Ray worker. Trainer + teacher fetch; no MLflow writes.
    `tracking_uri`: the store's URI with its password, through Ray's object store (`fit_trials`)."""
    import ray
    import torch
    from ray import tune

    from orchestrator.errors import error_line
    from orchestrator.tracking import fetch_checkpoint, write_manifest
    from trainer.config import TrialConfig
    from trainer.loop import run_trial

    from orchestrator.tracking import split_digest, system_sampler

    payload = tune_config["payload"]
    torch.set_num_threads(max(1, int(payload.get("cpus", 1))))
    from orchestrator.packing import cap_gpu_memory

    cap_gpu_memory(payload.get("gpus", 0))  # a packed trial keeps to its share of the GPU's memory
    system_metrics = system_sampler()
    started = time.time()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    first = [True]

    # A search trial evaluates on its validation split: its accuracies are val_acc_*, never acc_*.
    prefix = "val_" if payload["config"].get("validation_per_class") else ""

    def epoch_metrics(ep) -> dict:
        metrics = {"epoch": ep.epoch, "loss": ep.loss, "lr": ep.lr,
                   **({prefix + k: v for k, v in ep.eval.metrics().items()} if ep.eval else {})}
        metrics.update({f"loss_{k}": v for k, v in ep.terms.items()})
        return metrics

    def report_epoch(ep) -> None:
        metrics = {**epoch_metrics(ep), **system_metrics()}
        if first[0]:  # where this attempt runs, and the epoch it resumed after
            metrics.update(where, first_epoch=ep.epoch)
            first[0] = False
        tune.report(metrics)

    def report_saved_epoch(ep) -> None:  # an epoch of the resumed state: the driver keeps it if it lacks it
        tune.report(epoch_metrics(ep))

    # Resumable state lives under the resume root keyed by the trial's identity, so a trial whose
    # worker died (retried by Tune) or whose sweep stopped (run again) continues there.
    resume_dir = os.path.join(payload["resume_root"] or _worker_resume_root(), payload["config_hash"])
    try:
        config = TrialConfig.from_dict(payload["config"])
        teacher_dir = None
        if payload.get("teacher_checkpoint") is not None:
            teacher_dir = _local_checkpoint(payload["teacher_checkpoint"], payload["config_hash"])
        elif payload.get("teacher_artifact"):
            teacher_dir = fetch_checkpoint(payload["teacher_artifact"], tracking_uri or payload["tracking_uri"],
                                           teacher_hash=payload.get("teacher_hash"))
        keep = payload.get("keep_checkpoint", True)  # a search trial's weights are not kept
        with tempfile.TemporaryDirectory(prefix="ltkd-ckpt-") as ckpt:
            result = run_trial(config, report=report_epoch, teacher_checkpoint=teacher_dir, checkpoint_dir=ckpt if keep else None,
                               resume_dir=resume_dir, saved_report=report_saved_epoch,
                               teacher_logits_dir=_worker_teacher_logits_root())
            final = {
                "epoch": result.epochs,
                **{prefix + k: v for k, v in result.final.metrics().items()},
                **{f"best_{prefix}{k}": v for k, v in result.best.metrics().items()},
                "best_epoch": result.best_epoch,
                "train_seconds": time.time() - started,
                "teacher_logits": result.teacher_logits,  # live, or its table built here or read from the node's cache
                **{f"pg_{split}_{group}": v for split, groups in result.group_probability.items() for group, v in groups.items()},
                FINAL_KEY: {
                    "per_class": result.final.per_class,
                    "best_per_class": result.best.per_class,
                    "class_counts": result.class_counts,
                    "split_digest": split_digest(result.train_indices),
                },
            }
            # The long-tailed choice of images, recorded beside the weights so the split can be rebuilt anywhere
            # (a search trial keeps no weights: its split, with the held-out validation images, goes to its run).
            split = {"dataset": config.dataset, "gamma": config.gamma, "split_seed": config.split_seed,
                     "class_counts": result.class_counts, "train_indices": result.train_indices}
            if config.validation_per_class:
                split.update(validation_per_class=config.validation_per_class, validation_indices=result.validation_indices)
            if keep:
                with open(os.path.join(ckpt, "long_tailed_split.json"), "w") as f:
                    json.dump(split, f)
                write_manifest(ckpt)
            else:
                final[FINAL_KEY]["split"] = split
            if first[0]:  # the attempt resumed a state saved after the last epoch: nothing was left to train
                final.update(where, first_epoch=result.epochs + 1)
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(ckpt) if keep else None)
    except DETERMINISTIC_ERRORS as exc:
        # Reported, not raised: Tune retries what raises, and this would fail the same way again.
        tune.report({ERROR_KEY: error_line(exc, 2000), **where})
        return
    # The final weights now travel through the Tune checkpoint; the resumable state is done.
    shutil.rmtree(resume_dir, ignore_errors=True)


def _local_checkpoint(checkpoint, key: str) -> str:
    """A teacher's Tune checkpoint as a local folder: the path itself on a local or shared
    filesystem, else a download (object-store storage) into this node's cache."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and os.path.isdir(checkpoint.path):
        return checkpoint.path
    target = os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "tune-checkpoints", key)
    if not (os.path.isdir(target) and os.listdir(target)):
        checkpoint.to_directory(target)
    return target


def _worker_resume_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "resume")


def _worker_teacher_logits_root() -> str:
    """This node's teacher-logit tables (`trainer.teacher_logits`): the students of a teacher that run
    on the node share the one its first student built."""
    return os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "teacher-logits")


def default_resume_root(storage_path: str | None) -> str | None:
    """Where trials keep resumable state: beside the Tune storage when it is a path (shared storage
    on a cluster, so a retry on another node resumes too), else None: the worker's own cache."""
    if storage_path and "://" not in storage_path:
        return os.path.join(os.path.abspath(storage_path), "ltkd-resume")
    return None  # no storage, or an object-store URI (torch.save needs a filesystem): per node


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED | FAILED | KILLED | SKIPPED
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


# ---------------------------------------------------------------------------------------------
# The schedule: which trial runs next.


class Schedule:
    """The sweep's trials and their dependencies; shared by the searcher and the callback (both run
    on Tune's event loop, so no lock)."""

    def __init__(self, trials: list[Trial], teacher_artifacts: dict[str, str], payload: Callable[[Trial, dict], dict],
                 on_skip: Callable[[Trial, str], None]):
        # teachers first (they unblock students), distillation next, Student baselines fill slots
        rank = {"teacher": 0, "distill": 1, "student": 2}
        self.pending = sorted(trials, key=lambda t: rank[t.role])
        self.payload = payload
        self.on_skip = on_skip
        self.teacher_sources: dict[str, dict] = {h: {"teacher_artifact": uri, "teacher_hash": h} for h, uri in teacher_artifacts.items()}
        self.failed: set[str] = set()
        self.by_trial_id: dict[str, Trial] = {}

    def next_trial(self) -> Trial | None:
        """The first pending trial that can run now (removed from pending), or None."""
        self.skip_blocked()
        for t in self.pending:
            if t.role != "distill" or t.teacher_hash in self.teacher_sources:
                self.pending.remove(t)
                return t
        return None

    def teacher_done(self, trial: Trial, checkpoint) -> None:
        if trial.role == "teacher" and checkpoint is not None:
            self.teacher_sources[trial.config_hash] = {"teacher_checkpoint": checkpoint}

    def trial_failed(self, trial: Trial) -> None:
        self.failed.add(trial.config_hash)
        self.skip_blocked()

    def skip_blocked(self) -> None:
        """The students of a failed teacher are skipped at once, not when a slot frees."""
        for t in [t for t in self.pending if t.role == "distill" and t.teacher_hash in self.failed]:
            self.pending.remove(t)
            self.on_skip(t, "its teacher did not finish")


class DependencySearcher(Searcher):
    """Releases a trial to Tune only when it can run; FINISHED once every trial is released."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        trial = self.schedule.next_trial()
        if trial is None:
            return Searcher.FINISHED if not self.schedule.pending else None
        self.schedule.by_trial_id[trial_id] = trial
        sources = self.schedule.teacher_sources.get(trial.teacher_hash or "", {})
        return {"payload": self.schedule.payload(trial, sources)}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass  # the callback records outcomes: it sees the checkpoint and the reported error

    # ltkd does not restore Tune experiments (a rerun skips finished trials and resumes the others),
    # and the schedule holds live references: nothing to save.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self):
        return {}


class OutageStopper(Stopper):
    """Stops the whole Tune run when `should_stop()` says so (tracking down past its limit, Ctrl-C)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.should_stop()

    def __getstate__(self):
        return {}


def _trial_error_line(trial) -> str:
    """'ExceptionType: message' of the error that ended a trial, from Tune's local error files."""
    import ray.cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            exc = ray.cloudpickle.load(f)
        exc = getattr(exc, "cause", None) or exc  # RayTaskError wraps the trial's own exception
        return error_line(exc)
    except Exception:  # noqa: BLE001 - best effort: fall back to the last line of the text trace
        try:
            with open(trial.error_file) as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith((" ", "Traceback"))]
            return lines[-1][:600] if lines else ""
        except Exception:  # noqa: BLE001
            return ""


class SweepCallback(Callback):
    """Driver side: Tune trial events -> the trial runs (tracking) and the progress view."""

    def __init__(self, schedule: Schedule, runs: TrialRuns, progress, outcomes: dict[str, Outcome], max_attempts: int,
                 poll: Callable[[], None] | None = None):
        self.schedule = schedule
        self.runs = runs
        self.progress = progress
        self.outcomes = outcomes
        self.max_attempts = max_attempts
        self.poll = poll or (lambda: None)
        self.final: dict[str, dict] = {}
        self.errors: dict[str, dict] = {}
        self.tries: dict[str, int] = {}  # attempts in this sweep (the run's `attempts` tag counts all)

    def __getstate__(self):
        # Tune pickles its run config (callbacks included) for experiment restore, which ltkd does
        # not use: keep the live writer and console out.
        return {}

    def _trial(self, tune_trial) -> Trial | None:
        return self.schedule.by_trial_id.get(tune_trial.trial_id)

    def _record(self, outcome: Outcome, detail: str) -> None:
        self.outcomes[outcome.trial.config_hash] = outcome
        self.progress.trial_done(outcome.trial.config_hash, outcome.status, detail)

    def on_step_begin(self, iteration, trials, **info):
        self.poll()

    def on_trial_start(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        self.runs.started(t)
        self.progress.trial_started(t.config_hash, t.run_name, t.config.recipe.epochs, self.tries.get(t.config_hash, 1))

    def on_trial_recover(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        reason = _trial_error_line(trial) or "the trial's worker died"
        self.runs.retried(t, reason)
        self.tries[t.config_hash] = self.tries.get(t.config_hash, 1) + 1
        self.progress.trial_retry(t.config_hash, self.tries[t.config_hash], self.max_attempts, reason)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self._trial(trial)
        if t is None:
            return
        if "first_epoch" in result:  # the attempt's first report (its final one, when it resumed a finished state)
            attempt = self.runs.attempts.get(t.config_hash, 1)
            where = {"node_id": result.get("node_id"), "pid": result.get("pid"), f"attempt_{attempt}_node_id": result.get("node_id")}
            if result["first_epoch"] > 1:
                where["resumed_after_epoch"] = result["first_epoch"] - 1
            self.runs.set_tags(t, where)
        if FINAL_KEY in result:
            self.final[trial.trial_id] = result
            return
        if ERROR_KEY in result:
            self.errors[trial.trial_id] = result
            return
        if self.runs.epoch(t, result):
            self.progress.trial_epoch(t.config_hash, int(result["epoch"]), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        final = self.final.pop(trial.trial_id, None)
        error = self.errors.pop(trial.trial_id, None)
        if final is None:
            reason = error[ERROR_KEY] if error else "trial ended without a final report"
            self.runs.ended(t, "FAILED", reason)
            self.schedule.trial_failed(t)
            self._record(Outcome(t, "FAILED", error=reason), reason)
            return
        payload = final[FINAL_KEY]
        summary = {k: final[k] for k in final if k.startswith(("acc_", "val_", "best_", "pg_")) or k == "train_seconds"}
        if t.role == "distill" and "teacher_logits" in final:
            self.runs.set_tags(t, {"teacher_logits": final["teacher_logits"]})
        # the checkpoint is copied into the spool while it is a local folder (a download for remote storage)
        with trial.checkpoint.as_directory() if trial.checkpoint is not None else contextlib.nullcontext() as local:
            self.runs.finished(t, summary, int(final["epoch"]), payload["per_class"], payload["best_per_class"],
                               payload["class_counts"], local, digest=payload.get("split_digest"), split=payload.get("split"))
        self.schedule.teacher_done(t, trial.checkpoint)
        p = "val_" if "val_acc_all" in summary else ""  # a search trial: validation accuracy
        detail = (f"{'val ' if p else ''}all {summary.get(p + 'acc_all', math.nan):5.1f}  tail {summary.get(p + 'acc_tail', math.nan):5.1f}  "
                  f"({summary.get('train_seconds', 0):.1f} s)")
        self._record(Outcome(t, FINISHED, summary), detail)

    def on_trial_error(self, iteration, trials, trial, **info):
        t = self._trial(trial)
        if t is None:
            return
        err = _trial_error_line(trial) or "trial raised an error (see the Ray logs)"
        attempts = self.runs.attempts.get(t.config_hash, 1)
        if attempts > 1:
            err = f"{err} (after {attempts} attempts)"
        self.runs.ended(t, "FAILED", err)
        self.schedule.trial_failed(t)
        self._record(Outcome(t, "FAILED", error=err), err)


# ---------------------------------------------------------------------------------------------


RAY_PROBE_TIMEOUT_S = 5.0


def check_ray_address(address: str, timeout_s: float = RAY_PROBE_TIMEOUT_S) -> None:
    """Something answers at a Ray address (`host:port`, `ray://host:port`), else ConnectionError within
    seconds: ray.init retries an address where nothing listens for minutes, logging GCS warnings.
    "auto" (the cluster this machine's `ray start` wrote down) is left to Ray."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if not host or port is None:
        raise ValueError(f"not a Ray address: give HOST:PORT (the head's GCS, default port 6379) or ray://HOST:PORT "
                         "(Ray Client, default port 10001)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {host} ({exc.strerror or exc})") from None
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConnectionError(f"nothing answers at {host}:{port} ({why} within {timeout_s:g} s); is the Ray head up?") from None


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        check_ray_address(address)
    from orchestrator.runtime_env import cluster_runtime_env

    with _sigterm_deferred_during_ray_init():
        _ray_init(address, num_cpus, cluster_runtime_env)


@contextlib.contextmanager
def _sigterm_deferred_during_ray_init():
    """A SIGTERM while Ray starts is handled once it has started, by the handler that was in place
    (`ltkd sweep`'s: stop as Ctrl-C does, exit 143).

    Left to Ray, it ended the sweep two other ways, depending on when it came: ray.init installs a
    handler that calls sys.exit(15) in the middle of the start (exit 15, no message, Ray half up),
    and the driver's core worker installs a native failure-signal handler that prints a stack and
    aborts (exit 134). The longer Ray takes to start (a loaded machine), the likelier either was.
    So, in this process only: the native handler is not installed (its workers keep theirs), and
    Ray's Python handler is not installed while our own records the signal until ray.init returns."""
    import signal
    import threading

    import ray._private.ray_constants as ray_constants
    import ray._private.utils as ray_utils

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; Ray does not install its own either
        return
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the driver's core worker is built
    handler = signal.getsignal(signal.SIGTERM)
    received: list[int] = []
    install_ray_handler = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda _handler: None
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = install_ray_handler
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    if received:
        if callable(handler):
            handler(signal.SIGTERM, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signal.SIGTERM)


def _ray_init(address: str | None, num_cpus: int | None, cluster_runtime_env) -> None:
    import ray

    if address:
        # Workers fetch teacher checkpoints from MLflow: hand them the driver's MLflow credentials.
        env_vars = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI"}
        # ... and the project's code (workers may not have it), see orchestrator.runtime_env.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env=cluster_runtime_env(env_vars))
    else:
        from orchestrator import leftovers

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # "local": a Ray of our own even where `ray start` left a cluster on this machine (ray.init() with
        # no address would join the newest one through /tmp/ray/ray_current_cluster).
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                           log_to_driver=False)
        # This Ray is ours: should the sweep be SIGKILLed, the next one stops what is left of it.
        leftovers.record(session_dir=context.address_info.get("session_dir") or "")


def cluster_slots(cpu: float, gpu: float) -> int:
    """How many trials of this size the cluster's alive nodes hold at once (each trial on one node;
    a fractional GPU request on one GPU: `orchestrator.packing.trials_per_node`)."""
    from orchestrator.packing import trials_per_node

    return sum(trials_per_node(cpu, gpu, node["cpu"], node["gpu"]).trials for node in largest_nodes())


def largest_nodes() -> list[dict[str, float]]:
    """CPU and GPU count of each alive node, largest first."""
    import ray

    sizes = [{"cpu": float(n.get("Resources", {}).get("CPU", 0)), "gpu": float(n.get("Resources", {}).get("GPU", 0))}
             for n in ray.nodes() if n.get("Alive")]
    return sorted(sizes, key=lambda r: (r["gpu"], r["cpu"]), reverse=True)


def unsatisfiable(cpu: float, gpu: float) -> str | None:
    """Why no alive node can run a trial of this size (a trial runs on one node), or None if one can."""
    if cluster_slots(cpu, gpu) > 0:
        return None
    nodes = largest_nodes()
    if not nodes:
        return "the cluster has no alive node"
    have = ", ".join(f"{n['cpu']:g} CPU / {n['gpu']:g} GPU" for n in nodes[:4]) + (f" and {len(nodes) - 4} more" if len(nodes) > 4 else "")
    return f"no node of the cluster has that much (its nodes: {have})"


def trial_payload(t: Trial, sources: dict, tracking_uri: str, resources: dict[str, float], resume_root: str | None,
                  **extra: Any) -> dict:
    """What `_train_one` receives for a trial: its config, identity, where to resume and its teacher's source.
    Tune writes it into its experiment state on the storage: the tracking URI without its password."""
    return {
        "config_hash": t.config_hash,
        "config": t.config.to_dict(),
        "tracking_uri": redact_credentials(tracking_uri),
        "cpus": resources.get("cpu", 1),
        "gpus": resources.get("gpu", 0),
        "resume_root": resume_root,
        **sources,
        **extra,
    }


def run_trials(
    trials: list[Trial],
    runs: TrialRuns,
    progress,
    resources: dict[str, float],
    teacher_artifacts: dict[str, str],
    tracking_uri: str,
    max_retries: int = 2,
    storage_path: str | None = None,
    name: str = "ltkd",
    resume_root: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    poll: Callable[[], None] | None = None,
) -> dict[str, Outcome]:
    """Run the trials in one Tune run, each as soon as its teacher is done; return outcomes by hash
    (FINISHED, FAILED, SKIPPED, or KILLED when the sweep was stopped)."""
    if not trials:
        return {}
    resume_root = resume_root or default_resume_root(storage_path)
    outcomes: dict[str, Outcome] = {}

    def payload(t: Trial, sources: dict) -> dict:
        return trial_payload(t, sources, tracking_uri, resources, resume_root)

    def on_skip(t: Trial, reason: str) -> None:
        outcomes[t.config_hash] = Outcome(t, "SKIPPED", error=reason)
        progress.trial_skipped(t.run_name, reason)

    schedule = Schedule(trials, teacher_artifacts, payload, on_skip)
    callback = SweepCallback(schedule, runs, progress, outcomes, max_retries + 1, poll)
    fit_trials(trials, runs, outcomes, DependencySearcher(schedule), None, callback, resources, max_retries, storage_path, name,
               should_stop, tracking_uri=tracking_uri)
    if interrupted(trials, outcomes, should_stop):
        raise KeyboardInterrupt  # stop the sweep here
    return outcomes


def fit_trials(trials, runs: TrialRuns, outcomes: dict[str, Outcome], search_alg, scheduler, callback, resources: dict[str, float],
               max_retries: int, storage_path: str | None, name: str, should_stop: Callable[[], bool],
               max_concurrent: int | None = None, tracking_uri: str | None = None) -> None:
    """One Tune run of `_train_one` trials that `search_alg` hands out, `callback` tracks and
    `scheduler` (None: first in, first out) may stop early. Trials in flight when it stops (Ctrl-C,
    `should_stop`) end KILLED; the next sweep continues them from their saved state. `tracking_uri`
    reaches the trials through Ray's object store (`tune.with_parameters`), not their persisted config."""
    from ray import tune

    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    slots = max(1, cluster_slots(cpu, gpu))
    if max_concurrent is not None:
        slots = max(1, min(slots, max_concurrent))
    own_storage = storage_path is None
    storage = storage_path or tempfile.mkdtemp(prefix="ltkd-tune-")
    if own_storage:
        from orchestrator import leftovers

        leftovers.record(tune_dir=storage)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_train_one, tracking_uri=tracking_uri), {"cpu": cpu, "gpu": gpu}),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=-1, reuse_actors=True,
                                    max_concurrent_trials=slots),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[callback], verbose=0, stop=OutageStopper(should_stop),
            failure_config=tune.FailureConfig(max_failures=max_retries),
        ),
    )
    # Tune logs its own summary of failed trials and missing result files (its file loggers are off);
    # the callback already reports each trial, so keep the console to our lines.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        tuner.fit()
    finally:
        # Tune stops the trials in flight on Ctrl-C or a stop without telling the callbacks: their
        # runs end KILLED here, and the next sweep continues them from their saved state.
        for t in trials:
            if t.config_hash in runs.key_of and t.config_hash not in outcomes:
                runs.ended(t, "KILLED", "stopped with the sweep")
                outcomes[t.config_hash] = Outcome(t, "KILLED", error="stopped with the sweep")
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)


def interrupted(trials, outcomes: dict[str, Outcome], should_stop: Callable[[], bool]) -> bool:
    """Whether the Tune run ended before every trial had an outcome (Tune caught Ctrl-C and
    returned), rather than because `should_stop` asked it to."""
    return (len(outcomes) < len(trials) or any(o.status == "KILLED" for o in outcomes.values())) and not should_stop()
