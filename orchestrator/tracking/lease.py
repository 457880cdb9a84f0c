"""The study's lease: one sweep writes a study at a time."""
from __future__ import annotations

import json
import os
import time

from orchestrator.errors import UserError, redact_credentials
from orchestrator.tracking.records import _int_tag
from orchestrator.tracking.tracker import Tracker


# ---------------------------------------------------------------------------------------------
# One study, one writer. A sweep holds the study's lease (an experiment tag) and renews it by a
# heartbeat; each claim raises the lease's generation, and (generation, holder id) is the token that
# every write of the sweep is made under (`Lease.check_current`, the spool's fence). A sweep that dies
# stops holding it within the lease's expiry (at once for a later sweep on the same machine, which
# sees that the holder's process is gone); one that was paused past the expiry finds, when it runs
# again, that its token is no longer current and writes nothing more.

LEASE_TAG = "ltkd.sweep_lease"
LEASE_TTL_S = 90.0
LEASE_RENEW_S = 10.0
STUDY_PLAN, TEACHERS_PLAN = "study", "teachers"  # what a lease's holder will run (`Lease(plans=...)`)
LEASE_TTL_ENV = "LTKD_LEASE_TTL_S"  # the expiry in seconds (a long partition on a cluster; tests)


def lease_ttl() -> float:
    """The lease's expiry: LTKD_LEASE_TTL_S, else 90 s (UserError naming the variable when garbled)."""
    import math

    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return LEASE_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and 4 <= value <= 86400):
        raise UserError(f"{LEASE_TTL_ENV}={raw}: the lease's expiry must be a number of seconds from 4 to 86400 (default 90)")
    return value


