"""FHIR-fetch figures: no prefetch, the data read from a FHIR server that takes 50 ms a call.

The request is the workload without ``prefetch`` and with ``fhirServer`` pointing at
:class:`fhir_server.SlowFhirServer`; the service must fetch its eight keys. Measured in
process with the service's own :class:`cds_hooks.fhir.FhirClient` (a pooled session, as in
production): the fetch phase (``resolve_prefetch``), the whole ``handle`` call, and one round
trip for one key for comparison. Fetched in parallel, the eight keys should cost about one
round trip; fetched one after another, eight.
"""

from __future__ import annotations

import statistics
import time
import traceback
from typing import Any

import orjson
from fhir_server import SlowFhirServer
from inprocess import Bench, percentile
from machine import Meter

from cds_hooks.service import resolve_prefetch

#: what the EHR sends for the service to fetch with (the loopback server ignores the token)
AUTHORIZATION = {
    "access_token": "bench-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "ketamine-cds",
}


def to_fetch(body: dict[str, Any], fhir_base: str) -> dict[str, Any]:
    """``body`` without its prefetch, with ``fhirServer`` to fetch it from instead."""
    out = {k: v for k, v in body.items() if k != "prefetch"}
    return {**out, "fhirServer": fhir_base, "fhirAuthorization": dict(AUTHORIZATION)}


def measure(bench: Bench, workload: Any, runs: int, delay: float = 0.05) -> dict[str, Any]:
    prefetch = orjson.loads(workload.raw)["prefetch"]
    out: dict[str, Any] = {"workload": workload.name, "delay_ms": delay * 1000, "runs": runs}
    client = bench.fhir_client()
    service = bench.catalog.get(workload.service_id)
    try:
        with SlowFhirServer(prefetch, delay) as server:
            body = to_fetch(orjson.loads(workload.raw), server.base_url)
            raw = orjson.dumps(body)
            patient_url = f"{server.base_url}/Patient/{body['context']['patientId']}"
            bench.handle(service.id, orjson.loads(raw), client)  # open the pooled connections
            single, fetch, total, keys = [], [], [], 0
            meter = Meter().start()
            for _ in range(runs):
                t = time.perf_counter()
                with client.session.get(patient_url, timeout=3) as response:
                    response.content  # noqa: B018
                single.append(time.perf_counter() - t)

                parsed = orjson.loads(raw)
                t = time.perf_counter()
                results = resolve_prefetch(service, parsed, client)
                fetch.append(time.perf_counter() - t)
                keys = len(results)
                missing = [k for k, r in results.items() if not r.available]
                if missing:
                    raise RuntimeError(f"keys not fetched: {missing}")

                t = time.perf_counter()
                _, response_model = bench.handle(service.id, orjson.loads(raw), client)
                orjson.dumps(response_model.to_json())
                total.append(time.perf_counter() - t)
            out["server_requests"] = server.requests
            out["other_cores"] = meter.stop()["other_cores"]
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=6)
        return out
    finally:
        client.close()
    ms = 1000.0
    out.update(
        keys=keys,
        round_trip_ms=statistics.median(single) * ms,
        fetch_median_ms=statistics.median(fetch) * ms,
        fetch_p99_ms=percentile(fetch, 99) * ms,
        total_median_ms=statistics.median(total) * ms,
        fetch_over_delay=statistics.median(fetch) / delay,
        sequential_estimate_ms=keys * statistics.median(single) * ms,
    )
    return out
