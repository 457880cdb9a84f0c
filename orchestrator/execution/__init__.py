"""Execution: the only Ray adapter (with search's Tune glue), one Ray Tune run per sweep, which releases each trial when its dependencies are done.

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
import os

# Tune's own CSV/JSON/TensorBoard loggers would duplicate what MLflow records. Set before any module
# of the package imports ray.tune; this file imports no Ray (packing runs where Ray is not installed).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
