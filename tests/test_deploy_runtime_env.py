"""orchestrator.execution.runtime_env: what `ltkd sweep --address` sends to the workers of an existing cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import build_parser
from orchestrator.errors import UserError
from orchestrator.execution.runtime_env import SHIP_MODES, cluster_runtime_env, pinned_requirements

REPO = Path(__file__).resolve().parents[1]


def test_code_is_shipped_by_default_as_the_two_packages(monkeypatch):
    monkeypatch.delenv("LTKD_SHIP", raising=False)
    env = cluster_runtime_env({"MLFLOW_TRACKING_TOKEN": "t"})
    assert env["py_modules"] == [str(REPO / "trainer"), str(REPO / "orchestrator")]
    assert "__pycache__/" in env["excludes"] and "pip" not in env
    assert env["env_vars"] == {"MLFLOW_TRACKING_TOKEN": "t"}


def test_deps_adds_the_drivers_exact_versions_and_none_sends_nothing(monkeypatch):
    pins = pinned_requirements()
    names = {p.split("==")[0].split("[")[0].lower() for p in pins}
    assert {"torch", "mlflow", "pandas"} <= names and "ray" not in names and "pytest" not in names
    assert all("==" in p and "+" not in p for p in pins), pins  # no local label such as +cu130
    monkeypatch.setenv("LTKD_SHIP", "deps")
    assert cluster_runtime_env()["pip"]["packages"] == pins
    monkeypatch.setenv("LTKD_SHIP", "none")
    assert cluster_runtime_env() is None and cluster_runtime_env({"A": "1"}) == {"env_vars": {"A": "1"}}


def test_an_unknown_mode_is_one_line_and_the_option_offers_the_modes(monkeypatch):
    monkeypatch.setenv("LTKD_SHIP", "everything")
    with pytest.raises(UserError, match="LTKD_SHIP=everything: allowed: code, deps, none"):
        cluster_runtime_env()
    args = build_parser().parse_args(["sweep", "s.yaml", "--ship", "deps"])
    assert args.ship == "deps" and SHIP_MODES == ("code", "deps", "none")
