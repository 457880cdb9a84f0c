"""A sweep without --address starts a Ray of its own, whatever `ray start` left on this machine."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import REPO, free_port

PROBE = """
import ray
from orchestrator.execution.cluster import init_ray
init_ray(None, num_cpus=1)
print("cpus", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


def test_a_stale_ray_current_cluster_file_does_not_capture_the_local_ray():
    # Ray's own temp folder (short: its socket paths have a length limit), holding the address file
    # that `ray start` writes: here it names a loopback port nothing listens on, as after a stopped cluster.
    tmp = tempfile.mkdtemp(prefix="lr-", dir="/tmp")
    try:
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "cpus 1.0" in done.stdout  # its own one-CPU Ray, not the (dead) cluster the file names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
