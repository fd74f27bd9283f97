"""Sync or threaded workers? Prefetched calls under wrk, alone and beside calls that fetch.

    .venv/bin/python bench/workers.py                  # gthread, sync, more sync workers
    .venv/bin/python bench/workers.py --seconds 10 --fetchers 2

For each worker model (2 gthread workers × 4 threads, the default, or × 2; 2 sync workers;
4 sync workers), gunicorn runs the production settings and wrk drives the prefetched S request at
8 connections: once alone, and once while ``--fetchers`` clients keep sending the same call
without prefetch, so that the service fetches its eight keys from ``bench/fhir_server.py``
(50 ms per response). A sync worker is blocked for the whole fetch; a gthread worker answers
other calls meanwhile. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import loadtest  # noqa: E402
import orjson  # noqa: E402
import workloads  # noqa: E402
from fetch import to_fetch  # noqa: E402
from fhir_server import SlowFhirServer  # noqa: E402

#: label → (KCDS_WORKERS, KCDS_THREADS): the default, fewer threads, the sync worker, and
#: sync workers beyond the cores (a worker held by a fetch leaves others to answer)
MODELS = {
    "2 gthread workers × 4 threads": ("2", "4"),
    "2 gthread workers × 2 threads": ("2", "2"),
    "2 sync workers": ("2", "1"),
    "4 sync workers": ("4", "1"),
}


def fetching(url: str, path: str, body: bytes, stop: threading.Event, seen: list[float]):
    """One client sending calls that make the service fetch, one after another."""
    while not stop.is_set():
        status, _, seconds = loadtest.request(url, "POST", path, body)
        if status == 200:
            seen.append(seconds * 1000)


def measure(
    model: str, workers: str, threads: str, w: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, SlowFhirServer(w.body["prefetch"], 0.05) as fhir:
        log_dir = Path(tmp)
        body_file = log_dir / "request.json"
        body_file.write_bytes(w.raw)
        fetch_body = orjson.dumps(to_fetch(w.body, fhir.base_url))
        path = f"/cds-services/{w.service_id}"
        env = {"KCDS_THREADS": threads, "KCDS_WORKERS": workers}
        server, _ = loadtest.start(log_dir, env)
        try:
            status, answer, _ = loadtest.request(server.url, "POST", path, fetch_body)
            if status != 200:
                raise SystemExit(f"fetching call: HTTP {status} {answer[:300]!r}")
            patient = w.body["context"]["patientId"]  # a new patient in every request
            loadtest.wrk(server.url + path, body_file, 8, 2, patient=patient)  # warm up
            for fetchers in (0, args.fetchers):
                stop, seen = threading.Event(), []
                clients = [
                    threading.Thread(
                        target=fetching, args=(server.url, path, fetch_body, stop, seen)
                    )
                    for _ in range(fetchers)
                ]
                for c in clients:
                    c.start()
                time.sleep(0.2 if fetchers else 0)
                result = loadtest.measured_wrk(
                    server, server.url + path, body_file, 8, args.seconds, patient
                )
                stop.set()
                for c in clients:
                    c.join()
                result.update(
                    model=model,
                    fetchers=fetchers,
                    fetch_calls=len(seen),
                    fetch_p50_ms=statistics.median(seen) if seen else None,
                )
                rows.append(result)
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fetchers", type=int, default=2, help="clients whose calls fetch")
    parser.add_argument("--workload", default="S", choices=("S", "M"))
    args = parser.parse_args(argv)
    (w,) = workloads.build(names={args.workload})
    rows = [r for model, (n, t) in MODELS.items() for r in measure(model, n, t, w, args)]
    print(
        f"{args.workload} prefetched, wrk 8 connections, {args.seconds:g} s; "
        "beside it, clients whose calls fetch 8 keys (50 ms per FHIR response)\n"
    )
    print(
        "| worker model | fetching clients | req/s | p50 ms | p99 ms | service CPU ms per S req "
        "(fetching calls included) | fetching calls answered | their p50 ms | others' CPU |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        cpu = r["server_cores"] * 1000 / r["rps"] if r["rps"] else float("nan")
        fetch_p50 = f"{r['fetch_p50_ms']:.1f}" if r["fetch_p50_ms"] else "–"
        print(
            f"| {r['model']} | {r['fetchers']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {cpu:.2f} | {r['fetch_calls']} | {fetch_p50} "
            f"| {r['other_cores']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
