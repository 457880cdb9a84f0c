"""Starting or joining Ray, and what its nodes can hold."""
from __future__ import annotations

import contextlib
import logging
import os

from orchestrator.execution import leftovers
from orchestrator.execution.packing import trials_per_node
from orchestrator.execution.runtime_env import cluster_runtime_env

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
        raise ValueError("not a Ray address: give HOST:PORT (the head's GCS, default port 6379) or ray://HOST:PORT "
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
        # ... and the project's code (workers may not have it), see orchestrator.execution.runtime_env.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env=cluster_runtime_env(env_vars))
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # "local": a Ray of our own even where `ray start` left a cluster on this machine (ray.init() with
        # no address would join the newest one through /tmp/ray/ray_current_cluster).
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                           log_to_driver=False)
        # This Ray is ours: should the sweep be SIGKILLed, the next one stops what is left of it.
        leftovers.record(session_dir=context.address_info.get("session_dir") or "")


def cluster_slots(cpu: float, gpu: float) -> int:
    """How many trials of this size the cluster's alive nodes hold at once (each trial on one node;
    a fractional GPU request on one GPU: `orchestrator.execution.packing.trials_per_node`)."""
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
