"""The registry's database down, slow, and slow while workers recycle: every hook call is
answered with cards (JWTs on, the replay cache on the same database), readiness stays 200,
and once the fault clears every evaluation answered and every feedback item acknowledged is
in the registry."""

from __future__ import annotations

import pytest

from tests.conftest import stop
from tests.faults.harness import Load, ReadinessWatch, metric, report, under_fault

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: seconds the database is down (the outage the issue measured)
OUTAGE = 20.0


def assert_nothing_lost(load: Load, watch: ReadinessWatch, figures: dict) -> None:
    assert load.answered, "no call was answered"
    assert not load.refused and not load.no_cards, figures
    assert figures["evaluations_lost"] == 0 and figures["feedback_lost"] == 0, figures
    assert not load.feedback_refused, figures
    assert set(watch.statuses) == {"200"}, watch.statuses


def test_database_down_for_20_s(rig, proxy):
    server = rig.start()
    during: dict[str, float] = {}

    def end() -> None:
        during["fallbacks"] = metric(server, "kcds_replay_cache_fallbacks_total")
        proxy.set("pass")

    load, watch, recovery = under_fault(rig, lambda: proxy.set("refuse"), end, OUTAGE)
    figures = report(
        "database down 20 s",
        load,
        recovery,
        replay_checks_by_the_fallback=during["fallbacks"],
        readiness=watch.statuses,
        degradations_seen=sorted(watch.seen),
        largest_journal_backlog=watch.backlog,
    )
    stop(server)
    assert_nothing_lost(load, watch, figures)
    assert "registry:registry=down" in watch.seen  # reported, not a 503
    assert during["fallbacks"] > 0


def test_database_slow(rig, proxy):
    """500 ms per packet, both ways, for 10 s."""
    server = rig.start()
    load, watch, recovery = under_fault(
        rig, lambda: proxy.set("delay", 0.5), lambda: proxy.set("pass"), 10
    )
    figures = report("database slow (500 ms per packet)", load, recovery, readiness=watch.statuses)
    stop(server)
    assert_nothing_lost(load, watch, figures)


def test_worker_recycling_under_a_slow_database(rig, proxy):
    """Workers recycled every ~60 requests while each packet to the database waits 300 ms:
    a stopping worker does not wait on the database, and loses nothing."""
    server = rig.start(KCDS_MAX_REQUESTS="60", KCDS_MAX_REQUESTS_JITTER="30")
    load, watch, recovery = under_fault(
        rig, lambda: proxy.set("delay", 0.3), lambda: proxy.set("pass"), 12
    )
    booted = server.logs().count("Booting worker")
    figures = report(
        "worker recycling under a slow database (300 ms per packet)",
        load,
        recovery,
        workers_booted=booted,
        readiness=watch.statuses,
    )
    stop(server)
    assert booted > 3, "no worker was recycled"
    assert_nothing_lost(load, watch, figures)
