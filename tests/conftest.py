import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (2 CPUs, as on CI)."""
    import ray

    from orchestrator.execution.cluster import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def wait_until(predicate, timeout: float, what: str, detail=None, ended=None, interval: float = 0.3):
    """Poll `predicate` until it returns something truthy, and return that. Else an AssertionError naming
    what was awaited, with `detail()` (a log's tail) when given; `ended()`, when given, returns a line once
    waiting is pointless (the process that would bring it has exited), raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        why = ended() if ended is not None else None
        if why or time.monotonic() >= deadline:
            message = f"{why} before {what}" if why else f"timed out after {timeout:.0f} s waiting for {what}"
            raise AssertionError(message + (f"\n{detail()}" if detail is not None else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` process on loopback, in its lean form (one worker, no job runner)."""
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        # 180 s: on 2 cores shared with other test runs (load 10 and more) a start took 110 s
        wait_until(healthy, 180, f"an answer from the mlflow server's {url}/health", detail=lambda: (root / "server.log").read_text()[-2000:],
                   ended=lambda: proc.poll() is not None and f"the mlflow server exited ({proc.returncode})", interval=0.2)
    except AssertionError:
        proc.kill()
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop(proc)
