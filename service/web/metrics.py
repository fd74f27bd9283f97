"""Prometheus metrics: what the protocol layer observes, in the Prometheus text format.

Under gunicorn every worker is a process of its own, so the metrics use prometheus-client's
multiprocess mode: each process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(``service.web.gunicorn_conf`` creates one when it is not set, and empties it at start) and
``GET /metrics``, in whichever worker answers, adds up the files of all of them. Without that
variable (a single process: the Flask test client, the CLI) the values live in memory.

No label ever carries patient data: every label value comes from a fixed set (route
templates, the service ids, status codes, indicators, rule ids, prefetch keys, fetch
outcomes, refusal reasons); anything else is counted as ``other``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Sequence

from flask import Blueprint, Response, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from cds_hooks.auth import FAILURE_REASONS
from cds_hooks.errors import CDSHooksError
from cds_hooks.models import Card
from cds_hooks.observer import FETCH_OUTCOMES, Observer
from service.engine.rules import RULES

OTHER = "other"
INDICATORS = frozenset({"info", "warning", "critical"})
REGISTRY_FAILURES = frozenset({"journal", "evaluations", "feedback", "queue_full"})
SNOOZE_OUTCOMES = frozenset({"ok", "late", "failed", "resting"})
#: seconds; a hook answer takes milliseconds, a FHIR fetch up to KCDS_FHIR_TIMEOUT
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "kcds_http_requests",
    "HTTP requests answered, by route template, service id and status code",
    ["route", "service", "status"],
)
LATENCY = Histogram(
    "kcds_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and service id",
    ["route", "service"],
    buckets=BUCKETS,
)
CARDS = Counter(
    "kcds_cards",
    "Cards returned, by service, indicator and rule (a card carrying two rules counts "
    "once for each)",
    ["service", "indicator", "rule"],
)
FETCHES = Counter(
    "kcds_fhir_fetches",
    "Prefetch keys fetched from the FHIR server, by key and outcome "
    "(ok, empty, incomplete, failed, timeout)",
    ["key", "outcome"],
)
FETCH_LATENCY = Histogram(
    "kcds_fhir_fetch_duration_seconds",
    "Time to fetch one prefetch key (all its pages) from the FHIR server",
    ["key"],
    buckets=BUCKETS,
)
REGISTRY_WRITE_FAILURES = Counter(
    "kcds_registry_write_failures",
    "Recording writes that failed (journal: the local journal did not take an entry, which "
    "then went straight to the database; evaluations: a direct batch, retried again later; "
    "feedback: a POST answered 503; queue_full: the in-memory queue was full)",
    ["kind"],
)
SNOOZE_LOOKUPS = Counter(
    "kcds_snooze_lookups",
    "Snooze lookups in the registry, one per evaluation, by outcome (ok; late or failed: "
    "the cards went out without snooze; resting: not tried, a recent lookup failed)",
    ["outcome"],
)
UNRECORDED = Counter(
    "kcds_evaluations_unrecorded",
    "Evaluations answered that nothing could record (neither the journal nor the registry "
    "database): alert on any increase",
)
# Only the process shipping the journal sets these two (the others hold 0): the largest
# value among the live processes is the instance's
REGISTRY_UP = Gauge(
    "kcds_registry_up",
    "1 while the registry database takes the journal's rows, 0 while it does not (recording "
    "is delayed, the answers are not)",
    multiprocess_mode="livemax",
)
JOURNAL_BACKLOG = Gauge(
    "kcds_journal_backlog_rows",
    "Journal entries (evaluations and feedback items) not yet in the registry database",
    multiprocess_mode="livemax",
)
REPLAY_FALLBACKS = Counter(
    "kcds_replay_cache_fallbacks",
    "Calls whose JWT was checked against this process's memory because the shared replay "
    "cache did not answer (KCDS_REPLAY_OUTAGE=memory): replays to other processes pass",
)
AUTH_FAILURES = Counter(
    "kcds_auth_failures",
    "Callers refused (401), by reason",
    ["reason"],
)
INFO = Gauge(
    "kcds_build_info",
    "The service and policy versions running (always 1)",
    ["version", "policy_version"],
    multiprocess_mode="max",
)


def _one_of(value: str | None, allowed: Iterable[str]) -> str:
    return value if value is not None and value in allowed else OTHER


class Metrics(Observer):
    """The :class:`cds_hooks.observer.Observer` that counts into the metrics above.

    ``routes``, ``services`` and ``keys`` are the fixed sets a label may take (the app's
    route templates, the service ids, the prefetch keys)."""

    def __init__(self, routes: Iterable[str], services: Iterable[str], keys: Iterable[str]):
        self.routes = frozenset(routes) | {"unmatched"}
        self.services = frozenset(services)
        self.keys = frozenset(keys)

    def request_done(self, route: str, service_id: str | None, status: int, seconds: float):
        route = _one_of(route, self.routes)
        service = "" if service_id is None else _one_of(service_id, self.services)
        REQUESTS.labels(route, service, str(int(status))).inc()
        LATENCY.labels(route, service).observe(seconds)

    def cards_returned(self, service_id: str, cards: Sequence[Card]) -> None:
        service = _one_of(service_id, self.services)
        for card in cards:
            indicator = _one_of(card.indicator, INDICATORS)
            for rule in card.extension.get("ketamine-cds.rules") or (OTHER,):
                CARDS.labels(service, indicator, _one_of(rule, RULES)).inc()

    def fetch_done(self, key: str, outcome: str, seconds: float) -> None:
        key = _one_of(key, self.keys)
        FETCHES.labels(key, _one_of(outcome, FETCH_OUTCOMES)).inc()
        FETCH_LATENCY.labels(key).observe(seconds)

    def replay_fallback(self) -> None:
        """The replay cache's fallback hook (``cds_hooks.replay.OutageFallback.on_fallback``)."""
        REPLAY_FALLBACKS.inc()

    def auth_failed(self, reason: str) -> None:
        AUTH_FAILURES.labels(_one_of(reason, FAILURE_REASONS)).inc()

    # the registry's observer (service.registry.RegistryObserver)

    def registry_failed(self, kind: str) -> None:
        REGISTRY_WRITE_FAILURES.labels(_one_of(kind, REGISTRY_FAILURES)).inc()

    def snooze_lookup(self, outcome: str) -> None:
        """The snooze index's observer (:attr:`service.registry.snooze.SnoozeIndex.observe`)."""
        SNOOZE_LOOKUPS.labels(_one_of(outcome, SNOOZE_OUTCOMES)).inc()

    def evaluations_unrecorded(self, count: int) -> None:
        UNRECORDED.inc(count)

    def registry_state(self, up: bool, backlog: int) -> None:
        REGISTRY_UP.set(1 if up else 0)
        if backlog >= 0:
            JOURNAL_BACKLOG.set(backlog)

    @staticmethod
    def started(version: str, policy_version: str) -> None:
        INFO.labels(version, policy_version).set(1)


def exposition(accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of all the metrics: of every worker process in multiprocess
    mode, of this process otherwise. The Prometheus text format 0.0.4 unless the scraper's
    ``Accept`` asks for OpenMetrics."""
    encode, content_type = choose_encoder(accept)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return encode(registry), content_type
    return encode(REGISTRY), content_type


def metrics_blueprint(token: str | None) -> Blueprint:
    """``GET /metrics``, without the caller JWT (Prometheus does not have one): restrict it
    to the monitoring network, or set ``KCDS_METRICS_TOKEN`` to require that bearer token."""
    bp = Blueprint("kcds_metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        if token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                raise CDSHooksError(401, "unauthorized", "a bearer token is required")
            if not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise CDSHooksError(403, "forbidden", "wrong token")
        body, content_type = exposition(request.headers.get("Accept", ""))
        response = Response(body, mimetype=None)
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp
