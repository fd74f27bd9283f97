"""The card preview page: ``GET /preview`` (and ``/``), for integration engineers.

Pick a fixture, paste a hook request, or paste/upload a patient Bundle (or NDJSON export)
and choose the drug and dose; the page sends it through the service and shows the cards as
a clinician would see them, the raw JSON beside them, and the time the evaluation took.

The evaluation is the service's own: :func:`cds_hooks.service.handle` with the app's service
catalogue (through :func:`service.tools.toolkit.evaluate`), run server-side by this blueprint's
route, so the page needs no caller JWT. Nothing is fetched from a ``fhirServer`` (keys that
are not prefetched come back as "could not be checked" cards), except that a fixture without
prefetch is answered from the fixture it names, as in the tests.

Card markdown is rendered server-side with markdown-it-py (raw HTML off) and then sanitised
with nh3 (an allow-list of tags, http/https/mailto links only), and every page carries a
Content-Security-Policy that allows only this package's own script and style: a card can
never inject script. Every asset ships in the package (``static/``, ``templates/``).

``KCDS_PREVIEW`` switches the page: ``on``, ``off``, or unset (on only when
``KCDS_AUTH=off``, the development run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nh3
import orjson
from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from markdown_it import MarkdownIt
from markupsafe import Markup

from cds_hooks.service import ServiceCatalog
from cds_hooks.validation import InputLimits
from service.config import Settings
from service.tools import toolkit
from service.tools.convert import ConversionError, resources_from
from service.tools.fixtures import dated, fixtures_dir, load, names

log = logging.getLogger("service.web.preview")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: what card markdown may become; anything else is dropped (its text kept)
ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
INDICATOR_LABELS = {"critical": "Critical", "warning": "Warning", "info": "Info"}
ACTION_VERBS = {"create": "Would create", "update": "Would update", "delete": "Would delete"}

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def preview_enabled(settings: Settings) -> bool:
    """KCDS_PREVIEW: ``on``/``off``; unset, on only when caller authentication is off."""
    return settings.auth == "off" if settings.preview is None else settings.preview


def render_markdown(text: str) -> Markup:
    """Card markdown as HTML that is safe to embed: rendered with raw HTML disabled, then
    sanitised against an allow-list."""
    html = _markdown.render(text or "")
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return Markup(clean)  # sanitised just above


def safe_url(url: Any) -> str | None:
    """``url`` when it is an absolute http(s) URL, else None (never a javascript: link)."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url.strip())
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# -- the form ------------------------------------------------------------------------------


@dataclass
class Form:
    """What the engineer asked for (the page shows it back as it was sent)."""

    source: str = "fixture"  # fixture | request | bundle
    fixture: str = "r09-bp-185-fires"
    request_text: str = ""
    bundle_text: str = ""
    patient_id: str = ""
    drug: str = "ketamine"
    dose: str = "35"
    route: str = "iv"
    minutes: str = "40"
    hook: str = "order-sign"
    service_id: str = ""
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_request(cls) -> Form:
        f = request.form
        form = cls()
        for name in (
            "source", "fixture", "request_text", "bundle_text", "patient_id", "drug", "dose",
            "route", "minutes", "hook", "service_id",
        ):  # fmt: skip
            if name in f:
                setattr(form, name, f.get(name, "").strip() if name != "request_text" else f[name])
        return form


