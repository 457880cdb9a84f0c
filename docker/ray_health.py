"""Compose healthchecks of the Ray containers (stdlib and Ray only; exit 0 when healthy).

    ray_health.py head     the head's GCS answers (with the token: RAY_AUTH_TOKEN_PATH)
    ray_health.py raylet   this container's raylet is running (a worker whose raylet died is unhealthy)
"""
import os
import subprocess
import sys


def raylet_running() -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "raylet":
                    return True
        except OSError:  # the process ended meanwhile
            continue
    return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["raylet"]:
        return 0 if raylet_running() else 1
    if argv[:1] == ["head"]:
        gcs = subprocess.run(["ray", "health-check", "--address", "127.0.0.1:6379"], capture_output=True, timeout=30)
        return 0 if gcs.returncode == 0 and raylet_running() else 1
    print("usage: ray_health.py head | raylet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
