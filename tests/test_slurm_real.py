"""deploy/slurm/ltkd-sweep.sbatch on a real single-node SLURM (Debian's slurm-wlm 22.05 and munge, started
by a session fixture on loopback with its own configuration, ports, state, spool and munge key), against a
real MLflow server on loopback: a tiny study through the script as a user submits it, with only its
documented overrides (sbatch options and environment variables).

- One study: a job stopped by the time-limit warning (the script requeues it), then by `scontrol requeue`,
  then by `scancel --batch --signal=TERM`; a second job stopped by `scancel --signal=TERM` (the Ray steps);
  a third that runs to completion. After each stop the job's folder (its Ray token) is gone and, where the
  sweep saw the stop coming, its runs in flight are KILLED, none RUNNING; at the end one FINISHED run per
  config_hash, the job COMPLETED with no `srun: error` in its log.
- Its refusals: a time limit too short for any sweep, a GPU request on this GPU-less cluster (SLURM's own).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "slurm" / "ltkd-sweep.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
INSTALL = "apt-get install -y slurm-wlm munge"


def find_program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def job_fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", text))


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]
    node: str

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.root)

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", job_id, check=False)
        return job_fields(out.stdout) if out.returncode == 0 else {}

    def sbatch(self, *options: str, env: dict[str, str], cwd: Path) -> str:
        out = subprocess.run(["sbatch", "--parsable", *options, str(SCRIPT)], env={**self.env, **env}, cwd=cwd,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0]


def seconds(slurm_time: str) -> int:
    """[DAYS-]HH:MM:SS as seconds."""
    days, _, clock = slurm_time.rpartition("-")
    h, m, sec = (["0"] * 3 + clock.split(":"))[-3:]
    return ((int(days or 0) * 24 + int(h)) * 60 + int(m)) * 60 + int(sec)


def kill_ours(marker: str) -> None:
    """Processes whose environment names our SLURM configuration: the job's, which a job's end can orphan
    (proctrack/linuxproc follows parents), after the daemons are stopped."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One real SLURM node on 127.0.0.1 for the session: munged with a key of its own, slurmctld, slurmd."""
    missing = [p for p in DAEMONS + CLIENTS if find_program(p) is None]
    if missing:
        pytest.fail(f"SLURM is not installed ({', '.join(missing)} missing): install it with: sudo {INSTALL}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the real-SLURM tests start slurmd, which runs jobs as their user: run them as root", pytrace=False)
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "socket"
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    # A requeued job waits cred_expire + 1 s (120 s by default), then for the next scheduling pass (60 s
    # by default): 10 s and 5 s keep its wait short. A job that SLURM stops whole (scontrol requeue)
    # is SIGKILLed KillWait s after its SIGTERM (30 s by default): the script, which waits for its sweep,
    # is killed after 10 s instead (and the Ray node is stopped before: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S).
    conf.write_text(f"""\
ClusterName=ltkdtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
KillWait=10
ReturnToService=2
SchedulerParameters=sched_interval=5,bf_interval=5
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "MLFLOW_", "RAY_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = f"{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    procs: list[subprocess.Popen] = []
    log = open(root / "log" / "daemons.log", "a")
    cluster = Slurm(root, env, node)
    try:
        procs.append(subprocess.Popen(
            [find_program("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={root}/munge/pid", f"--log-file={root}/munge/log", f"--seed-file={root}/munge/seed"],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_until(lambda: sock.exists() or procs[0].poll() is not None, 30, "munge socket")
        assert procs[0].poll() is None, (root / "munge" / "log").read_text()[-2000:]
        for daemon in ("slurmctld", "slurmd"):
            procs.append(subprocess.Popen([find_program(daemon), "-D", "-f", str(conf)], stdout=log,
                                          stderr=subprocess.STDOUT, env=env))
        wait_until(lambda: cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle", 90,
                   "idle node in sinfo",
                   lambda: "".join((root / "log" / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log")))
        yield cluster
    finally:
        cluster.run("scancel", "--user=root", check=False)
        try:
            wait_until(lambda: not cluster.run("squeue", "-h", check=False).stdout.strip(), 60, "empty queue")
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_ours(f"SLURM_CONF={conf}")


def tiny_study(folder: Path, name: str, epochs: int) -> Path:
    """studies/smoke.yaml's shape cut to its fewest trials: one γ, one seed, KD only (a teacher, a
    student baseline, a distillation), saved every epoch so that a stopped trial resumes."""
    study = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    study.update(name=name, seeds=[0], methods={"kd": study["methods"]["kd"]})
    study["dataset"]["gammas"] = [10]
    study["recipe"].update(epochs=epochs, milestones=[epochs - 2, epochs - 1], checkpoint_every=1)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def trial_runs(url: str, study: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000) if "config_hash" in r.data.tags]


def loss_counts(url: str, study: str) -> dict[str, int]:
    """Epochs logged so far by each RUNNING trial run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    return {r.info.run_id: len(client.get_metric_history(r.info.run_id, "loss"))
            for r in trial_runs(url, study) if r.info.status == "RUNNING"}


