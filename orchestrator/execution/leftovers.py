"""What a sweep killed with SIGKILL leaves on its machine, and its cleanup by the next sweep.

A sweep that starts its own local Ray records, in ~/.cache/ltkd/drivers/<pid>.json, the Ray session
it started and the temporary Tune folder it made. Killed with SIGKILL, it cannot stop them: Ray's
agents (DashboardAgent, RuntimeEnvAgent) outlive it as orphans, holding files of the session, and the
`ltkd-tune-*` folder stays. The next sweep on the machine finds the records of drivers that are
gone (the pid is dead, or now belongs to another process), stops the processes that still hold that
session's files, and removes the folder. A live sweep's record is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path


def _registry() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "ltkd" / "drivers"


def _own_record() -> Path:
    return _registry() / f"{os.getpid()}.json"


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1.0  # exists, but not ours to inspect: treat as alive


def record(**entries: str) -> None:
    """Add what this sweep made that must not outlive it (session_dir=..., tune_dir=...)."""
    path = _own_record()
    try:
        data = json.loads(path.read_text()) if path.exists() else {"pid": os.getpid(), "started": _process_start(os.getpid())}
        data.update(entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # best effort: without a record only the cleanup after a SIGKILL is lost


def forget() -> None:
    """The sweep ended normally (Ray shut down, its folder removed): nothing to clean after it."""
    try:
        _own_record().unlink()
    except OSError:
        pass


def _holders(session_dir: str) -> list:
    """This user's processes that still belong to a Ray session: its path in their command line
    or in their open files (orphaned agents renamed themselves, but keep their logs open)."""
    import psutil

    me = os.getuid()
    found = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != me or proc.pid == os.getpid():
                continue
            if any(session_dir in part for part in proc.info["cmdline"] or []) or any(
                    f.path.startswith(session_dir) for f in proc.open_files()):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def clean_after_killed_sweeps() -> list[str]:
    """Stop and remove what killed sweeps on this machine left; one line per sweep cleaned."""
    import psutil

    lines = []
    folder = _registry()
    if not folder.is_dir():
        return lines
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        started, recorded = _process_start(pid), data.get("started")
        if started is not None and (started == -1.0 or recorded is None or abs(started - float(recorded)) < 1.0):
            continue  # that sweep is alive (a pid now used by another process has another start time)
        stopped = 0
        session = data.get("session_dir")
        if session and os.path.basename(session).startswith("session_"):
            procs = _holders(session)
            for p in procs:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=5)
            for p in alive:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            stopped = len(procs)
        removed = []
        tune_dir = data.get("tune_dir")
        if tune_dir and os.path.basename(tune_dir).startswith("ltkd-tune-") and os.path.isdir(tune_dir):
            shutil.rmtree(tune_dir, ignore_errors=True)
            removed.append(tune_dir)
        path.unlink(missing_ok=True)
        if stopped or removed:
            lines.append(f"cleaned up after a sweep that was killed (pid {pid}): stopped {stopped} leftover Ray process(es)"
                         + (f", removed {', '.join(removed)}" if removed else ""))
    return lines

