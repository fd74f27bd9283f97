"""Loopback FHIR servers that misbehave, each in one way:

- ``healthy``: answers each read and search with the fixture's data at once;
- ``slow``: the same, after 2 s;
- ``trickle``: announces the whole body, then sends it a byte every 0.2 s;
- ``huge``: every search answers a 6 MB Bundle (all keys of one call: far above 20 MB);
- ``loop``: every search answers a Bundle whose ``next`` link is the same search again;
- ``garbage``: 200 with a body that is not JSON.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from tests.fhir_mock import TYPE_OF_KEY

BEHAVIOURS = ("healthy", "slow", "trickle", "huge", "loop", "garbage")
EMPTY = {"resourceType": "Bundle", "type": "searchset"}


def _huge_bundle() -> bytes:
    note = "x" * 1200
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "note": [{"text": note}],
            }
        }
        for i in range(4900)
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})


class FhirServer:
    """One server with one behaviour, serving ``prefetch`` (a request's prefetch data)."""

    def __init__(self, behaviour: str, prefetch: dict):
        assert behaviour in BEHAVIOURS
        self.behaviour = behaviour
        self.prefetch = prefetch
        self.requests = 0
        self.huge = _huge_bundle() if behaviour == "huge" else b""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                server.answer(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def data(self, path: str) -> bytes:
        kind = path.split("/fhir/", 1)[1].split("?")[0].split("/")[0]
        for key, rtype in TYPE_OF_KEY.items():
            if rtype == kind and key in self.prefetch:
                return orjson.dumps(self.prefetch[key])
        return orjson.dumps(EMPTY)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = self.data(handler.path)
        if self.behaviour == "slow":
            time.sleep(2.0)
        elif self.behaviour == "garbage":
            body = b"{{{ this is not FHIR"
        elif self.behaviour == "huge" and "?" in handler.path:
            body = self.huge
        elif self.behaviour == "loop" and "?" in handler.path:
            here = f"http://127.0.0.1:{self.httpd.server_port}{handler.path}"
            body = orjson.dumps({**orjson.loads(body), "link": [{"relation": "next", "url": here}]})
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if self.behaviour != "trickle":
                handler.wfile.write(body)
                return
            for i in range(len(body)):
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the service hung up: what a bounded client does
