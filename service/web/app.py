"""The Flask application factory: wires the protocol layer to the ketamine service."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import Flask, redirect, render_template, url_for

from cds_hooks.auth import JwtAuthenticator, JwtPolicy
from cds_hooks.errors import CDSHooksError
from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.http import ProtocolSettings, create_blueprint, install, json_response
from cds_hooks.replay import OutageFallback, open_replay_cache
from cds_hooks.service import ServiceCatalog, handle
from cds_hooks.validation import InputLimits, validator
from service import __version__
from service.config import ConfigError, Settings
from service.engine import policy
from service.engine.hooks import Clock, KetamineCDS, Recorder
from service.engine.rulebook import catalogue
from service.engine.rules import RULES
from service.engine.snooze import SnoozeSource
from service.engine.terminology import ValueSetError, load_terminology
from service.registry import Registry
from service.registry.snooze import SnoozeIndex
from service.tools.convert import ketamine_order, to_hook_request

from . import logs
from .admin import admin_blueprint
from .health import health_blueprint
from .metrics import Metrics, metrics_blueprint
from .preview import preview_blueprint, preview_enabled
from .smart import SmartSettings, course_view_url

log = logging.getLogger("service.web.app")


def utc_now() -> datetime:
    """The service's clock: the engine never reads one, this layer hands it in."""
    return datetime.now(UTC)


def build_engine(
    settings: Settings,
    clock: Clock | None = None,
    recorder: Recorder | None = None,
    snoozes: SnoozeSource | None = None,
) -> KetamineCDS:
    """The ketamine service without HTTP: policy and value sets loaded and validated; its
    clock ``clock``, else the system's (:func:`utc_now`); the registry's recorder and
    snooze index when it is on."""
    site = policy.load(settings.policy_file)
    try:
        terminology = load_terminology(settings.valuesets_dir, site.extra_codes, site.extra_drugs)
    except ValueSetError as e:  # a bad KCDS_VALUESETS_DIR or site ValueSet file
        raise ConfigError(str(e)) from None
    return KetamineCDS(
        terminology, site, clock or utc_now, recorder, snoozes, course_view_url(settings)
    )


def warm_up(engine: KetamineCDS) -> None:
    """Evaluate one synthetic order at start-up, before gunicorn forks the workers: the JSON
    schemas compile and the fhir.resources models load once, not in a caller's request."""
    quiet = KetamineCDS(engine.terminology, engine.policy, engine.clock)  # records nothing
    patient = {"resourceType": "Patient", "id": "warm-up", "birthDate": "1980-01-01"}
    body = to_hook_request(
        [patient], hook="order-sign", orders=[ketamine_order(40, "iv", 40)], instance="warm-up"
    )
    handle(ServiceCatalog(quiet.services()).get("ketamine-order-sign"), body, None, "http://x")
    validator("feedback.json")


