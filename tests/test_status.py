"""`ltkd status` over a store with runs in every state, and `Tracker.run_states` against the slow path.

The runs are written with MlflowClient as a sweep leaves them (tags study, config_hash, role,
attempts, error; per-epoch loss and accuracies at step = epoch), for the trials of a small study.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.study import expand, load_study
from orchestrator.tracking import RunState, Tracker

REPO = Path(__file__).resolve().parents[1]

STUDY = """
name: {name}
dataset: {{name: digits, gammas: [10]}}
pairs: [{{teacher: cnn_w16, student: cnn_w4}}]
methods:
  kd: {{alpha: 1.0}}
  ltkd: {{alpha: 1.0, beta: 1.0}}
seeds: [0, 1, 2]
recipe: {{epochs: 5}}
"""
LONG_ERROR = "RuntimeError: " + "x" * 200 + "\nsecond line"
T0 = 1_700_000_000_000  # ms: start times are set, so which run is newest does not depend on timing


def write_study(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(STUDY.format(name=name)))
    return path


def add_run(client: MlflowClient, exp_id: str, trial, status: str, start: int, *, epochs: int = 0, attempts: int = 1,
            error: str | None = None, study: str = "") -> str:
    """A trial's run as a sweep leaves it: `epochs` epochs of loss and accuracies logged at step = epoch."""
    tags = {"study": study, "config_hash": trial.config_hash, "role": trial.role, "row": trial.row, "attempts": str(attempts)}
    run_id = client.create_run(exp_id, start_time=T0 + start, tags=tags, run_name=trial.run_name).info.run_id
    metrics = []
    for epoch in range(1, epochs + 1):
        ts = T0 + start + epoch
        metrics += [Metric("loss", 2.0 / epoch, ts, epoch), Metric("acc_all", 50.0 + epoch * 2.5, ts, epoch),
                    Metric("acc_tail", 20.0 + epoch * 1.25, ts, epoch), Metric("lr", 0.05, ts, epoch)]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    if error is not None:
        client.log_batch(run_id, tags=[RunTag("error", error)], synchronous=True)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status, end_time=T0 + start + 100)
    return run_id


def populate(uri: str, study_path: Path):
    """Runs in every state for the study's 12 trials; returns (experiment id, trials by run name, run ids)."""
    study = load_study(study_path)
    trials = {t.run_name: t for t in expand(study)}
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(study.name)
    add = lambda name, status, start, **kw: add_run(client, exp_id, trials[name], status, start, study=study.name, **kw)  # noqa: E731
    ids = {
        "teacher s0": add("teacher cnn_w16 g10 s0", "FINISHED", 0, epochs=5),
        # Teacher s1 failed: its students kd s1 and ltkd s1 have no run (skipped).
        "teacher s1": add("teacher cnn_w16 g10 s1", "FAILED", 10, epochs=2, error="FloatingPointError: loss is nan at epoch 2\nTraceback ..."),
        # Running, third epoch of five, second attempt.
        "student s0": add("student cnn_w4 g10 s0", "RUNNING", 20, epochs=3, attempts=2),
        # Done: a FINISHED run counts even when a newer attempt was stopped.
        "student s1 finished": add("student cnn_w4 g10 s1", "FINISHED", 30, epochs=5),
        "student s1 killed": add("student cnn_w4 g10 s1", "KILLED", 40, epochs=1, error="stopped with the sweep"),
        # Failed with a long reason; an older stopped run of the same trial does not count.
        "kd s0 killed": add("kd cnn_w16>cnn_w4 g10 s0", "KILLED", 50, epochs=1),
        "kd s0": add("kd cnn_w16>cnn_w4 g10 s0", "FAILED", 60, epochs=4, error=LONG_ERROR),
        # ltkd s0: only a deleted run, so it is missing.
        "ltkd s0 deleted": add("ltkd cnn_w16>cnn_w4 g10 s0", "FINISHED", 70, epochs=5),
        # Stopped by a sweep (KILLED): failed, but the students of a stopped teacher are missing, not skipped.
        "teacher s2": add("teacher cnn_w16 g10 s2", "KILLED", 80, epochs=2, error="stopped with the sweep"),
        "student s2": add("student cnn_w4 g10 s2", "KILLED", 90),
    }
    client.delete_run(ids["ltkd s0 deleted"])
    # Runs without a config_hash (the study's tables run) are not trials.
    client.create_run(exp_id, tags={"role": "tables", "study": study.name}, run_name=f"tables {study.name}")
    return exp_id, trials, ids