@dataclass
class Sweep:
    """One study submitted through the script, as a user does."""
    slurm: Slurm
    url: str
    folder: Path
    study: str
    storage: Path

    def submit(self, *options: str, **env: str) -> str:
        base = {"LTKD_STUDY": str(self.folder / f"{self.study}.yaml"), "LTKD_STORAGE": str(self.storage),
                "LTKD_VENV": str(REPO / ".venv"), "MLFLOW_TRACKING_URI": self.url, "HOME": str(self.folder),
                "LTKD_RAY_PORT": str(free_port()),  # not 6379, which another Ray on this machine may hold
                # A Ray node that SLURM stops whole (scontrol requeue) while its trials run waits up to this
                # long for them to drain (30 s by default) before it stops; Ray's own setting.
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
        return self.slurm.sbatch("--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", *options,
                                 env={**base, **env}, cwd=self.folder)

    def log(self, job_id: str) -> str:
        path = self.folder / f"ltkd-sweep-{job_id}.out"
        return path.read_text() if path.exists() else ""

    def state(self, job_id: str) -> dict[str, str]:
        return self.slurm.job(job_id)

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float, restarts: int | None = None) -> dict:
        def reached():
            job = self.state(job_id)
            ok = job.get("JobState") in states and (restarts is None or job.get("Restarts") == str(restarts))
            return job if ok else None
        return wait_until(reached, timeout, f"job {job_id} in {states}", lambda: self.log(job_id)[-4000:])

    def wait_training(self, job_id: str, timeout: float = 300) -> None:
        """Until a trial run of this job's run is RUNNING and has logged two more epochs than it had
        before (a resumed run starts from its saved epoch)."""
        before = {r.info.run_id: len(self.client.get_metric_history(r.info.run_id, "loss"))
                  for r in trial_runs(self.url, self.study)}
        wait_until(lambda: any(n >= before.get(run, 0) + 2 for run, n in loss_counts(self.url, self.study).items()),
                   timeout, f"training in job {job_id}", lambda: self.log(job_id)[-4000:])

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.url)

    def assert_stopped_cleanly(self, job_id: str) -> None:
        """After a stop that the sweep saw coming (the warning, a SIGTERM to the script): its runs in
        flight KILLED, nothing RUNNING, the job's folder (its Ray token) removed."""
        status = [r.info.status for r in trial_runs(self.url, self.study)]
        assert "KILLED" in status and "RUNNING" not in status, (status, self.log(job_id)[-4000:])
        assert not list(self.storage.glob(".ltkd-slurm-*")), self.log(job_id)[-4000:]

    def assert_stopped_with_ray(self, job_id: str) -> int:
        """After a stop that took Ray down at once (SLURM signalling the whole job, or its steps): no
        token left (the folder itself may stay when SLURM SIGKILLs the script after its KillWait; the
        job's next run removes it); returns how many runs the sweep could not close (the next one does)."""
        assert not list(self.storage.glob(".ltkd-slurm-*/token")), self.log(job_id)[-4000:]
        return [r.info.status for r in trial_runs(self.url, self.study)].count("RUNNING")

    def assert_done(self, trials: int) -> None:
        runs = trial_runs(self.url, self.study)
        by_hash: dict[str, list[str]] = {}
        for r in runs:
            by_hash.setdefault(r.data.tags["config_hash"], []).append(r.info.status)
        assert len(by_hash) == trials and all(s == ["FINISHED"] for s in by_hash.values()), by_hash
        assert not list(self.storage.glob(".ltkd-slurm-*"))


@pytest.fixture
def new_sweep(slurm, mlflow_server, tmp_path, request):
    """A tiny study of `epochs` epochs per trial, named after the test (its own MLflow experiment)."""
    def make(epochs: int) -> Sweep:
        name = "slurm-" + re.sub(r"\W+", "-", request.node.name.removeprefix("test_"))[:40]
        tiny_study(tmp_path, name, epochs)
        return Sweep(slurm, mlflow_server, tmp_path, name, tmp_path / "shared")
    return make


