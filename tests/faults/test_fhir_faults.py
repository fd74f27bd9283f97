"""FHIR servers that misbehave, under real gunicorn with JWTs on: each call is answered
within the fetch budget (cards, or a 412 naming what could not be fetched), memory stays
bounded, and a trickling server beside a healthy one does not touch the healthy one's
calls. Also the budget itself, on the client alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
import requests

from cds_hooks.fhir import FetchSettings, FhirClient
from tests.conftest import stop
from tests.faults.fhir_servers import FhirServer
from tests.faults.harness import REQUEST, SIGN, Rig, workers_of

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FETCHING = {"KCDS_FHIR_ALLOWED": "http://127.0.0.1", "KCDS_FHIR_TIMEOUT": "3"}


def without_prefetch(fhir: FhirServer) -> dict:
    body = {k: v for k, v in REQUEST.items() if k != "prefetch"}
    return body | {"fhirServer": fhir.url}


def call(rig: Rig, body: dict, session: requests.Session) -> tuple[int, list[str], float]:
    """(status, the rules on the cards, seconds) of one signed call with a new hookInstance."""
    started = time.monotonic()
    r = session.post(
        rig.server.url + SIGN,
        data=orjson.dumps({**body, "hookInstance": f"fhir-{time.monotonic_ns()}"}),
        headers={"Content-Type": "application/json", **rig.token(SIGN)},
        timeout=30,
    )
    rules = sorted(
        {
            rule
            for c in r.json().get("cards", [])
            for rule in c["extension"].get("ketamine-cds.rules", [])
        }
    )
    return r.status_code, rules, round(time.monotonic() - started, 2)


def rss_mb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total // 1024


def test_each_misbehaving_server_is_answered_within_the_budget(rig):
    server = rig.start(**FETCHING)
    session = requests.Session()
    healthy = FhirServer("healthy", REQUEST["prefetch"])
    status, expected, _ = call(rig, without_prefetch(healthy), session)
    assert status == 200 and expected
    rss_before = rss_mb(workers_of(server))
    outcomes = {}
    for behaviour in ("slow", "trickle", "huge", "loop", "garbage"):
        fhir = FhirServer(behaviour, REQUEST["prefetch"])
        outcomes[behaviour] = [call(rig, without_prefetch(fhir), session) for _ in range(3)]
        fhir.close()
    rss_after = rss_mb(workers_of(server))
    healthy.close()
    stop(server)
    figures = {
        b: [(status, len(rules), seconds) for status, rules, seconds in calls]
        for b, calls in outcomes.items()
    }
    print(f"\nmisbehaving FHIR servers (status, cards' rules, seconds): {figures}")
    print(f"worker RSS before {rss_before} MB, after {rss_after} MB")
    assert [s for s, _, _ in outcomes["slow"]] == [200] * 3  # 2 s: inside the 3 s budget
    for behaviour, calls in outcomes.items():
        for status, _, seconds in calls:
            assert status in (200, 412), (behaviour, status)
            assert seconds < 10, (behaviour, seconds)  # a bound, not a benchmark: 3 s budget
    assert rss_after - rss_before < 200, (rss_before, rss_after)


def test_a_trickling_server_does_not_touch_a_healthy_one(rig):
    server = rig.start(**FETCHING)
    healthy = FhirServer("healthy", REQUEST["prefetch"])
    trickle = FhirServer("trickle", REQUEST["prefetch"])
    expected = call(rig, without_prefetch(healthy), requests.Session())[1]
    stop_at = time.monotonic() + 10
    results: dict[str, list[tuple[int, list[str], float]]] = {"healthy": [], "trickle": []}

    def client(fhir: FhirServer, into: list) -> None:
        session = requests.Session()
        body = without_prefetch(fhir)
        while time.monotonic() < stop_at:
            into.append(call(rig, body, session))

    threads = [
        threading.Thread(target=client, args=(fhir, results[name]))
        for name, fhir in (("healthy", healthy), ("trickle", trickle))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    healthy.close()
    trickle.close()
    stop(server)
    figures = {
        name: {
            "calls": len(calls),
            "statuses": sorted({s for s, _, _ in calls}),
            "slowest_s": max(t for _, _, t in calls),
        }
        for name, calls in results.items()
    }
    print(f"\ntrickling beside healthy: {figures}")
    assert results["trickle"] and all(s in (200, 412) for s, _, _ in results["trickle"])
    assert results["healthy"]
    assert all((s, rules) == (200, expected) for s, rules, _ in results["healthy"]), figures


def test_the_fetch_budget_holds_for_the_whole_request_on_the_client_alone():
    """One deadline for all keys, enforced on a trickled body; one byte budget for all keys."""
    trickle = FhirServer("trickle", REQUEST["prefetch"])
    huge = FhirServer("huge", REQUEST["prefetch"])
    client = FhirClient(
        FetchSettings(timeout=1.0, allowed_servers=("http://127.0.0.1",), max_request_bytes=10**7)
    )
    wanted = {"conditions": "Condition?patient=p", "observations": "Observation?patient=p"}
    started = time.monotonic()
    out = client.complete(trickle.url, None, wanted, {})
    took = time.monotonic() - started
    assert {r.status for r in out.values()} == {"unavailable"}
    assert {r.reason for r in out.values()} == {"time budget exceeded"}
    assert took < 2.5, took  # the deadline, not a read timeout per byte
    out = client.complete(huge.url, None, wanted, {})
    reasons = {r.reason for r in out.values()}
    assert any("larger than the configured limit" in (r or "") for r in reasons), reasons
    client.close()
    trickle.close()
    huge.close()
