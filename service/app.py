"""The Flask application factory: wires the protocol layer to the ketamine service."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.http import ProtocolSettings, create_blueprint, install, json_response
from cds_hooks.service import ServiceCatalog

from . import __version__, logs, policy
from .config import Settings
from .hooks import Clock, KetamineCDS
from .terminology import Terminology, load_yaml

log = logging.getLogger("service.app")


def build_engine(settings: Settings, clock: Clock | None = None) -> KetamineCDS:
    """The ketamine service without HTTP: policy and value sets loaded and validated."""
    site = policy.load(settings.policy_file)
    terminology = Terminology(load_yaml("valuesets.yaml"), site.extra_codes, site.extra_drugs)
    return KetamineCDS(terminology, site, clock=clock)


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    engine = build_engine(settings, clock)
    if settings.auth == "off":
        log.warning("KCDS_AUTH=off: callers are NOT authenticated; development use only")
    catalog = ServiceCatalog(engine.services())
    client = FhirClient(
        FetchSettings(timeout=settings.fhir_timeout, max_pages=settings.fhir_max_pages)
    )
    protocol = ProtocolSettings(
        public_url=settings.public_url, max_body_bytes=settings.max_body_bytes
    )

    def feedback(service_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        log.info("feedback", extra={"fields": {"service_id": service_id, "items": len(items)}})
        return {}

    app = Flask("ketamine-cds")
    install(app, create_blueprint(catalog, protocol, client, feedback), protocol)
    app.extensions["ketamine-cds"] = engine

    @app.get("/health/live")
    def live():
        return json_response({"status": "ok", "version": __version__})

    return app
