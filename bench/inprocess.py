"""In-process figures: request bytes → response bytes through the real code path.

The timed path is exactly what the Flask view does between reading the body and writing the
response: ``orjson.loads`` of the raw bytes, ``cds_hooks.service.handle`` (validation,
prefetch resolution, record, rules, cards) and ``orjson.dumps`` of the response. Each run is
paired with an ``orjson.loads`` of the same bytes, in alternating order, so the ratio compares
figures taken side by side under the same machine conditions.

The time per stage calls the stage functions directly, in the order ``handle`` and
``KetamineCDS.order_hook`` call them; no timing code lives in the service. When the staged
path and ``handle`` disagree on the cards, the result says so (the mirror below needs an
update after a change to the pipeline).
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import os
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import orjson
from machine import Meter, calibrate

from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.models import Response
from cds_hooks.service import HookRequest, ServiceCatalog, handle, resolve_prefetch
from cds_hooks.validation import InputLimits, check_request
from service.config import Settings
from service.engine.cards import RenderContext, render
from service.engine.hooks import KetamineCDS
from service.engine.orders import ketamine_orders
from service.engine.rules import Evaluation, evaluate
from service.engine.snooze import look_up
from service.web import gc_settings
from service.web.app import build_engine

BASE_URL = "http://127.0.0.1:8080"
#: the in-process runs accept up to this many resources per prefetch key (production: 5,000 by
#: KCDS_MAX_PREFETCH_RESOURCES) so that the 10,000-observation point of the series is evaluated
#: instead of refused; the limit changes what is refused, not what an accepted request costs
BENCH_MAX_RESOURCES = 20_000
STAGES = (
    "parse",
    "validate",
    "prefetch",
    "orders",
    "record",
    "rules",
    "snooze",
    "cards",
    "serialise",
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Bench:
    """The engine, services, input limits and FHIR client, configured as ``create_app`` does
    (from the ``KCDS_*`` environment, with ``KCDS_AUTH=off``)."""

    def __init__(self) -> None:
        settings = Settings.from_env({**os.environ, "KCDS_AUTH": "off"})
        self.settings = dataclasses.replace(
            settings,
            max_prefetch_resources=max(settings.max_prefetch_resources, BENCH_MAX_RESOURCES),
        )
        self.engine: KetamineCDS = build_engine(self.settings)
        self.catalog = ServiceCatalog(self.engine.services())
        self.limits = InputLimits(max_entries=self.settings.max_prefetch_resources)
        gc_settings.settle()  # the garbage collector as the gunicorn workers have it
        gc_settings.freeze()
        # handle() grew a ``limits`` parameter; stay runnable if its signature moves again
        self._with_limits = "limits" in inspect.signature(handle).parameters

    def fhir_client(self, timeout: float | None = None) -> FhirClient:
        s = self.settings
        return FhirClient(
            FetchSettings(
                timeout=timeout or s.fhir_timeout,
                max_pages=s.fhir_max_pages,
                max_bytes=s.fhir_max_bytes,
                allowed_servers=s.fhir_servers(),
                limits=self.limits,
            )
        )

    def handle(self, service_id: str, body: Any, client: FhirClient | None = None):
        service = self.catalog.get(service_id)
        if self._with_limits:
            return handle(service, body, client, BASE_URL, self.limits)
        return handle(service, body, client, BASE_URL)

    def call(self, service_id: str, raw: bytes) -> bytes:
        """One request, bytes in → bytes out, through the real code path."""
        _, response = self.handle(service_id, orjson.loads(raw))
        return orjson.dumps(response.to_json())

    # -- stages ------------------------------------------------------------------------

    def stages(self, service_id: str, raw: bytes) -> tuple[dict[str, float], bytes]:
        """Seconds per stage for one request, and the response bytes."""
        service = self.catalog.get(service_id)
        engine = self.engine
        times: dict[str, float] = {}
        clock = time.perf_counter

        t = clock()
        body = orjson.loads(raw)
        times["parse"] = clock() - t

        t = clock()
        check_request(body, service.hook, self.limits)
        times["validate"] = clock() - t

        t = clock()
        relevant = service.relevant is None or service.relevant(body["context"])
        prefetch = resolve_prefetch(service, body, None) if relevant else {}
        req = HookRequest(
            service_id=service.id,
            hook=body["hook"],
            hook_instance=body["hookInstance"],
            context=body["context"],
            prefetch=prefetch,
            fhir_server=body.get("fhirServer"),
            base_url=BASE_URL,
        )
        times["prefetch"] = clock() - t

        t = clock()
        only = set(req.context["selections"]) if req.hook == "order-select" else None
        orders = ketamine_orders(engine.terminology, req.context["draftOrders"], only)
        times["orders"] = clock() - t

        t = clock()
        record = engine.patient_record(req) if orders else None
        times["record"] = clock() - t

        t = clock()
        now = engine.clock()
        findings = []
        for order in orders:
            ev = Evaluation(record, order, engine.policy, engine.terminology, now, req.hook)
            findings.extend(evaluate(ev))
        times["rules"] = clock() - t

        t = clock()
        patient_id = req.context["patientId"]
        drugs = {o.ref: o.drug for o in orders}
        warned = any(f.severity == "warning" for f in findings)
        snoozed = look_up(engine.snoozes, patient_id, set(drugs.values()), now) if warned else {}
        times["snooze"] = clock() - t

        t = clock()
        ctx = RenderContext(
            patient_id,
            req.base_url,
            engine.policy.version,
            drugs=drugs,
            snoozed=snoozed,
            snooze_offered=engine.snoozes is not None,
            course_view_url=engine.course_view_url,
        )
        cards = render(findings, {o.ref: o.resource for o in orders}, ctx)
        times["cards"] = clock() - t

        t = clock()
        out = orjson.dumps(Response(tuple(cards)).to_json())
        times["serialise"] = clock() - t
        return times, out


def _rules_of(response: bytes) -> list[list[str]]:
    cards = orjson.loads(response).get("cards", [])
    return sorted(sorted((c.get("extension") or {}).get("ketamine-cds.rules", [])) for c in cards)


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(
    bench: Bench, workload: Any, budget: float, min_runs: int = 15, max_runs: int = 5000
) -> dict[str, Any]:
    """Median/p99 of the full path and of orjson.loads, and the median time per stage."""
    raw = workload.raw
    out: dict[str, Any] = {
        "workload": workload.name,
        "description": workload.description,
        "request_bytes": len(raw),
        "source_bytes": workload.source_bytes,
        "resources": workload.resources,
    }
    try:
        response = bench.call(workload.service_id, raw)
        _, staged = bench.stages(workload.service_id, raw)
    except Exception as exc:  # the rule catalogue is in flux: report, don't crash the run
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=6)
        return out
    out["response_bytes"] = len(response)
    out["cards"] = len(orjson.loads(response).get("cards", []))
    out["stage_mirror_ok"] = _rules_of(staged) == _rules_of(response)

    for _ in range(3):  # warm caches (terminology, compiled schemas, models)
        bench.call(workload.service_id, raw)
        orjson.loads(raw)

    full: list[float] = []
    loads: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    gc.collect()
    speed = calibrate()
    meter = Meter().start()
    deadline = time.perf_counter() + budget
    i = 0
    while len(full) < max_runs and (len(full) < min_runs or time.perf_counter() < deadline):
        call = lambda: bench.call(workload.service_id, raw)  # noqa: E731
        parse = lambda: orjson.loads(raw)  # noqa: E731
        if i % 2:
            full.append(_timed(call))
            loads.append(_timed(parse))
        else:
            loads.append(_timed(parse))
            full.append(_timed(call))
        if i % 4 == 0:  # staged runs interleaved, fewer of them
            times, _ = bench.stages(workload.service_id, raw)
            for name, value in times.items():
                stages[name].append(value)
        i += 1

    machine = meter.stop()
    ms = 1000.0
    out.update(
        other_cores=machine["other_cores"],
        speed_index_ms=speed,
        runs=len(full),
        median_ms=statistics.median(full) * ms,
        p99_ms=percentile(full, 99) * ms,
        min_ms=min(full) * ms,
        loads_median_ms=statistics.median(loads) * ms,
        loads_p99_ms=percentile(loads, 99) * ms,
        ratio=statistics.median(full) / statistics.median(loads),
        stages_ms={name: statistics.median(v) * ms for name, v in stages.items() if v},
        stage_runs=len(stages["parse"]),
    )
    out["stages_sum_ms"] = sum(out["stages_ms"].values())
    return out
