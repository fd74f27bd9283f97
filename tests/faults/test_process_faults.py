"""Processes killed or stopped under load: a worker SIGKILLed, the master SIGKILLed, the
whole server SIGTERMed. Nothing a hook answer or a feedback acknowledgement covered is lost:
it was journaled before the answer left, and the next shipper (a sibling worker, or the next
start on the same journal) moves it to the registry."""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import stop
from tests.faults.harness import Load, ReadinessWatch, recovered, report, workers_of

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: what a client may see when the worker holding its connection is killed: its own call in
#: flight, or the next call on a kept-alive connection to that worker
CUT = {"ConnectionError", "ChunkedEncodingError"}


def connection_cuts(load: Load) -> int:
    assert set(load.refused) <= CUT, load.refused
    assert set(load.feedback_refused) <= CUT, load.feedback_refused
    return sum(load.refused.values()) + sum(load.feedback_refused.values())


def assert_all_stored(figures: dict) -> None:
    assert figures["evaluations_lost"] == 0 and figures["feedback_lost"] == 0, figures
    assert figures["answered_without_cards"] == 0, figures


def test_sigkill_of_a_worker(rig):
    server = rig.start()
    load = Load(rig)
    watch = ReadinessWatch(rig)
    time.sleep(3)
    os.kill(workers_of(server)[0], signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(4)
    load.stop()
    recovered(rig, load)
    watch.stop()
    cuts = connection_cuts(load)
    figures = report(
        "SIGKILL of a worker",
        load,
        round(time.monotonic() - killed, 1),
        calls_cut_with_the_worker=cuts,
        readiness=watch.statuses,
    )
    stop(server)
    assert cuts <= 8, figures  # one per client connection at most (6 hook + 2 feedback)
    assert_all_stored(figures)


def restart(rig, port: int, within: float = 30.0):
    """Start again on ``port`` (a restart after a crash binds the same address), retrying
    while the port is still held; returns the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            rig.start(port=port)
            return round(time.monotonic() - started, 1)
        except RuntimeError:
            if time.monotonic() - started > within:
                raise
            time.sleep(0.5)


def test_sigkill_of_the_master_and_a_restart_on_the_same_port(rig):
    server = rig.start()
    port = urlsplit(server.url).port
    load = Load(rig)
    time.sleep(3)
    orphans = workers_of(server)
    server.process.kill()
    server.process.wait(10)
    killed = time.monotonic()
    while any(os.path.exists(f"/proc/{pid}") for pid in orphans):
        assert time.monotonic() - killed < 30, "orphaned workers did not exit"
        time.sleep(0.1)
    orphans_gone = round(time.monotonic() - killed, 1)
    took = restart(rig, port)
    time.sleep(2)  # the clients reconnect to the new server
    load.stop()
    recovered(rig, load)
    figures = report(
        "SIGKILL of the master, restart on the same port",
        load,
        round(time.monotonic() - killed, 1),
        orphaned_workers_exited_after_s=orphans_gone,
        restart_took_s=took,
    )
    stop(rig.server)
    assert_all_stored(figures)


def test_sigterm_under_load_then_a_restart(rig):
    server = rig.start()
    port = urlsplit(server.url).port
    load = Load(rig)
    time.sleep(3)
    stopping = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    stopped_in = round(time.monotonic() - stopping, 1)
    evaluations, _ = rig.stored()
    left_in_journal = len(load.answered - evaluations)
    restart(rig, port)
    time.sleep(1)
    load.stop()
    recovered(rig, load)
    figures = report(
        "SIGTERM under load, then a restart",
        load,
        round(time.monotonic() - stopping, 1),
        stop_took_s=stopped_in,
        exit_status=server.process.returncode,
        answered_but_not_yet_shipped_at_exit=left_in_journal,
    )
    stop(rig.server)
    assert server.process.returncode == 0
    assert_all_stored(figures)
