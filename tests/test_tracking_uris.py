"""Tracking URIs that need no server to judge: the redaction every printed line goes through, and the
stores refused before anything runs (an in-memory SQLite database; a password in a URI that fails)."""
from __future__ import annotations

import textwrap

import pytest

from orchestrator.cli import main
from orchestrator.errors import redact_credentials, without_userinfo

from conftest import free_port

STUDY = """
name: uris
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w8, student: cnn_w4}]
methods: {kd: {alpha: 1.0}}
seeds: [0]
recipe: {epochs: 1}
"""


@pytest.mark.parametrize("text, shown", [
    ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("postgresql+psycopg://u:p%40ss:w0rd@127.0.0.1/x", "postgresql+psycopg://u:***@127.0.0.1/x"),
    ("http://ltkd:pw@mlflow:5000 and https://a:b@c/ in one line", "http://ltkd:***@mlflow:5000 and https://a:***@c/ in one line"),
    ("mysql+pymysql://root:@localhost/db", "mysql+pymysql://root:***@localhost/db"),  # an empty password: still marked
    ("postgresql://mlflow@postgres:5432/mlflow", "postgresql://mlflow@postgres:5432/mlflow"),  # no password
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("sqlite:///tmp/a:b@c.db", "sqlite:///tmp/a:b@c.db"),  # a path, not userinfo
])
def test_the_password_of_every_uri_in_a_line_is_redacted_and_nothing_else(text, shown):
    assert redact_credentials(text) == shown


def test_a_link_loses_its_userinfo():
    assert without_userinfo("http://ltkd:pw@mlflow:5000/x?y=1") == "http://mlflow:5000/x?y=1"
    assert without_userinfo("https://u@host/") == "https://host/"
    assert without_userinfo("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(STUDY))
    return path


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("uri", ["sqlite:///", "sqlite://", "sqlite:///:memory:"])
@pytest.mark.parametrize("command", ["sweep", "status", "tables"])
def test_an_in_memory_sqlite_store_is_refused_at_once(study, capsys, tmp_path, uri, command):
    line = refused(capsys, command, str(study), "--tracking-uri", uri)
    assert line == (f"ltkd: error: --tracking-uri {uri}: an in-memory SQLite database keeps nothing once the command ends; "
                    "name a file: sqlite:///PATH/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # nothing written


def test_a_failing_uri_never_shows_its_password(study, capsys, tmp_path):
    port = free_port()  # nothing listens there
    line = refused(capsys, "status", str(study), "--tracking-uri", f"http://ltkd:hunter2hunter2@127.0.0.1:{port}")
    assert line.startswith(f"ltkd: error: --tracking-uri http://ltkd:***@127.0.0.1:{port}: MLflow server not reachable (")
    line = refused(capsys, "sweep", str(study), "--tracking-uri", f"postgresql://mlflow:hunter2hunter2@127.0.0.1:{port}/db")
    assert line.startswith(f"ltkd: error: --tracking-uri postgresql://mlflow:***@127.0.0.1:{port}/db: database server 127.0.0.1:")
    assert "hunter2" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_a_fresh_sqlite_store_opens_without_mlflow_log_lines(tmp_path):
    """MLflow logs "Creating initial MLflow database tables..." (INFO) when a client opens a new SQLite
    file; in a sweep's console that line came between the plan and the first trial. MLflow's own client
    on one new file prints it (so the check can fail); the Tracker's on another prints nothing."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from mlflow.tracking import MlflowClient\n"
            f"MlflowClient('sqlite:///{tmp_path}/plain.db').search_experiments()\n"
            "print('-- the Tracker --', file=sys.stderr, flush=True)\n"
            "from orchestrator.tracking import Tracker\n"
            f"print(Tracker('sqlite:///{tmp_path}/fresh.db').experiment_id('quiet', create=True))\n")
    opened = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0 and opened.stdout == "1\n", opened.stderr
    plain, tracker = opened.stderr.split("-- the Tracker --\n")
    assert "Creating initial MLflow database tables" in plain
    assert tracker == ""
