"""What the workers of an existing Ray cluster get from the sweep: the project's code, and on request
its pinned dependencies, as a Ray runtime environment.

`ltkd sweep --address ...` ships the `trainer` and `orchestrator` packages as `py_modules` by
default, so every trial runs the driver's own code, whether the workers have the project installed
(an older copy, say) or not. `--ship deps` also installs, once per node, the driver's versions of the
project's dependencies through the runtime environment's `pip` field (the workers need a package
index then). `--ship none` sends nothing: the workers import their own installed copy.
"""
from __future__ import annotations

import os
from typing import Any

import trainer

import orchestrator
from orchestrator.errors import UserError

SHIP_MODES = ("code", "deps", "none")
SHIP_ENV = "LTKD_SHIP"  # set by `ltkd sweep --ship`; read where Ray is joined
# Ray itself is left out: the cluster's Ray must already be the driver's version (Ray checks it on connect).
_NOT_SHIPPED = {"ray", "pytest"}


def ship_mode() -> str:
    mode = os.environ.get(SHIP_ENV, "code") or "code"
    if mode not in SHIP_MODES:
        raise UserError(f"{SHIP_ENV}={mode}: allowed: {', '.join(SHIP_MODES)}")
    return mode


def pinned_requirements() -> list[str]:
    """The project's dependencies at the exact versions this driver runs (`torch==2.14.1`, ...)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = []
    for line in requires("ltkd") or []:
        req = Requirement(line)
        if req.marker is not None or req.name.lower() in _NOT_SHIPPED:
            continue  # extras (dev tools) and Ray
        try:
            installed = Version(version(req.name)).public  # a local label (+cu130) is not on an index
        except PackageNotFoundError:
            pins.append(str(req))
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pins.append(f"{req.name}{extras}=={installed}")
    return pins


def project_modules() -> list[str]:
    """The folders of the project's two packages, as this driver imports them."""
    return [os.path.dirname(os.path.abspath(m.__file__)) for m in (trainer, orchestrator)]


def cluster_runtime_env(env_vars: dict[str, str] | None = None, mode: str | None = None) -> dict[str, Any] | None:
    """The runtime environment a sweep joins an existing cluster with (None: nothing to send)."""
    mode = mode or ship_mode()
    env: dict[str, Any] = {}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    if mode in ("code", "deps"):
        env["py_modules"] = project_modules()
        env["excludes"] = ["__pycache__/", "*.pyc"]
    if mode == "deps":
        env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    return env or None
