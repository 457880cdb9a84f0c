"""Checkpoint folders: their manifest (each file's size and SHA-256) and fetching a teacher's checkpoint from the store."""
from __future__ import annotations

import json
import os
import shutil

from trainer.files import file_sha256
from orchestrator.errors import error_line


MANIFEST_FILE = "MANIFEST.json"  # in a checkpoint folder: each file's size and sha256


class CorruptCheckpoint(ValueError):
    """A teacher checkpoint whose stored copy does not match its manifest (a ValueError: retrying
    the trial would meet the same bytes, so it fails at once with this one line)."""


def write_manifest(folder: str) -> None:
    """Record the size and sha256 of every file of a checkpoint folder, so that each copy of it
    (the artifact, a node's cache) can be checked before a student trusts it."""
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != MANIFEST_FILE and os.path.isfile(path):
            files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    with open(os.path.join(folder, MANIFEST_FILE), "w") as f:
        json.dump({"files": files}, f, indent=1)


def checkpoint_problem(folder: str, manifest: dict | None) -> str | None:
    """What is wrong with a local checkpoint folder, or None. With a manifest: each file's size and
    sha256. Without one (checkpoints of earlier versions): the weights file's zip CRCs."""
    import zipfile

    if not os.path.isdir(folder):
        return "missing"
    if manifest is not None:
        for name, want in manifest.get("files", {}).items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"{name} is missing"
            if os.path.getsize(path) != want["bytes"]:
                return f"{name} has {os.path.getsize(path)} bytes, its manifest says {want['bytes']}"
            if file_sha256(path) != want["sha256"]:
                return f"{name}'s sha256 differs from its manifest"
        return None
    weights = os.path.join(folder, "model.pt")
    try:
        with zipfile.ZipFile(weights) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"model.pt is unreadable ({exc})"
    return None if bad is None else f"model.pt: {bad} fails its CRC check"


def _read_manifest(artifact_uri: str) -> dict | None:
    """The checkpoint artifact's manifest (a few hundred bytes), or None when it has none or the
    store cannot be reached (the cached copy is then checked by its CRCs)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="ltkd-manifest-") as tmp:
        try:
            local = download_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{MANIFEST_FILE}", dst_path=tmp)
            with open(local) as f:
                return json.load(f)
        except Exception:  # noqa: BLE001 - absent (an older checkpoint) or unreachable: checked by CRC
            return None


def fetch_checkpoint(artifact_uri: str, tracking_uri: str, cache_root: str | None = None, teacher_hash: str | None = None) -> str:
    """Local folder holding a run's checkpoint artifact, downloaded once per node and cached.

    Called inside Ray trials: works with a local store (file copy) and with a server
    (mlflow-artifacts:/ URIs resolved through the tracking server), so workers on other machines
    get the teacher the same way. The cached copy is checked against the artifact's manifest on
    every use and fetched again when it differs (a fetch cut short, a disk error); an artifact
    that is itself corrupt fails the trial with one line saying how to retrain its teacher.
    """
    import mlflow
    from mlflow.artifacts import download_artifacts

    cache_root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "ltkd", "checkpoints")
    key = artifact_uri.replace("://", "_").replace(":", "_").replace("/", "_")[-180:]
    target = os.path.join(cache_root, key)
    mlflow.set_tracking_uri(tracking_uri)
    manifest = _read_manifest(artifact_uri)
    if os.path.isdir(target) and os.listdir(target) and checkpoint_problem(target, manifest) is None:
        return target
    tmp = target + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, exist_ok=True)
    retrain = f"`ltkd sweep STUDY --retrain-teacher {teacher_hash or 'HASH'}`"
    try:
        local = download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
    except Exception as exc:  # noqa: BLE001 - MLflow lists each failed file on lines of their own
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"cannot fetch the teacher checkpoint {artifact_uri} ({error_line(exc)}); if the store is up and the "
                           f"artifact is gone, retrain that teacher with {retrain}") from None
    problem = checkpoint_problem(local, manifest)
    if problem is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorruptCheckpoint(f"the teacher checkpoint {artifact_uri} is corrupt in the tracking store ({problem}); "
                                f"retrain that teacher with {retrain}")
    # Atomic publish: concurrent trials on one node never see a half-written cache entry; a bad
    # entry is moved aside first (os.replace cannot overwrite a non-empty folder).
    if os.path.isdir(target):
        stale = target + f".stale{os.getpid()}"
        try:
            os.replace(target, stale)
        except OSError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(local, target)
    except OSError:
        pass  # another trial published it first
    shutil.rmtree(tmp, ignore_errors=True)
    return target
