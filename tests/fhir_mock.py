"""Serve a request's prefetch data as a FHIR server would (for no-prefetch tests)."""

from __future__ import annotations

import orjson
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from service.engine.prefetch import PREFETCH

TYPE_OF_KEY = {key: kind for key, (kind, _) in PREFETCH.items()}


def serve_prefetch(server: HTTPServer, prefetch: dict, token: str | None, seen: list) -> str:
    """Answer each resource type's read/search with that key's data; returns the base URL.
    Every request's path and Authorization header are appended to ``seen``."""

    def handler(request: Request) -> Response:
        seen.append((request.path, request.headers.get("Authorization")))
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            return Response('{"resourceType": "OperationOutcome"}', status=401)
        kind = request.path.split("/fhir/", 1)[1].split("/")[0]
        for key, rtype in TYPE_OF_KEY.items():
            if rtype == kind and key in prefetch:
                return Response(orjson.dumps(prefetch[key]), content_type="application/fhir+json")
        return Response(
            '{"resourceType": "Bundle", "type": "searchset"}', content_type="application/fhir+json"
        )

    for rtype in TYPE_OF_KEY.values():
        server.expect_request(f"/fhir/{rtype}").respond_with_handler(handler)
        server.expect_request(f"/fhir/{rtype}/", method="GET").respond_with_handler(handler)
    from re import compile as rx

    server.expect_request(rx(r"^/fhir/Patient/.+$")).respond_with_handler(handler)
    return server.url_for("/fhir")
