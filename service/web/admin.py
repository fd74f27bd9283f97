"""``GET /registry/summary``: the governance summary over HTTP, behind an admin bearer token.

The route exists only when ``KCDS_ADMIN_TOKEN`` is set; without a token it answers 404 like
any unknown path, so there is never an unprotected or half-configured registry endpoint. A
missing or malformed ``Authorization`` header is 401, a wrong token 403. The token is
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from cds_hooks.errors import CDSHooksError, bad_request
from cds_hooks.http import json_response
from service.registry.governance import parse_since, summary
from service.registry.store import TRANSIENT, Store


def admin_blueprint(store: Store, token: str) -> Blueprint:
    bp = Blueprint("registry_admin", __name__)
    expected = token.encode()

    @bp.get("/registry/summary")
    def registry_summary() -> Response:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = json_response(
                {"error": "unauthorized", "message": "an admin bearer token is required"}, 401
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="ketamine-cds registry"'
            return response
        if not hmac.compare_digest(given.strip().encode(), expected):
            return json_response(
                {"error": "forbidden", "message": "this token does not open the registry"}, 403
            )
        since = request.args.get("since")
        try:
            start = parse_since(since) if since else None
        except ValueError:
            raise bad_request(
                "since must be a date (YYYY-MM-DD) or an ISO 8601 time", "since"
            ) from None
        try:
            body = summary(store, start)
        except TRANSIENT:
            raise CDSHooksError(
                503, "registry_unavailable", "the registry database did not answer"
            ) from None
        response = json_response(body)
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp
