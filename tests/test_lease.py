"""The study's lease on a real (SQLite) MLflow store, with a pause put exactly where a SIGSTOP can land:
between a heartbeat's read and its write, and between a sweep's last heartbeat and its next write.

In `test_fencing.py` the same pauses come from SIGSTOP on a whole sweep, where they land wherever
they land; here each lands in the one place that once let a paused sweep write over its successor."""
from __future__ import annotations

import json
import os
import time

import pytest

from orchestrator.commands.session import leased_writer
from orchestrator.tracking import Lease, LeaseLost, Tracker
from orchestrator.tracking.lease import LEASE_TAG

TTL = 3.0


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    exp_id = tracker.client.create_experiment("leased")
    return uri, tracker, exp_id


def stored_lease(tracker: Tracker, exp_id: str) -> dict:
    return json.loads(tracker.client.get_experiment(exp_id).tags[LEASE_TAG])


def successor_claims(uri: str, exp_id: str, first: Lease) -> Lease:
    """A second sweep's lease, claimed once the first's last heartbeat is past its expiry."""
    time.sleep(max(0.0, first._renewed + TTL + 0.2 - time.time()))
    second = Lease(Tracker(uri), exp_id, "leased", ttl=TTL)
    second.claim()
    return second


def test_a_heartbeat_answered_before_a_pause_does_not_land_over_the_successors_claim(store):
    uri, tracker, exp_id = store
    first = Lease(tracker, exp_id, "leased", ttl=TTL)
    first.claim()
    real_read = tracker.client.get_experiment
    successor: list[Lease] = []

    def answered_then_paused(experiment_id):
        answer = real_read(experiment_id)  # the store answered: the lease is still the first's
        if not successor:  # ... and the process stopped before it read the answer; meanwhile a second sweep claimed
            successor.append(successor_claims(uri, exp_id, first))
        return answer

    tracker.client.get_experiment = answered_then_paused
    with pytest.raises(LeaseLost) as lost:
        first.renew()
    second = successor[0]
    assert str(lost.value).startswith(f"lost the lease of study 'leased' to host {second.holder['host']} pid {os.getpid()} at ")
    held = stored_lease(tracker, exp_id)
    assert (held["id"], held["generation"]) == (second.holder["id"], 2), held  # the successor's claim stands
    first.release()  # a sweep that lost the lease touches nothing
    assert stored_lease(tracker, exp_id)["id"] == second.holder["id"]


def test_a_heartbeat_that_landed_late_is_put_back_by_the_successor_and_the_late_one_stops(store):
    uri, tracker, exp_id = store
    first = Lease(tracker, exp_id, "leased", ttl=TTL)
    first.claim()
    second = successor_claims(uri, exp_id, first)
    first._write()  # the first's heartbeat, read before the claim, lands after it (paused between the two)
    assert stored_lease(tracker, exp_id)["generation"] == 1
    second.renew()  # generations only count up: a record of generation 1 over 2 is a late write
    assert (stored_lease(tracker, exp_id)["id"], stored_lease(tracker, exp_id)["generation"]) == (second.holder["id"], 2)
    second.check_current(decisive=True)  # still its own
    with pytest.raises(LeaseLost, match=rf"to host \S+ pid {os.getpid()} at "):
        first.check_current(decisive=True)
    second.release()
    assert stored_lease(tracker, exp_id)["released"]


def test_a_writer_paused_past_its_expiry_is_fenced_at_its_next_event_instead_of_dropping_it(store, tmp_path):
    """Its trials trained on while its driver was stopped (a cluster's workers are not on the driver's
    machine): the first event after the pause fences the writer with the lease's line, nothing is
    queued, and the sweep can no longer end as if all had been written."""
    uri, tracker, exp_id = store
    first = Lease(tracker, exp_id, "leased", ttl=TTL)
    first.claim()
    writer = leased_writer(tracker, uri, str(tmp_path / "spool" / "own"), str(tmp_path / "spool"), first, lambda note: None)
    key = writer.new_run(exp_id, "teacher", {"seed": "0"}, {"config_hash": "abc"})
    writer.log_metrics(key, {"loss": 1.0}, 1)
    assert writer.flush(timeout=30) and writer.fenced is None
    second = successor_claims(uri, exp_id, first)  # the first's heartbeat (never renewed here) is past its expiry
    assert first.paused_past_expiry() and first.lost is None
    writer.log_metrics(key, {"loss": 0.5}, 2)
    assert first.lost is not None and first.lost.startswith("lost the lease of study 'leased' to host ")
    assert writer.fenced == first.lost
    writer.end_run(key, "FINISHED")  # after the fence: neither written nor queued
    writer.close()
    run_id = tracker.client.search_runs([exp_id])[0].info.run_id
    assert [m.step for m in tracker.client.get_metric_history(run_id, "loss")] == [1]
    assert tracker.client.get_run(run_id).info.status == "RUNNING"  # the successor continues it
    assert not first.settle_pause()
    first.release()
    assert stored_lease(tracker, exp_id)["id"] == second.holder["id"]
