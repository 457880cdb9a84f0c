"""The MLflow UI of a store: where it is served, and one served on loopback for a local store.

A server store (`http://...`) is its own UI. A local store (a SQLite file, a database URL) has none
until `ltkd ui` starts one: an `mlflow server` process in the lean form (one worker, no job runner),
on 127.0.0.1, detached from the command so it outlives it, and recorded in a small file per store so
that the next `ltkd ui`, the sweep's browse line and the report's links find it instead of guessing a
port. Its port is chosen per store (a port derived from the store's identity when it is free, else
any free one), so two studies' stores can be browsed side by side and a link written before the UI
started usually still works once it does.

One setting overrides all of this: `--ui-url` where a command has it, else `LTKD_UI_URL` (a UI behind
a proxy, a tunnel, a port forwarded from a cluster's head node).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError, describe, without_userinfo
from orchestrator.tracking.store import store_identity

UI_URL_ENV = "LTKD_UI_URL"
PREFERRED_PORTS = range(5100, 6000)  # clear of MLflow's 5000, which macOS's AirPlay receiver also takes
START_TIMEOUT_S = 90.0  # a cold `mlflow server` answers /health in ~4 s idle, much later on a loaded node


def ui_folder() -> Path:
    return Path(os.environ.get("LTKD_UI_DIR") or Path.home() / ".cache" / "ltkd" / "ui")


@dataclass(frozen=True)
class ServedUI:
    """An MLflow UI process that `ltkd ui` started for a store."""

    url: str
    pid: int
    store: str  # the store's identity
    log: str


def _record_path(identity: str) -> Path:
    return ui_folder() / (hashlib.sha256(identity.encode()).hexdigest()[:16] + ".json")


def preferred_port(identity: str) -> int:
    digest = int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16)
    return PREFERRED_PORTS.start + digest % len(PREFERRED_PORTS)


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:  # a child of this process that ended is a zombie until reaped: reap it, it is gone
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, not ours to judge
    return True


def served_ui(tracking_uri: str) -> ServedUI | None:
    """The UI `ltkd ui` serves for this store, if its process is alive and answers; a stale record
    (the process gone, or the port now someone else's) is removed."""
    identity = store_identity(tracking_uri)
    path = _record_path(identity)
    try:
        record = ServedUI(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if record.store == identity and _alive(record.pid) and _answers(record.url):
        return record
    path.unlink(missing_ok=True)
    return None


def ui_base_url(tracking_uri: str, given: str | None = None) -> str | None:
    """Where this store's runs are browsed: `given` (--ui-url), else LTKD_UI_URL, else the server
    itself for a server store, else the UI `ltkd ui` serves for it; None when there is none yet."""
    chosen = given or os.environ.get(UI_URL_ENV)
    if chosen:
        return chosen.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return without_userinfo(tracking_uri).rstrip("/")
    served = served_ui(tracking_uri)
    return served.url if served else None


def expected_ui_base_url(tracking_uri: str, given: str | None = None) -> str:
    """As `ui_base_url`, and where none runs yet, the address `ltkd ui` will first try for the store
    (a report's links written now then open once `ltkd ui` runs)."""
    return ui_base_url(tracking_uri, given) or f"http://127.0.0.1:{preferred_port(store_identity(tracking_uri))}"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _a_free_port(identity: str) -> int:
    port = preferred_port(identity)
    if _free(port):
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(tracking_uri: str, timeout_s: float = START_TIMEOUT_S) -> ServedUI:
    """Start an MLflow UI on loopback for a local store, detached (it outlives this command), and
    record it; wait until it answers. A process that dies first is reported with its log's last line."""
    identity = store_identity(tracking_uri)
    folder = ui_folder()
    folder.mkdir(parents=True, exist_ok=True)
    port = _a_free_port(identity)
    log_path = folder / (_record_path(identity).stem + ".log")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No job runner (it would start Huey workers): a browsing server needs none, and it stays at 2 processes.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not _answers(url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            last = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            why = f"exit status {process.returncode}" if process.returncode is not None else f"no answer after {timeout_s:.0f} s"
            raise UserError(f"ltkd ui: the MLflow UI for {without_userinfo(tracking_uri)} did not start ({why}; "
                            f"{last[-1].strip() if last else 'its log is empty'}; log {log_path})")
        time.sleep(0.3)
    served = ServedUI(url=url, pid=process.pid, store=identity, log=str(log_path))
    _record_path(identity).write_text(json.dumps(served.__dict__))
    return served


def stop_ui(tracking_uri: str) -> ServedUI | None:
    """Stop the UI `ltkd ui` serves for this store (its whole process group); None if none runs."""
    served = served_ui(tracking_uri)
    if served is None:
        return None
    try:
        os.killpg(served.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise UserError(f"ltkd ui --stop: cannot stop the UI at {served.url} (pid {served.pid}: {describe(exc)})") from None
    deadline = time.monotonic() + 10
    while _alive(served.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _record_path(served.store).unlink(missing_ok=True)
    return served