def _number(text: str, label: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise toolkit.ToolError(f"{label} must be a number, not {text!r}") from None
    if value < 0:
        raise toolkit.ToolError(f"{label} must not be negative")
    return value


# -- the cards as a clinician sees them -------------------------------------------------------


def view_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """A card prepared for the template: markdown rendered and sanitised, URLs checked,
    each suggestion's actions with the exact resource they carry."""
    source = card.get("source") or {}
    suggestions = []
    for s in card.get("suggestions") or ():
        actions = []
        for a in s.get("actions") or ():
            resource = a.get("resource")
            target = a.get("resourceId")
            if not target and isinstance(resource, Mapping):
                rid = resource.get("id")
                target = f"{resource.get('resourceType')}" + (f"/{rid}" if rid else "")
            actions.append(
                {
                    "type": a.get("type"),
                    "verb": ACTION_VERBS.get(a.get("type"), a.get("type")),
                    "target": target,
                    "description": a.get("description"),
                    "resource": _dumps(resource) if resource is not None else None,
                }
            )
        suggestions.append(
            {
                "label": s.get("label"),
                "recommended": bool(s.get("isRecommended")),
                "actions": actions,
            }
        )
    indicator = card.get("indicator") if card.get("indicator") in INDICATOR_LABELS else "info"
    return {
        "uuid": card.get("uuid"),
        "indicator": indicator,
        "indicator_label": INDICATOR_LABELS[indicator],
        "summary": card.get("summary"),
        "detail": render_markdown(card["detail"]) if card.get("detail") else None,
        "source_label": source.get("label"),
        "source_url": safe_url(source.get("url")),
        "selection": {"at-most-one": "Choose at most one", "any": "Choose any"}.get(
            card.get("selectionBehavior", ""), ""
        ),
        "suggestions": suggestions,
        "links": [
            {
                "label": link.get("label"),
                "url": safe_url(link.get("url")),
                "raw_url": link.get("url"),
                "smart": link.get("type") == "smart",
            }
            for link in card.get("links") or ()
        ],
        "reasons": [r.get("display") for r in card.get("overrideReasons") or ()],
        "rules": (card.get("extension") or {}).get("ketamine-cds.rules") or [],
    }


# -- the blueprint -----------------------------------------------------------------------------


def preview_blueprint(
    catalog: ServiceCatalog, settings: Settings, observation_codes: list[str] | None = None
) -> Blueprint:
    """The preview routes, evaluating through ``catalog`` (the app's own services).
    ``observation_codes`` are the LOINC codes the service's observation search asks for
    (a Bundle's other observations are left out, as an EHR answering the prefetch would)."""
    bp = Blueprint(
        "preview",
        __name__,
        static_folder="static",
        static_url_path="/preview/static",
        template_folder="templates",
    )
    limits = InputLimits(max_entries=settings.max_prefetch_resources)
    services = [s.id for s in catalog]

    def fixture_choices() -> list[dict[str, str]]:
        out = []
        for name in names():
            try:
                expected = orjson.loads((fixtures_dir() / name / "expected.json").read_bytes())
            except (OSError, ValueError):
                continue
            out.append(
                {
                    "name": name,
                    "service": expected.get("service", ""),
                    "description": expected.get("description", ""),
                }
            )
        return out

    def base_url() -> str:
        return (settings.public_url or request.host_url).rstrip("/")

    def page(form: Form, result: dict[str, Any] | None = None, status: int = 200) -> Response:
        html = render_template(
            "preview.html",
            form=form,
            result=result,
            fixtures=fixture_choices(),
            services=services,
            routes=toolkit.ROUTES,
            hooks=toolkit.HOOKS,
        )
        return Response(html, status=status, mimetype="text/html")

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.method == "POST":
            response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/")
    def index() -> Response:
        return redirect(url_for("preview.show"))

    @bp.get("/preview")
    def show() -> Response:
        form = Form()
        if request.args.get("fixture") in names():
            form.fixture = request.args["fixture"]
        return page(form)

    @bp.get("/preview/fixtures/<name>.json")
    def fixture_json(name: str) -> Response:
        if name not in names():
            abort(404)
        body, _ = load(name)
        return Response(_dumps(body), mimetype="application/json")

    @bp.post("/preview")
    def send() -> Response:
        request.max_form_memory_size = settings.max_body_bytes
        form = Form.from_request()
        try:
            body, service_id, client = _request_of(form, observation_codes)
            outcome = toolkit.evaluate(
                catalog,
                body,
                form.service_id or service_id,
                client=client,
                base_url=base_url(),
                limits=limits,
            )
        except toolkit.ToolError as exc:
            form.errors.append(str(exc))
            return page(form, status=400)
        result = {
            "service_id": outcome.service_id,
            "status": outcome.status,
            "elapsed_ms": outcome.elapsed_ms,
            "cards": [view_card(c) for c in outcome.cards],
            "error": outcome.error,
            "response_json": _dumps(outcome.response if outcome.error is None else outcome.error),
            "request_json": _dumps(outcome.request),
            "system_actions": (outcome.response or {}).get("systemActions") or [],
        }
        return page(form, result)

    return bp


def _request_of(
    form: Form, observation_codes: list[str] | None
) -> tuple[Any, str | None, toolkit.FixtureFhir | None]:
    """(hook request, service id it is meant for, stand-in FHIR server) of the form."""
    if form.source == "fixture":
        if form.fixture not in names():
            raise toolkit.ToolError(f"no fixture named {form.fixture!r}")
        body, expected = load(form.fixture)
        return body, expected.get("service"), toolkit.fixture_client(expected)
    if form.source == "request":
        if not form.request_text.strip():
            raise toolkit.ToolError("paste a CDS Hooks request (JSON) to send")
        try:
            body = orjson.loads(form.request_text)
        except orjson.JSONDecodeError as exc:
            raise toolkit.ToolError(f"the hook request is not valid JSON: {exc}") from None
        return (dated(body) if isinstance(body, dict) else body), None, None
    if form.source == "bundle":
        upload = request.files.get("bundle_file")
        raw = upload.read() if upload and upload.filename else form.bundle_text.encode()
        if not raw.strip():
            raise toolkit.ToolError("paste a patient Bundle or NDJSON, or choose a file")
        try:
            resources = resources_from(raw)
        except ConversionError as exc:
            raise toolkit.ToolError(f"the patient data cannot be read: {exc}") from None
        orders = []
        if form.hook != "patient-view":
            dose = _number(form.dose, "the dose")
            minutes = _number(form.minutes, "the infusion time")
            route = (form.route or "iv") if form.drug == "ketamine" else None
            orders = [
                toolkit.draft_order(form.drug, dose, route, minutes if route == "iv" else None)
            ]
        body = toolkit.build_request(
            resources,
            hook=form.hook,
            orders=orders,
            patient_id=form.patient_id or None,
            observation_codes=observation_codes,
        )
        return body, None, None
    raise toolkit.ToolError(f"unknown source {form.source!r}: fixture, request or bundle")
