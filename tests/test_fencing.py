"""One study, one writer, injected for real: a sweep SIGSTOPped past its lease's expiry while a second
sweep takes the study over, then SIGCONTed; a study swept from two folders with the default SQLite URI
and one store under two spellings, a SQLite store whose write lock a paused process holds; a spool with
a torn last record and a garbage record in the middle; a SQLite store deleted mid-sweep.

Each sweep runs as `ltkd sweep` in its own process (as users do), with its own HOME."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_cluster_sweeps import LTKD, Sweep, assert_complete, running_with_epochs, runs_of, sweep_env, wait_for, write_study

from orchestrator.tracking import SpooledWriter, spooled_runs
from orchestrator.commands.session import spool_folder
from orchestrator.tracking import Tracker, is_transient_failure, store_gone, store_identity, store_trouble

pytestmark = pytest.mark.integration


def _sweep_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("ltkd-spool/*/sweep-*"))


def test_a_sweep_paused_past_its_lease_stops_when_it_runs_again_and_writes_nothing(mlflow_server, tmp_path):
    """SIGSTOP the first sweep (its driver and its local Ray's daemons; Ray's trial workers, each in a
    process group of its own, train on, as a cluster's workers do when the driver's machine sleeps)
    past the lease's expiry; a second sweep takes the study over and continues its run; SIGCONT the
    first: the results its trial sent meanwhile fence it at once (`test_lease.py` puts the pause
    inside the heartbeat)."""
    study = write_study(tmp_path, "fenced", epochs=3, teacher_epochs=20)  # paused after 3: the second trains the rest
    env = sweep_env(tmp_path, LTKD_LEASE_TTL_S="8")
    cmd = [LTKD, "sweep", str(study), "--tracking-uri", mlflow_server, "--storage", str(tmp_path / "storage")]
    first = Sweep(cmd, tmp_path, env, start_new_session=True)
    second = None
    try:
        first.wait_line("tracking:")
        paused_run = wait_for(lambda: running_with_epochs(mlflow_server, "fenced", 3), 180, "3 teacher epochs", first)[0]
        os.killpg(first.pid, signal.SIGSTOP)
        stopped_at = time.time()
        first_spool = _sweep_dirs(tmp_path / "storage")
        assert [p.name[:9] for p in first_spool] == ["sweep-g1-"]
        time.sleep(10)  # past the 8 s expiry of the last heartbeat
        second = Sweep(cmd, tmp_path, env)
        second.wait_line("continuing 1 run(s)", timeout=240)
        # The second replayed the first's spool and removed its folder; it queues into its own.
        assert [p.name[:9] for p in _sweep_dirs(tmp_path / "storage")] == ["sweep-g2-"]
        os.killpg(first.pid, signal.SIGCONT)
        assert time.time() - stopped_at > 8
        rc = first.finish(timeout=240)
        lines = [line for line in first.output.splitlines() if line.startswith("ltkd:")]
        assert rc == 1, first.output[-3000:]
        assert len(lines) == 1, first.output[-3000:]
        assert re.fullmatch(rf"ltkd: failed: lost the lease of study 'fenced' to host \S+ pid {second.pid} at "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d; its runs continue there", lines[0]), lines[0]
        assert "Traceback" not in first.output and "unreachable" not in first.output
        # It wrote nothing more: no spool folder of its own came back beside the second's.
        assert [p.name[:9] for p in _sweep_dirs(tmp_path / "storage")] in (["sweep-g2-"], [])
        assert second.finish(timeout=400) == 0, second.output[-3000:]
    finally:
        for s in (first, second):
            if s is not None and s.poll() is None:
                os.killpg(s.pid, signal.SIGCONT) if s is first else None
                s.proc.kill()
    out = second.output
    assert "unreachable" not in out and "refused" not in out and "corrupt" not in out, out
    runs = assert_complete(mlflow_server, "fenced", 2)  # one FINISHED run per hash, every epoch once
    teacher = [r for r in runs if r.data.params["role"] == "teacher"][0]
    assert teacher.info.run_id == paused_run.info.run_id and teacher.data.tags["attempts"] == "2"
    assert _sweep_dirs(tmp_path / "storage") == []  # the second's spool, written in full, is gone with it
    lease = MlflowClient(mlflow_server).get_experiment_by_name("fenced").tags["ltkd.sweep_lease"]
    assert '"generation": 2' in lease and '"released"' in lease


def _hold_write_lock(db: Path) -> subprocess.Popen:
    """A process that takes the SQLite write lock and stops itself holding it (a writer paused mid-write)."""
    code = textwrap.dedent(f"""
        import os, signal, sqlite3
        con = sqlite3.connect({str(db)!r}, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE experiments SET name = name")
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_default_uri_from_two_folders_and_two_spellings_of_one_store(tmp_path):
    """Sweep A (`sqlite:///mlflow.db` in folder A) is killed while its writes wait on a locked store;
    sweep B of the same study from folder B, same HOME and so the same spool root, writes only its own
    runs; A's store, rerun under its absolute spelling, replays A's spool once."""
    env = sweep_env(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        write_study(folder, "two_folders")
    study = "two_folders.yaml"
    sweep_a = Sweep([LTKD, "sweep", study], a, env, start_new_session=True)
    locker = sweep_b = None
    try:
        sweep_a.wait_line("tracking:")
        assert f"tracking: sqlite:///{a}/mlflow.db (experiment" in sweep_a.output  # the default, resolved
        sweep_a.wait_line("started ")  # past the experiment's description, the driver's last write before the spool's
        locker = _hold_write_lock(a / "mlflow.db")
        sweep_a.wait_line("[2/2] FINISHED", timeout=240)  # trained; its writes wait in the spool
        # While the paused writer holds the lock: readers read (WAL), a second sweep is refused in one line.
        status = subprocess.run([LTKD, "status", study], cwd=a, env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode in (0, 1) and "study two_folders:" in status.stdout, status.stdout + status.stderr
        os.killpg(sweep_a.pid, signal.SIGKILL)
        sweep_a.finish()
        queued = [d for d in (tmp_path / "home/.cache/ltkd/spool").iterdir() if spooled_runs(str(d)) or list(d.glob("sweep-*/*.jsonl"))]
        assert len(queued) == 1, "sweep A left its queued writes in one spool folder"
        # Sweep B (folder B, its own store) runs while the one in folder A waits on A's lock: nothing of
        # B waits on that lock, and the refused sweep writes nothing.
        sweep_b = Sweep([LTKD, "sweep", study], b, env)
        started = time.time()
        locked = subprocess.run([LTKD, "sweep", study], cwd=a, env=env, capture_output=True, text=True, timeout=240)
        assert locked.returncode == 2, locked.stdout + locked.stderr
        line = locked.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert line.startswith(f"ltkd: error: --tracking-uri sqlite:///{a}/mlflow.db: the SQLite store stayed locked by another "
                               "process; the study's lease is held by host "), line
        assert f" pid {sweep_a.pid} since " in line and "kill -CONT PID" in line
        assert time.time() - started >= 15  # waited on the lock (MLflow's 20 s) before saying so
    except BaseException:
        if sweep_b is not None and sweep_b.poll() is None:
            sweep_b.proc.kill()
        raise
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
        if sweep_a.poll() is None:
            os.killpg(sweep_a.pid, signal.SIGKILL)
    assert sweep_b.finish(timeout=400) == 0, sweep_b.output
    assert "replaying" not in sweep_b.output  # A's spool is A's store's
    assert_complete(f"sqlite:///{b}/mlflow.db", "two_folders", 2)

    absolute = f"sqlite:///{a}/mlflow.db"
    res_a = subprocess.run([LTKD, "sweep", str(a / study), "--tracking-uri", absolute], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=400)
    assert res_a.returncode == 0, res_a.stdout + res_a.stderr
    assert "replaying 2 run(s) of tracking writes queued by an earlier sweep" in res_a.stdout, res_a.stdout
    assert "nothing to run" in res_a.stdout  # the replay finished both trials: none trained again
    assert_complete(absolute, "two_folders", 2)  # one FINISHED per hash, one row per metric step
    assert spool_folder(None, "sqlite:///mlflow.db", "s", "1") != spool_folder(None, f"sqlite:///{a}/mlflow.db", "s", "1")


def test_spool_identity_is_what_the_store_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "sub", tmp_path / "link")
    same_file = ["sqlite:///sub/mlflow.db", f"sqlite:///{tmp_path}/sub/mlflow.db", f"sqlite:///{tmp_path}/link/mlflow.db",
                 "sqlite:///./sub/../sub/mlflow.db"]
    assert {store_identity(u) for u in same_file} == {f"sqlite:{tmp_path}/sub/mlflow.db"}
    assert len({spool_folder(None, u, "study", "3") for u in same_file}) == 1
    servers = ["http://MLflow.example:80/", "http://mlflow.example", "http://user:secret@mlflow.example/"]
    assert {store_identity(u) for u in servers} == {"http://mlflow.example"}
    assert store_identity("http://mlflow.example:5000") != store_identity("http://mlflow.example")
    assert spool_folder(None, servers[0], "study", "3") != spool_folder(None, servers[0], "study", "4")  # per experiment


def _queue_unwritten(folder: Path, experiment_id: str, runs: int, epochs: int, store_identity: str | None = None) -> None:
    """Queue runs into a spool while the store is away (a refused port), as a sweep does in an outage."""
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the refused port fails at once
    try:
        writer = SpooledWriter(Tracker("http://127.0.0.1:9"), str(folder), workers=1, is_transient=is_transient_failure,
                               store_identity=store_identity)
        for i in range(runs):
            key = writer.new_run(experiment_id, f"run {i}", {"i": str(i)}, {"config_hash": f"h{i}"})
            for step in range(1, epochs + 1):
                writer.log_metrics(key, {"loss": i + step / 100}, step)
            writer.end_run(key, "FINISHED")
        writer.close()
    finally:
        if before is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = before


def test_a_torn_last_record_and_a_garbage_middle_record_replay_to_the_end(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = Tracker(uri)
    exp = store.client.create_experiment("torn")
    folder = tmp_path / "spool"
    _queue_unwritten(folder, exp, runs=2, epochs=5)
    torn, garbled = sorted(folder.glob("*.jsonl"))
    tail = b'{"op":"metrics","step":6,"t":1,"metr'  # a crash mid-append: half a record, no newline
    torn.write_bytes(torn.read_bytes() + tail)
    lines = garbled.read_bytes().splitlines(keepends=True)
    garbage = b"\x00\xff garbage \x13\n"
    garbled.write_bytes(b"".join(lines[:3]) + garbage + b"".join(lines[3:]))
    notes: list[str] = []
    writer = SpooledWriter(store, str(folder), workers=2, is_transient=is_transient_failure, on_warning=notes.append)
    assert writer.replayed == 2
    assert writer.flush(timeout=120), "the replay did not end"
    writer.close()
    quarantine = folder / "quarantine" / garbled.name
    assert quarantine.read_bytes() == garbage
    assert [n for n in notes if n.startswith("tracking: the last record")] == [f"tracking: the last record of {torn} was torn ({len(tail)} bytes: a crash "
                                                 "mid-write); dropped, the rest replays"]
    corrupt = [n for n in notes if n.startswith("tracking: a corrupt record")]
    assert len(corrupt) == 1 and f"was moved to {quarantine};" in corrupt[0], notes
    assert len(notes) == 2, notes  # nothing refused, nothing else
    client = MlflowClient(uri)
    found = client.search_runs([exp])
    assert sorted(r.data.params["i"] for r in found) == ["0", "1"] and {r.info.status for r in found} == {"FINISHED"}
    for r in found:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5], (r.data.params["i"], steps)  # each step once
    assert not list(folder.glob("*.jsonl"))  # written and ended: the spool is empty


def test_a_run_queued_for_another_store_is_not_written_into_this_one(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = Tracker(uri)
    exp = store.client.create_experiment("elsewhere")
    folder = tmp_path / "spool"
    _queue_unwritten(folder, exp, runs=1, epochs=2, store_identity=f"sqlite:{tmp_path}/other/mlflow.db")
    (queued,) = folder.glob("*.jsonl")
    notes: list[str] = []
    writer = SpooledWriter(store, str(folder), workers=1, is_transient=is_transient_failure, on_warning=notes.append,
                           store_identity=store_identity(uri))
    assert writer.flush(timeout=60)
    writer.close()
    moved = folder / "quarantine" / f"{queued.stem}.other-store.jsonl"
    assert notes == [f"tracking: run {queued.stem} was queued for another store (sqlite:{tmp_path}/other/mlflow.db), not this one "
                     f"(sqlite:{tmp_path}/mlflow.db); not written here, its events are in {moved}"]
    assert len(moved.read_bytes().splitlines()) == 4  # start, two epochs, end: kept whole
    assert MlflowClient(uri).search_runs([exp]) == []


def test_a_deleted_or_read_only_sqlite_store_and_a_full_disk_say_what_happened(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    store = Tracker(uri)
    exp = store.client.create_experiment("gone")
    run_id = store.create_run(exp, "r", {}, {"config_hash": "h"})
    os.remove(db)
    try:
        store.log_metrics(run_id, {"loss": 1.0}, 1)
    except Exception as exc:  # noqa: BLE001 - the real failure MLflow raises for a deleted file
        deleted = exc
    assert is_transient_failure(deleted)  # MLflow calls it TEMPORARILY_UNAVAILABLE: so the outage wording was wrong
    assert store_trouble(deleted, uri) == f"the SQLite store {db} was deleted"
    assert store_gone(deleted, uri) == (f"the SQLite store {db} was deleted while the sweep ran; nothing more is written "
                                        "(a new file there is an empty store)")
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    read_only = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as info:
        read_only.execute("INSERT INTO t VALUES (1)")
    assert store_trouble(info.value, uri) == f"the SQLite store {db} is read-only"
    assert store_gone(info.value, uri) is None
    with pytest.raises(OSError) as full:
        with open("/dev/full", "w") as f:
            f.write("x")
            f.flush()
    assert store_trouble(full.value, "http://127.0.0.1:5000") == "disk full (No space left on device)"
    assert store_trouble(ConnectionError("refused"), "http://127.0.0.1:5000") == "server unreachable"


def test_a_sqlite_store_deleted_mid_sweep_stops_the_sweep_with_what_happened(tmp_path):
    study = write_study(tmp_path, "deleted", epochs=3, teacher_epochs=60)
    db = tmp_path / "mlflow.db"
    sweep = Sweep([LTKD, "sweep", str(study), "--tracking-uri", f"sqlite:///{db}"], tmp_path, sweep_env(tmp_path),
                  start_new_session=True)
    try:
        sweep.wait_line("tracking:")
        wait_for(lambda: running_with_epochs(f"sqlite:///{db}", "deleted", 2), 180, "2 teacher epochs", sweep)
        os.remove(db)
        rc = sweep.finish(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    out = sweep.output
    assert rc == 1, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("ltkd:")]
    assert len(lines) == 1 and lines[0].startswith(f"ltkd: failed: the SQLite store {db} was deleted while the sweep ran; "), out[-3000:]
    assert "unreachable" not in out and "Traceback" not in out


class _InterruptedOutput:
    """Standard output whose line containing `text` is where Ctrl-C lands (a real KeyboardInterrupt,
    raised where the sweep prints it)."""

    def __init__(self, text: str):
        self.text, self.lines = text, []

    def write(self, s: str) -> int:
        if self.text in s:
            raise KeyboardInterrupt
        self.lines.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def test_ctrl_c_during_a_dry_run_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    study = write_study(tmp_path, "dry")
    monkeypatch.setattr(sys, "stdout", _InterruptedOutput("  teacher "))
    assert main(["sweep", str(study), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 130
    assert capsys.readouterr().err == "ltkd: interrupted: during the dry run; it writes nothing, and nothing was written\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_during_a_replay_says_no_trial_had_started_and_keeps_the_spool(ray_local, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    study = write_study(tmp_path, "replayed")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = Tracker(uri).experiment_id("replayed", create=True)
    earlier = Path(spool_folder(None, uri, "replayed", exp)) / "sweep-g1-0123456789abcdef"
    _queue_unwritten(earlier, exp, runs=1, epochs=3)
    monkeypatch.setattr(sys, "stdout", _InterruptedOutput("replaying 1 run(s)"))
    assert main(["sweep", str(study), "--tracking-uri", uri]) == 130
    err = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines of creating the store
    assert err == ("ltkd: interrupted: while replaying the tracking writes of an earlier sweep; no trial had started, and "
                   f"what was not yet written stays in {earlier.parent}: run the same command again to go on"), err
    assert "KILLED" not in err
    # What the replay had queued is written before the sweep stops (it flushes for up to 15 s), nothing is
    # lost and no trial ran: the store holds the replayed run alone.
    client = MlflowClient(uri)
    runs = client.search_runs([exp], "tags.config_hash != ''")
    assert [(r.data.tags["config_hash"], r.info.status) for r in runs] == [("h0", "FINISHED")]
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == [1, 2, 3]
    assert spooled_runs(str(earlier)) == []


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "1", "-5", "1e9"])
def test_a_garbled_lease_expiry_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, value):
    from orchestrator.cli import main

    monkeypatch.setenv("LTKD_LEASE_TTL_S", value)
    study = write_study(tmp_path, "ttl")
    assert main(["sweep", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert capsys.readouterr().err == (f"ltkd: error: LTKD_LEASE_TTL_S={value}: the lease's expiry must be a number of seconds "
                                       "from 4 to 86400 (default 90)\n")
    assert not (tmp_path / "mlflow.db").exists()