def test_a_sweep_stopped_by_the_time_limit_requeue_and_scancel_goes_on_to_one_finished_run_per_trial(new_sweep):
    """One study through every way a job of the script is stopped, each checked where it happens, then
    to its end (one job where it can: each stop leaves the next one something to stop)."""
    # 300 epochs: trials outlast the four stops (about 35 s of training here, most of it the wait for
    # the warning) with room to spare, and the last job trains what is left.
    sweep = new_sweep(300)
    # The warning 180 s before the limit. Once trials train, the limit is cut to the minute that leaves
    # 121-180 s: SLURM sends the warning at its next time-limit check (every 30 s), mid-trial whatever
    # this machine's speed; the script stops the sweep and requeues the job itself.
    job = sweep.submit("--time=10", SBATCH_SIGNAL="B:TERM@180")
    sweep.wait_training(job)
    run_time = seconds(sweep.state(job)["RunTime"])
    sweep.slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={(run_time + 180) // 60}")
    sweep.wait_state(job, ("PENDING",), 300, restarts=1)
    # Before the requeued run starts (11 s at least): from now on, room to finish.
    sweep.slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=30")
    log = sweep.log(job)
    assert "ltkd-sweep.sbatch: SIGTERM: the time limit is near" in log, log[-4000:]
    assert "ltkd: interrupted (SIGTERM)" in log and f"ltkd-sweep.sbatch: requeueing job {job}" in log, log[-4000:]
    sweep.assert_stopped_cleanly(job)

    # `scontrol requeue`: SLURM stops every process of the job, Ray with it.
    sweep.wait_training(job)
    sweep.slurm.run("scontrol", "requeue", job)
    sweep.wait_state(job, ("PENDING",), 120, restarts=2)
    log = sweep.log(job)
    assert "ltkd-sweep.sbatch: SIGTERM: the job is being requeued (scontrol requeue" in log, log[-4000:]
    assert log.count("requeueing job") == 1, log[-4000:]
    left_running = sweep.assert_stopped_with_ray(job)

    # `scancel --batch --signal=TERM`: the script alone; the job ends, not requeued.
    earlier = len(log)  # each run of the job appends to its log
    sweep.wait_training(job)
    sweep.slurm.run("scancel", "--batch", "--signal=TERM", job)
    info = sweep.wait_state(job, ("COMPLETED", "FAILED"), 180)
    log = sweep.log(job)[earlier:]
    assert (info["ExitCode"], info["Restarts"]) == ("143:0", "2"), log[-4000:]
    assert left_running == 0 or f"continuing {left_running} run(s) of trials that an earlier sweep did not finish" in log
    assert "ltkd-sweep.sbatch: SIGTERM sent to the batch script (scancel --batch" in log, log[-4000:]
    assert "ltkd: interrupted (SIGTERM)" in log and "requeueing" not in log, log[-4000:]
    sweep.assert_stopped_cleanly(job)

    # `scancel --signal=TERM`: the job's steps (the Ray node), not the script. The sweep, its Ray gone,
    # may exit only when Ray gives up reconnecting to its GCS: after 10 s (Ray's own setting) instead of 60.
    job = sweep.submit(RAY_gcs_rpc_server_reconnect_timeout_s="10")
    sweep.wait_training(job)
    sweep.slurm.run("scancel", "--signal=TERM", job)
    info = sweep.wait_state(job, ("COMPLETED", "FAILED"), 240)
    log = sweep.log(job)
    assert (info["ExitCode"], info["Restarts"]) == ("143:0", "0"), log[-4000:]
    assert "ltkd-sweep.sbatch: a Ray node's job step ended" in log and "requeueing" not in log, log[-4000:]
    left_running = sweep.assert_stopped_with_ray(job)

    # The same sbatch again: the sweep ends.
    job = sweep.submit()
    info = sweep.wait_state(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600)
    log = sweep.log(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert "srun: error" not in log and "Killed" not in log and "done in" in log, log[-4000:]
    assert left_running == 0 or f"continuing {left_running} run(s) of trials that an earlier sweep did not finish" in log
    sweep.assert_done(3)


def test_a_time_limit_too_short_for_a_sweep_is_refused_in_one_line(new_sweep):
    sweep = new_sweep(4)
    job = sweep.submit("--time=6")  # the default warning, 300 s before the limit (up to 360 s): no sweep time
    info = sweep.wait_state(job, ("COMPLETED", "FAILED"), 120)
    log = sweep.log(job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), log
    assert log == ("ltkd-sweep.sbatch: --time=00:06:00 leaves 0 s of sweep before the SIGTERM 300 s (up to 360 s) "
                   "before the limit; at least LTKD_MIN_RUN=300 s are needed: --time=11 (minutes) or more\n"), log
    assert trial_runs(sweep.url, sweep.study) == []


def test_the_default_gpu_request_is_refused_by_a_cluster_without_gpus_and_the_override_is_accepted(slurm, tmp_path):
    env = {"LTKD_STUDY": "unused.yaml"}
    refused = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--hold", str(SCRIPT)],
                             env={**slurm.env, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "Invalid generic resource (gres) specification" in refused.stderr
    job = slurm.sbatch("--nodes=1", "--cpus-per-task=2", "--gpus-per-node=0", "--hold", env=env, cwd=tmp_path)
    assert slurm.job(job)["JobState"] == "PENDING"  # held: accepted, never run
    slurm.run("scancel", job)
