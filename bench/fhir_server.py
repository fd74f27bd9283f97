"""A small FHIR server on loopback that answers after a fixed delay (default 50 ms).

It serves one patient's data, as the service's prefetch searches ask for it:
``GET /fhir/Patient/<id>`` and ``GET /fhir/<Type>?patient=<id>[&code=http://loinc.org|a,b]``
(searchset Bundles; the Observation ``code`` filter is honoured). One thread per request,
HTTP/1.1 keep-alive, so parallel fetches overlap exactly as they would against a real server.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from service.engine.prefetch import PREFETCH
from service.tools import convert

TYPE_OF_KEY = {key: kind for key, (kind, _) in PREFETCH.items()}


class SlowFhirServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, prefetch: dict[str, Any], delay: float = 0.05, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.delay = delay
        self.patient = prefetch.get("patient")
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        for key, value in prefetch.items():
            if key != "patient" and isinstance(value, dict):
                self.by_type[TYPE_OF_KEY[key]] = [e["resource"] for e in value.get("entry") or ()]
        self.requests = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"

    def __enter__(self) -> SlowFhirServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["fhir"] or len(parts) < 2:
            return 404, {"resourceType": "OperationOutcome"}
        kind = parts[1]
        if kind == "Patient" and len(parts) == 3:
            if self.patient and self.patient.get("id") == parts[2]:
                return 200, self.patient
            return 404, {"resourceType": "OperationOutcome"}
        resources = self.by_type.get(kind, [])
        codes = query.get("code")
        if kind == "Observation" and codes:
            wanted = {c.split("|")[-1] for c in codes[0].split(",")}
            resources = [r for r in resources if _loinc_codes(r) & wanted]
        return 200, convert.searchset(resources)


def _loinc_codes(resource: dict[str, Any]) -> set[str]:
    code = resource.get("code") or {}
    return {
        c.get("code")
        for c in code.get("coding") or ()
        if isinstance(c, dict) and c.get("system") == "http://loinc.org"
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else the body waits for the ACK of the headers (~40 ms)
    server: SlowFhirServer

    def do_GET(self) -> None:
        with self.server._lock:
            self.server.requests += 1
        time.sleep(self.server.delay)
        url = urlsplit(self.path)
        status, body = self.server.answer(url.path, parse_qs(url.query))
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
