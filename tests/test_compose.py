"""The cluster deployment file: the services, GPU reservation and wiring users rely on."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_has_postgres_mlflow_ray_head_and_gpu_workers():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    mlflow_cmd = services["mlflow"]["command"]
    assert "--app-name basic-auth" in mlflow_cmd and "postgresql://" in mlflow_cmd
    assert "--allowed-hosts mlflow,mlflow:5000" in mlflow_cmd  # MLflow 3 refuses unknown Host headers
    assert "--serve-artifacts" in mlflow_cmd  # workers fetch teacher checkpoints through the server
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for dockerfile in ("docker/Dockerfile", "docker/mlflow.Dockerfile"):
        assert (REPO / dockerfile).is_file()