class LeaseLost(Exception):
    """The sweep's token is no longer current (another sweep took the study over, or the renewal came
    later than the expiry); the message is the sweep's one line."""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class Lease:
    def __init__(self, tracker: Tracker, experiment_id: str, study: str, ttl: float | None = None, renew_every: float | None = None,
                 plans: str | None = None):
        """plans: what the holder will run, for `ltkd status` to tell queued trials from missing ones:
        STUDY_PLAN (every trial of the study not done), TEACHERS_PLAN (the teachers a search needs), or
        None (a sweep that runs no trials: it closes leftovers, regenerates tables)."""
        import socket
        import threading

        self.tracker = tracker
        self.experiment_id = experiment_id
        self.study = study
        self.ttl = lease_ttl() if ttl is None else ttl
        self.renew_every = renew_every or min(LEASE_RENEW_S, self.ttl / 6)
        # Writes go on for this long after the last renewal the store took: a successor waits the
        # whole expiry from that heartbeat, so two renewals may fail before the writes pause.
        self.trusted_s = self.ttl - 2 * self.renew_every
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "id": os.urandom(8).hex(),
                       **({"plans": plans} if plans else {})}
        self.generation = 0
        self.lost: str | None = None  # the lost-lease line once this sweep may write no more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claimed_at = 0.0
        self._renewed = 0.0  # wall time of the last heartbeat the store took
        self._attempted = 0.0  # wall time of the last renewal tried (taken or not)
        self._renewing = threading.Lock()

    def _read(self) -> dict | None:
        tags = self.tracker.client.get_experiment(self.experiment_id).tags
        try:
            lease = json.loads(tags[LEASE_TAG]) if tags.get(LEASE_TAG) else None
        except (ValueError, TypeError):
            return None
        return lease if isinstance(lease, dict) else None

    def _write(self) -> None:
        now = time.time()
        self.tracker.client.set_experiment_tag(self.experiment_id, LEASE_TAG,
                                               json.dumps({**self.holder, "generation": self.generation, "heartbeat": now}))
        self._renewed = now

    def _mine(self, lease: dict | None) -> bool:
        return bool(lease) and lease.get("id") == self.holder["id"] and _int_tag(str(lease.get("generation", 0)), 0) == self.generation

    def _overwritten_late(self, lease: dict | None) -> bool:
        """A record of an earlier generation over this sweep's: a predecessor that was paused between
        reading its lease and writing its heartbeat wrote it when it ran again. Generations only count
        up, so the study is still this sweep's, and its next heartbeat puts its record back."""
        return (bool(lease) and self.generation > 0 and not lease.get("released") and lease.get("id") != self.holder["id"]
                and _int_tag(str(lease.get("generation", 0)), 0) < self.generation)

    def _still_mine(self, lease: dict | None) -> bool:
        return self._mine(lease) or self._overwritten_late(lease)

    def _held_by_other(self, lease: dict | None) -> bool:
        if not lease or lease.get("released") or lease.get("id") == self.holder["id"]:
            return False
        try:
            if time.time() - float(lease.get("heartbeat", 0)) >= self.ttl:
                return False
        except (TypeError, ValueError):
            return False
        if lease.get("host") == self.holder["host"]:  # on this machine a dead sweep is seen at once
            try:
                os.kill(int(lease.get("pid", 0)), 0)
            except ProcessLookupError:
                return False
            except (PermissionError, ValueError, OSError):
                pass
        return True

    def live_holder(self) -> dict | None:
        """The record of the sweep that holds the study now (alive, within the expiry), else None."""
        lease = self._read()
        return lease if self._held_by_other(lease) else None

    def holder_line(self, lease: dict | None) -> str:
        """`host H, pid P, started T` of a lease record."""
        return f"host {lease.get('host')}, pid {lease.get('pid')}, started {_when(float(lease.get('started', 0) or 0))}"

    def _refuse_if_held(self, lease: dict | None) -> None:
        if self._held_by_other(lease):
            raise UserError(f"study {self.study!r} is being swept by another `ltkd sweep` ({self.holder_line(lease)}) into "
                            f"{redact_credentials(self.tracker.uri)}; wait for it to end or stop it (its lease expires "
                            f"{self.ttl:.0f} s after it dies)")

    def check(self) -> None:
        """Refuse (UserError naming the holder) if another sweep holds the lease; writes nothing.
        Done before Ray starts, so a second sweep of a study is turned away in a second."""
        self._refuse_if_held(self._read())

    def claim(self) -> None:
        """Write the lease, one generation above the last, unless another sweep holds it (UserError
        naming the holder). Two sweeps that start together may both write: `confirm` tells which one
        keeps it."""
        lease = self._read()
        self._refuse_if_held(lease)
        self.generation = _int_tag(str((lease or {}).get("generation", 0)), 0) + 1
        self.holder["claimed"] = time.time()
        self._attempted = time.time()
        self._write()
        self._claimed_at = time.monotonic()

    def confirm(self, settle: float = 1.5) -> None:
        """`settle` seconds after the claim (the caller does read-only work meanwhile), only the last
        writer still reads its own token; the other raises UserError. Then the heartbeat starts."""
        import threading

        time.sleep(max(0.0, settle - (time.monotonic() - self._claimed_at)))
        lease = self._read()
        self._refuse_if_held(lease)
        if not self._mine(lease):
            raise UserError(f"study {self.study!r}: another `ltkd sweep` claimed it at the same moment "
                            f"({self.holder_line(lease or {})}); wait for it to end")
        self._thread = threading.Thread(target=self._heartbeat, name="ltkd-lease", daemon=True)
        self._thread.start()

    def _lose(self, lease: dict | None, late_s: float | None = None) -> None:
        if self.lost is None:
            if lease and not self._mine(lease) and not lease.get("released"):
                self.lost = (f"lost the lease of study {self.study!r} to host {lease.get('host')} pid {lease.get('pid')} at "
                             f"{_when(float(lease.get('claimed') or lease.get('heartbeat') or 0))}; its runs continue there")
            else:
                self.lost = (f"lost the lease of study {self.study!r}: its renewal came {late_s or 0:.0f} s late, past its "
                             f"{self.ttl:.0f} s expiry (this sweep was paused or cut off), so another sweep may have taken the "
                             "study over; this one writes nothing more: rerun the same command to go on")
        raise LeaseLost(self.lost)

    def _read_quietly(self) -> dict | None:
        try:
            return self._read()
        except Exception:  # noqa: BLE001 - naming the successor is a courtesy; the loss stands either way
            return None

    def paused_past_expiry(self) -> bool:
        """Lost, or no renewal was even tried within the expiry (the process was stopped): no store call."""
        return self.lost is not None or (self._attempted > 0 and time.time() - self._attempted > self.ttl)

    def settle_pause(self, wait_s: float = 30.0) -> bool:
        """After a possible pause, before anything is queued or the sweep reports its end: True while
        the sweep may write. Once it was paused past the expiry this sets the lost line (naming the
        successor when the store tells one) without waiting on an unreachable store."""
        if not self.paused_past_expiry():
            return True
        # The heartbeat may be renewing right now (its answer waited through the pause): its outcome first.
        if self._renewing.acquire(timeout=wait_s):
            try:
                self._renew_held()  # past the expiry this only reads, quietly, and raises LeaseLost
            except Exception:  # noqa: BLE001 - LeaseLost (the line is set), or a failed store call: the line below
                pass
            finally:
                self._renewing.release()
        if self.lost is None:
            self.lost = (f"lost the lease of study {self.study!r}: this sweep was paused past its {self.ttl:.0f} s expiry, "
                         "so another sweep may have taken the study over; this one writes nothing more: rerun the same command to go on")
        return False

    def renew(self) -> None:
        """Read the lease and write a new heartbeat if the token is still current; LeaseLost if not,
        or if the last try was longer ago than the expiry: a process that was paused cannot trust its
        own clock about what happened meanwhile, even when no one took over. A store that does not
        answer raises its own error (the writes wait, as in an outage)."""
        with self._renewing:
            self._renew_held()

    def _renew_held(self) -> None:
        """`renew` with the renewal lock held."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        now = time.time()
        if now - self._attempted > self.ttl:
            self._lose(self._read_quietly(), late_s=now - self._attempted)
        self._attempted = now
        lease = self._read()
        if time.time() - now > self.renew_every:
            # The answer came back late: the process may have been paused while it waited in the socket,
            # and a successor may have claimed the study meanwhile. Only a fresh answer is trusted.
            lease = self._read()
        if not self._still_mine(lease):
            self._lose(lease)
        self._write()
        if time.time() - self._attempted > self.ttl:
            # Paused between the read and the write: the heartbeat may have landed over a successor's
            # claim (which puts its record back, `_overwritten_late`); this sweep writes no more.
            self._lose(self._read_quietly(), late_s=time.time() - self._attempted)

    def check_current(self, decisive: bool = False) -> None:
        """Before a write of the sweep: LeaseLost once the token is not current. Within the trusted
        time since the last renewal this is a clock check; past it, or for a `decisive` write (a run
        created, continued or ended), the lease is read (and renewed when stale)."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if self.paused_past_expiry():
            self.renew()  # raises LeaseLost
        if time.time() - self._renewed >= self.trusted_s:
            self.renew()
        elif decisive and not self._still_mine(self._read()):
            self._lose(self._read_quietly())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception:  # noqa: BLE001 - the store is down: the spool copes; renew next time
                pass

    def release(self) -> None:
        """End the lease (kept as a released record so the generation keeps counting up). A sweep
        that lost it touches nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.paused_past_expiry() or not self.generation:
            return  # lost, or not sure it still holds the study: the lease expires by itself
        try:
            if self._mine(self._read()):
                self.tracker.client.set_experiment_tag(self.experiment_id, LEASE_TAG, json.dumps(
                    {"generation": self.generation, "released": time.time(), "host": self.holder["host"], "pid": self.holder["pid"]}))
        except Exception:  # noqa: BLE001 - unreachable store: the lease expires by itself
            pass


def locked_store_line(uri: str, tracker: Tracker | None, experiment_id: str | None, study: str) -> str:
    """The one line for a SQLite store that stayed locked past the wait: who holds the study's lease."""
    holder = ""
    if tracker is not None and experiment_id is not None:
        try:
            lease = Lease(tracker, experiment_id, study, ttl=LEASE_TTL_S)._read()
            if lease and not lease.get("released"):
                holder = (f"; the study's lease is held by host {lease.get('host')} pid {lease.get('pid')} since "
                          f"{_when(float(lease.get('claimed') or lease.get('started') or 0))}")
        except Exception:  # noqa: BLE001 - a store too locked even to read: the line says so without the holder
            holder = ""
    return (f"--tracking-uri {redact_credentials(uri)}: the SQLite store stayed locked by another process{holder}; wait for it "
            "to end, or stop it (a stopped process holds the lock until it is continued with `kill -CONT PID` or ends), "
            "then rerun")
