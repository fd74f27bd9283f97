"""The Flask blueprint: discovery, service calls and feedback, with caller authentication,
CORS, input limits, an OpenAPI description and JSON errors throughout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from flask import Blueprint, Flask, Request, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.sansio.utils import get_current_url

from . import openapi
from .auth import AuthenticationError, Caller
from .errors import CDSHooksError, bad_request
from .observer import Observer
from .service import ServiceCatalog, handle
from .source import FhirSource
from .validation import InputLimits, check, check_limits

log = logging.getLogger("cds_hooks.http")

JSON_TYPES = ("application/json", "application/fhir+json")
#: WSGI environ key where the access log leaves the matched route (or "unmatched"), so a
#: server's own access log can name it instead of the raw path, which a caller chooses
ROUTE_KEY = "cds_hooks.route"

#: (service id, feedback items) → a JSON-able acknowledgement
FeedbackSink = Callable[[str, list[dict[str, Any]]], dict[str, Any]]
#: (request, audience URL) → the caller, or raise CDSHooksError(401); see cds_hooks.auth
Authenticator = Callable[[Request, str], Caller]

CORS_ALLOW_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE = "600"


@dataclass
class ProtocolSettings:
    public_url: str | None = None  # externally visible base URL (behind proxies)
    max_body_bytes: int = 5 * 1024 * 1024
    limits: InputLimits = field(default_factory=InputLimits)
    # browser origins allowed to call (CORS); ("*",) allows any, never with credentials
    cors_origins: tuple[str, ...] = ()
    title: str = "CDS Hooks services"  # for the OpenAPI description
    version: str = "0"
    observer: Observer = field(default_factory=Observer)  # metrics: see cds_hooks.observer


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _parse_json(raw: bytes) -> Any:
    if not raw:
        raise bad_request("the request body is empty; a JSON object is required", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", field="body") from None


@lru_cache(maxsize=64)
def _host_url(scheme: str, host: str) -> str:
    """The service's base URL as this request reached it (werkzeug's ``host_url`` without
    the trailing slash), worked out once per scheme and host, not in every request."""
    return get_current_url(scheme, host).rstrip("/")


def _require_json() -> None:
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES:
        raise CDSHooksError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {mimetype or 'missing'}",
        )


def _allowed_origin(settings: ProtocolSettings) -> str | None:
    """The Access-Control-Allow-Origin for this request's Origin; None when not allowed."""
    if not settings.cors_origins:
        return None
    origin = request.headers.get("Origin")
    if not origin:
        return None
    if settings.cors_origins == ("*",):
        return "*"
    return origin if origin in settings.cors_origins else None


def create_blueprint(
    catalog: ServiceCatalog,
    settings: ProtocolSettings,
    fhir_client: FhirSource | None,
    feedback_sink: FeedbackSink,
    authenticate: Authenticator | None = None,
) -> Blueprint:
    """The CDS Hooks routes. ``authenticate`` (when given) runs first on discovery, service
    and feedback calls, never on a CORS preflight nor on ``/openapi.json``."""
    bp = Blueprint("cds_hooks", __name__)
    description = openapi.document(
        catalog, settings.title, settings.version, authenticated=authenticate is not None
    )

    def base_url() -> str:
        if settings.public_url:
            return settings.public_url.rstrip("/")
        return _host_url(request.scheme, request.host)

    def authorise(path: str) -> None:
        if authenticate is not None:
            try:
                caller = authenticate(request, base_url() + path)
            except AuthenticationError as exc:
                settings.observer.auth_failed(exc.code)
                raise
            g.iss, g.tenant = caller.issuer, caller.tenant

    @bp.before_request
    def _preflight() -> Response | None:
        """Answer a CORS preflight here, before any view (so without authentication)."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if _allowed_origin(settings) is None:
            raise CDSHooksError(403, "origin_not_allowed", "this origin may not call the service")
        methods = sorted((request.url_rule.methods or set()) - {"HEAD"})  # type: ignore[union-attr]
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        return response

    @bp.after_request
    def _cors(response: Response) -> Response:
        """Let an allowed browser origin read the answer (refusals included)."""
        allowed = _allowed_origin(settings)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
        if settings.cors_origins and settings.cors_origins != ("*",):
            response.vary.add("Origin")
        return response

    @bp.get("/openapi.json")
    def describe() -> Response:
        return json_response(description)

    @bp.get("/cds-services")
    def discovery() -> Response:
        authorise("/cds-services")
        return json_response(catalog.discovery())

    @bp.post("/cds-services/<service_id>")
    def call(service_id: str) -> Response:
        authorise(f"/cds-services/{service_id}")
        service = catalog.get(service_id)
        g.service_id = service.id  # logged only once known: the path is the caller's
        _require_json()
        body = _parse_json(request.get_data(cache=False))
        if isinstance(body, dict) and isinstance(body.get("hookInstance"), str):
            g.hook_instance = body["hookInstance"][:64]
        hook_request, response = handle(service, body, fhir_client, base_url(), settings.limits)
        g.log_fields = hook_request.log_fields
        settings.observer.cards_returned(service.id, response.cards)
        answer = json_response(response.to_json())
        # what the call built (the parsed body, its resources, the cards) is freed once the
        # answer is sent, not before: M 0.9 ms and L 2.2 ms of the caller's wait (issue 15)
        built = [body, hook_request, response]
        answer.call_on_close(built.clear)
        return answer

    @bp.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        authorise(f"/cds-services/{service_id}/feedback")
        g.service_id = catalog.get(service_id).id
        _require_json()
        body = _parse_json(request.get_data(cache=False))
        check_limits(body, settings.limits)
        check("feedback.json", body)
        return json_response(feedback_sink(service_id, body["feedback"]))

    return bp


def install(app: Flask, blueprint: Blueprint, settings: ProtocolSettings) -> None:
    """Register the blueprint, the body limit, JSON error handlers and the access log."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.register_blueprint(blueprint)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.errorhandler(CDSHooksError)
    def _cds_error(exc: CDSHooksError) -> Response:
        g.error = exc.error
        response = json_response(exc.to_json(), exc.status)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        messages = {
            404: "no such endpoint",
            405: f"method {request.method} is not allowed here",
            413: f"request body larger than {settings.max_body_bytes} bytes",
        }
        name = (exc.name or "error").lower().replace(" ", "_")
        g.error = name
        response = json_response({"error": name, "message": messages.get(code, exc.name)}, code)
        if code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"error_type": type(exc).__name__})
        g.error = "internal_error"
        return json_response(
            {"error": "internal_error", "message": "the service failed to evaluate this request"},
            500,
        )

    @app.after_request
    def _access_log(response: Response) -> Response:
        seen = vars(g._get_current_object())  # what this request's handlers left in g
        started = seen.get("started")
        seconds = time.perf_counter() - started if started else None
        rule = request.url_rule
        route = rule.rule if rule else "unmatched"
        request.environ[ROUTE_KEY] = route  # for a server's own access log: no raw path
        status = response.status_code
        if seconds is not None:
            settings.observer.request_done(route, seen.get("service_id"), status, seconds)
        if not log.isEnabledFor(logging.INFO):
            return response
        fields = {
            "method": request.method,
            "path": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2) if seconds is not None else None,
        }
        for name in ("service_id", "hook_instance", "iss", "tenant", "error"):
            if seen.get(name):
                fields[name] = seen[name]
        fields.update(seen.get("log_fields") or {})
        # Logger.info would first look up its caller's file and line (walking the stack):
        # nothing here logs them, so the record is made directly
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None)
        record.fields = fields
        log.handle(record)
        return response