EXPECTED = [
    "  running  student cnn_w4 g10 s0       epoch 3/5  all 57.5  tail 23.8  (attempt 2)",
    "  failed   teacher cnn_w16 g10 s1      FloatingPointError: loss is nan at epoch 2",
    "  failed   teacher cnn_w16 g10 s2      stopped after epoch 2/5: stopped with the sweep",
    "  failed   student cnn_w4 g10 s2       stopped before its first epoch",
    "  failed   kd cnn_w16>cnn_w4 g10 s0    RuntimeError: " + "x" * 135 + "…",
    "  skipped  kd cnn_w16>cnn_w4 g10 s1    its teacher failed (teacher cnn_w16 g10 s1)",
    "  skipped  ltkd cnn_w16>cnn_w4 g10 s1  its teacher failed (teacher cnn_w16 g10 s1)",
    "  missing  ltkd cnn_w16>cnn_w4 g10 s0",
    "  missing  kd cnn_w16>cnn_w4 g10 s2",
    "  missing  ltkd cnn_w16>cnn_w4 g10 s2",
    "study states: 2 done, 1 running, 4 failed, 5 missing",
    "  (2 of the missing are skipped: their teacher failed)",
]


def test_status_prints_every_state(tmp_path, capsys):
    study_path = write_study(tmp_path, "states")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    populate(uri, study_path)
    capsys.readouterr()
    assert main(["status", str(study_path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == EXPECTED, out
    assert len(EXPECTED[4].split("  ")[-1]) == 150  # the reason is cut to 150 characters


def test_status_while_a_sweep_holds_the_study_tells_queued_from_missing(tmp_path, capsys):
    """A live sweep's lease (this process: alive, on this host) that plans the whole study: its trials
    without a run are queued, the students of a failed teacher stay missing (skipped); a run whose last
    epoch is logged is finishing. A sweep that plans only the teachers queues no student."""
    import os
    import socket

    from orchestrator.tracking import STUDY_PLAN, TEACHERS_PLAN, Lease

    study_path = write_study(tmp_path, "states")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp_id, trials, _ = populate(uri, study_path)
    add_run(MlflowClient(tracking_uri=uri), exp_id, trials["ltkd cnn_w16>cnn_w4 g10 s2"], "RUNNING", 95, epochs=5, study="states")
    lease = Lease(Tracker(uri), exp_id, "states", plans=STUDY_PLAN)
    lease.claim()
    capsys.readouterr()
    assert main(["status", str(study_path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    since = out[-2].split(" since ")[1].split(";")[0]
    assert out == [
        EXPECTED[0],
        "  running  ltkd cnn_w16>cnn_w4 g10 s2  epoch 5/5 done, finishing (final evaluation, checkpoint, end of run)",
        *EXPECTED[1:7],
        "study states: 2 done, 2 running, 4 failed, 2 queued, 2 missing",
        f"  (being swept now by host {socket.gethostname()}, pid {os.getpid()}, since {since}; queued: trials it will run)",
        "  (2 of the missing are skipped: their teacher failed)",
    ], out
    assert len(since) == 19  # %Y-%m-%d %H:%M:%S
    lease.release()
    teachers = Lease(Tracker(uri), exp_id, "states", plans=TEACHERS_PLAN)
    teachers.claim()
    assert main(["status", str(study_path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "study states: 2 done, 2 running, 4 failed, 0 queued, 4 missing" in out, out  # every teacher has a run
    teachers.release()
    assert main(["status", str(study_path), "--tracking-uri", uri]) == 0  # released: nothing is queued any more
    assert "study states: 2 done, 2 running, 4 failed, 4 missing" in capsys.readouterr().out.splitlines()


def test_status_of_a_study_never_swept(tmp_path, capsys):
    study_path = write_study(tmp_path, "fresh")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["status", str(study_path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "study fresh: 0 done, 0 running, 0 failed, 12 missing"
    assert out[0] == "  missing  teacher cnn_w16 g10 s0" and len(out) == 13
    assert not (tmp_path / "mlflow.db").exists()  # reading creates no store


def test_run_states_fast_reader_equals_the_search_path(tmp_path):
    study_path = write_study(tmp_path, "states")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp_id, trials, ids = populate(uri, study_path)
    tracker = Tracker(uri)
    assert tracker._sql_store() is not None  # the SQL path is the one under test
    fast = tracker.run_states(exp_id)
    slow = tracker._run_states_from_search(exp_id)
    assert fast == slow

    h = {name: t.config_hash for name, t in trials.items()}
    assert set(fast) == {h[name] for name in ("teacher cnn_w16 g10 s0", "teacher cnn_w16 g10 s1", "teacher cnn_w16 g10 s2",
                                              "student cnn_w4 g10 s0", "student cnn_w4 g10 s1", "student cnn_w4 g10 s2",
                                              "kd cnn_w16>cnn_w4 g10 s0")}
    running = fast[h["student cnn_w4 g10 s0"]]
    assert running == RunState(ids["student s0"], h["student cnn_w4 g10 s0"], "RUNNING", T0 + 20, None, "", 2, 3,
                               {"acc_all": 57.5, "acc_tail": 23.75})
    done = fast[h["student cnn_w4 g10 s1"]]
    assert (done.run_id, done.status, done.end_time, done.last_epoch) == (ids["student s1 finished"], "FINISHED", T0 + 130, 5)
    failed = fast[h["kd cnn_w16>cnn_w4 g10 s0"]]
    assert (failed.run_id, failed.status, failed.error, failed.last_epoch) == (ids["kd s0"], "FAILED", LONG_ERROR, 4)
    assert fast[h["teacher cnn_w16 g10 s1"]].error.startswith("FloatingPointError")
    stopped = fast[h["student cnn_w4 g10 s2"]]
    assert (stopped.status, stopped.error, stopped.attempts, stopped.last_epoch, stopped.metrics) == ("KILLED", "", 1, 0, {})


@pytest.mark.integration
def test_status_through_a_server_reads_the_same(mlflow_server, tmp_path, capsys):
    """A server has no SQL access: the search_runs path, in the real command."""
    study_path = write_study(tmp_path, "states_server")
    exp_id, _, _ = populate(mlflow_server, study_path)
    tracker = Tracker(mlflow_server)
    assert tracker._sql_store() is None
    capsys.readouterr()
    assert main(["status", str(study_path), "--tracking-uri", mlflow_server]) == 0
    expected = EXPECTED[:-2] + ["study states_server: 2 done, 1 running, 4 failed, 5 missing", EXPECTED[-1]]
    assert capsys.readouterr().out.splitlines() == expected
    assert tracker.run_states(exp_id)  # and the fallback gives the epochs from the latest metrics' steps
    assert sorted(s.last_epoch for s in tracker.run_states(exp_id).values()) == [0, 2, 2, 3, 4, 5, 5]


def test_status_and_tables_import_no_torch(tmp_path):
    """Reading commands load neither PyTorch nor plotting (seconds of start-up on these machines)."""
    study_path = write_study(tmp_path, "states")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    populate(uri, study_path)
    heavy = ("torch", "torchvision", "matplotlib", "ray", "optuna", "scipy.stats")
    for command in (["status", str(study_path)], ["tables", str(study_path)]):
        code = (f"import sys\nfrom orchestrator.cli import main\nrc = main({command + ['--tracking-uri', uri]!r})\n"
                f"print('LOADED', [m for m in {heavy!r} if m in sys.modules])\nsys.exit(rc)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "LOADED []", (command[0], proc.stdout[-500:])


def test_trial_identity_is_unchanged_by_the_fast_to_dict():
    """TrialConfig.to_dict builds what dataclasses.asdict gives (config_hash, the trials' identity,
    hashes it), for every trial of every study in studies/."""
    from dataclasses import asdict

    trials = [t for path in sorted((REPO / "studies").glob("*.yaml")) for t in expand(load_study(path, search_results_needed=False))]
    assert len(trials) > 100
    for t in trials:
        assert t.config.to_dict() == asdict(t.config)
    cfg = trials[0].config
    copy = cfg.to_dict()
    copy["recipe"]["epochs"] = -1
    copy["method_params"]["x"] = 1
    assert cfg.recipe.epochs != -1 and "x" not in cfg.method_params  # a copy, as asdict gives