def authenticator(settings: Settings) -> JwtAuthenticator:
    """The caller JWT check of KCDS_AUTH=jwt; a ConfigError when it cannot work."""
    if why := settings.missing_issuers():
        raise ConfigError(why)
    policy = JwtPolicy(
        clock_skew=settings.jwt_clock_skew,
        max_age=settings.jwt_max_age,
        jwks_ttl=settings.jwks_cache_ttl,
    )
    try:
        replay = open_replay_cache(settings.replay_cache, outage=settings.replay_outage)
    except Exception as exc:  # unreachable at start: say which setting, not the URL
        raise ConfigError(f"KCDS_REPLAY_CACHE is unusable ({type(exc).__name__})") from None
    try:
        return JwtAuthenticator(settings.trusted_issuers, policy, replay=replay)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"KCDS_TRUSTED_ISSUERS: a jwks_file is unusable ({exc})") from None


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> Flask:
    clock = clock or utc_now
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    registry = Registry.open(settings, clock)
    # spec §7 v2: warnings a clinician snoozed stay away; only while there is a registry
    snoozes = SnoozeIndex(registry.store, registry.pseudonym, registry.start) if registry else None
    engine = build_engine(settings, clock, registry.record if registry else None, snoozes)
    warm_up(engine)
    authenticate = authenticator(settings) if settings.auth == "jwt" else None
    if authenticate is None:
        log.warning("KCDS_AUTH=off: callers are NOT authenticated; development use only")
    catalog = ServiceCatalog(engine.services())
    limits = InputLimits(max_entries=settings.max_prefetch_resources)
    observer = Metrics(
        routes=(),  # the app's route templates, filled in once all routes are registered
        services=[s.id for s in catalog],
        keys={key for s in catalog for key in s.prefetch},
    )
    client = FhirClient(
        FetchSettings(
            timeout=settings.fhir_timeout,
            max_pages=settings.fhir_max_pages,
            max_bytes=settings.fhir_max_bytes,
            max_request_bytes=settings.fhir_max_request_bytes,
            server_concurrency=settings.fhir_server_concurrency,
            allowed_servers=settings.fhir_servers(),
            limits=limits,
        ),
        observer=observer,
    )
    protocol = ProtocolSettings(
        public_url=settings.public_url,
        max_body_bytes=settings.max_body_bytes,
        limits=limits,
        cors_origins=settings.cors_origins,
        title="ketamine-cds",
        version=__version__,
        observer=observer,
    )

    def discard(service_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The feedback sink with KCDS_REGISTRY=off: acknowledged, counted in the log only."""
        log.info("feedback", extra={"fields": {"service_id": service_id, "items": len(items)}})
        return {}

    sink = registry.feedback if registry else discard
    app = Flask(__name__)
    install(app, create_blueprint(catalog, protocol, client, sink, authenticate), protocol)
    app.extensions["ketamine-cds"] = engine
    app.extensions["ketamine-cds.registry"] = registry
    if preview_enabled(settings):  # the card preview page (KCDS_PREVIEW)
        # the same rules and policy, but previews are not treatments: nothing is recorded
        unrecorded = KetamineCDS(engine.terminology, engine.policy, clock)
        codes = sorted(engine.builder.observation_codes)
        app.register_blueprint(
            preview_blueprint(ServiceCatalog(unrecorded.services()), settings, codes)
        )
    smart = SmartSettings.of(settings)
    if smart is not None:  # the SMART course view (KCDS_SMART_CLIENT_ID; docs/smart.md)
        from .course import course_blueprint  # Matplotlib: ~1 s and ~45 MB, only when used

        app.register_blueprint(course_blueprint(smart, engine, settings, client.settings))
    if registry and settings.admin_token:
        app.register_blueprint(admin_blueprint(registry.store, settings.admin_token))
    # probes and metrics: no caller JWT (see service.web.health, service.web.metrics)
    checks = {"policy": lambda: _loaded(engine)}
    degradations = {}
    if registry:  # the journal decides readiness; the registry database is a degradation
        checks["journal"] = registry.check_journal
        degradations["registry"] = registry.recording
        registry.observer = observer
    if snoozes:
        snoozes.observe = observer.snooze_lookup
    replay = authenticate.replay if authenticate is not None else None
    if isinstance(replay, OutageFallback):  # KCDS_REPLAY_OUTAGE=memory: a degradation
        degradations["replay_cache"] = replay.ping
        replay.on_fallback = observer.replay_fallback
    elif replay is not None and replay.shared:  # refuse: no decision support without it
        checks["replay_cache"] = replay.ping
    app.register_blueprint(health_blueprint(checks, degradations))
    app.register_blueprint(metrics_blueprint(settings.metrics_token))
    Metrics.started(__version__, engine.policy.version)

    @app.get("/rules")
    def rules_page():
        return render_template("rules.html", cat=catalogue(engine.policy))

    @app.get("/rules.json")
    def rules_json():
        return json_response(catalogue(engine.policy))

    @app.get("/rules/<rule_id>")
    def rule_page(rule_id: str):
        if rule_id not in RULES:
            raise CDSHooksError(404, "unknown_rule", f"no rule with id {rule_id!r}")
        return redirect(f"{url_for('rules_page')}#{rule_id}")

    observer.routes = frozenset(rule.rule for rule in app.url_map.iter_rules()) | {"unmatched"}
    return app


def _loaded(engine: KetamineCDS) -> None:
    """Raises unless the policy and the value sets are loaded."""
    if not engine.policy.version or not engine.terminology.valuesets:
        raise RuntimeError("policy or value sets not loaded")
