"""What the integration engineers' tools share: the ``ketamine-cds`` evaluate, request,
fixtures and policy commands (``service.tools.cli``) and the card preview page
(``service.web.preview``).

Every evaluation goes through :func:`cds_hooks.service.handle` with a service catalogue, as
a call to ``POST /cds-services/{id}`` does: validation, prefetch resolution, the ketamine
handlers and the card rendering are the service's own, never a copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cds_hooks.errors import CDSHooksError
from cds_hooks.prefetch import KeyResult, bundle_resources
from cds_hooks.service import ServiceCatalog, ServiceDefinition, handle
from cds_hooks.source import FhirSource, MockFhirSource, Read
from cds_hooks.validation import InputLimits
from service.engine import policy
from service.engine.terminology import load_terminology, load_yaml

from . import convert
from .fixtures import compare, load

#: where card links point when no service is running and no public URL is known: a
#: placeholder (.invalid never resolves, RFC 6761) that a running service replaces with its
#: public URL (KCDS_PUBLIC_URL, or the URL it is called at)
OFFLINE_BASE_URL = "https://ketamine-cds.invalid"
DRUGS = ("ketamine", "esketamine")
ROUTES = tuple(convert.KETAMINE_ROUTES)
HOOKS = ("order-sign", "order-select", "patient-view")


class ToolError(ValueError):
    """The input cannot be used (the message says why, for a person)."""


@dataclass(frozen=True)
class Outcome:
    """One evaluation: the service's response, or the error it answered with."""

    service_id: str
    request: dict[str, Any]
    status: int  # 200, or the HTTP status the service would have answered with
    response: dict[str, Any] | None  # the CDS Hooks response (status 200)
    error: dict[str, Any] | None  # the JSON error body (status >= 400)
    elapsed_ms: float

    @property
    def cards(self) -> list[dict[str, Any]]:
        return list((self.response or {}).get("cards") or ())


def pick_service(
    catalog: ServiceCatalog, body: Any, service_id: str | None = None
) -> ServiceDefinition:
    """The service ``service_id``, else the first whose hook is the request's ``hook``."""
    if service_id:
        try:
            return catalog.get(service_id)
        except CDSHooksError:
            known = ", ".join(s.id for s in catalog)
            raise ToolError(f"no service {service_id!r} (one of {known})") from None
    if not isinstance(body, Mapping) or "hook" not in body:
        raise ToolError(
            'this is not a CDS Hooks request: it has no "hook" (a request is '
            '{"hook", "hookInstance", "context", "prefetch"}; `ketamine-cds request build` '
            "makes one from a patient's FHIR data)"
        )
    hook = body["hook"]
    for service in catalog:
        if service.hook == hook:
            return service
    hooks = ", ".join(sorted({s.hook for s in catalog}))
    raise ToolError(f"no service answers hook {hook!r} (this service answers {hooks})")


def evaluate(
    catalog: ServiceCatalog,
    body: Any,
    service_id: str | None = None,
    *,
    client: FhirSource | None = None,
    base_url: str = OFFLINE_BASE_URL,
    limits: InputLimits | None = None,
) -> Outcome:
    """Run ``body`` through the service exactly as ``POST /cds-services/{id}`` does (without
    ``client`` nothing is fetched from ``fhirServer``) and time it."""
    service = pick_service(catalog, body, service_id)
    started = time.perf_counter()
    try:
        _, response = handle(service, body, client, base_url, limits)
    except CDSHooksError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(service.id, body, exc.status, None, exc.to_json(), elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    return Outcome(service.id, body, 200, response.to_json(), None, elapsed)


class FixtureFhir(MockFhirSource):
    """The FHIR server of a fixture that sends no prefetch (``expected.fhir_data_from``):
    the service's reads are answered from the other fixture's prefetch, in-process, as
    ``tests/fhir_mock.py`` answers them over HTTP for the end-to-end tests. It stands where
    :class:`cds_hooks.fhir.FhirClient` stands, so the service's own prefetch resolution runs.
    """

    def __init__(self, prefetch: Mapping[str, Any]):
        self.prefetch = dict(prefetch)
        super().__init__(self._answer)

    def _answer(self, read: Read) -> KeyResult:
        value = self.prefetch.get(read.key)
        if isinstance(value, Mapping) and value.get("resourceType") == "Bundle":
            return KeyResult("fetched", bundle_resources(dict(value)))
        if isinstance(value, Mapping):
            return KeyResult("fetched", [dict(value)])
        if read.key == "patient":
            return KeyResult("unavailable", reason="the fixture has no such data")
        return KeyResult("fetched", [])


def fixture_client(expected: Mapping[str, Any], now: datetime | None = None) -> FixtureFhir | None:
    """The stand-in FHIR server a fixture's expectations ask for, if any."""
    source = expected.get("fhir_data_from")
    if not source:
        return None
    request, _ = load(source, now)
    return FixtureFhir(request.get("prefetch") or {})


def check_fixture(catalog: ServiceCatalog, name: str, now: datetime) -> list[str]:
    """The differences between what the service answers to fixture ``name`` (dated to
    ``now``) and the fixture's expectations; empty when it matches."""
    request, expected = load(name, now)
    outcome = evaluate(
        catalog, request, expected.get("service"), client=fixture_client(expected, now)
    )
    if outcome.status != 200:
        return [f"answered {outcome.status}: {(outcome.error or {}).get('message')}"]
    return compare(outcome.response or {}, expected)


def parse_now(text: str) -> datetime:
    """``2026-01-10`` (midnight UTC) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ToolError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- requests from patient data ----------------------------------------------------------


def draft_order(
    drug: str, mg: float | None, route: str | None = None, minutes: float | None = None
) -> dict[str, Any]:
    """A draft MedicationRequest for ``drug`` (``ketamine`` or ``esketamine``)."""
    if drug == "esketamine":
        return convert.esketamine_order(56 if mg is None else mg)
    if drug != "ketamine":
        raise ToolError(f"drug must be ketamine or esketamine, not {drug!r}")
    route = route or "iv"
    if route not in ROUTES:
        raise ToolError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
    if minutes is None and route == "iv":
        minutes = 40
    return convert.ketamine_order(mg, route, minutes)


def build_request(
    resources: Iterable[Mapping[str, Any]],
    *,
    hook: str = "order-sign",
    orders: Iterable[Mapping[str, Any]] = (),
    patient_id: str | None = None,
    observation_codes: Iterable[str] | None = None,
) -> dict[str, Any]:
    """A valid hook request about one patient of ``resources`` (see
    :func:`service.tools.convert.to_hook_request`); ToolError when it cannot be made."""
    if hook not in HOOKS:
        raise ToolError(f"hook must be one of {', '.join(HOOKS)}, not {hook!r}")
    try:
        return convert.to_hook_request(
            resources,
            hook=hook,
            orders=list(orders),
            patient_id=patient_id or None,
            observation_codes=observation_codes,
        )
    except convert.ConversionError as exc:
        raise ToolError(str(exc)) from None
    except CDSHooksError as exc:
        raise ToolError(f"the request built is not valid: {exc.message}") from None


# -- policy files --------------------------------------------------------------------------


def policy_file_problems(path: str | Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a site policy file, each naming its key path.

    Problems are what :func:`service.engine.policy.load` refuses (the file merged over the built-in
    policy, checked against the schema): the service would not start with the file.
    Warnings are keys the service accepts but that change nothing: a rule id that no rule
    has, a value set or drug class that does not exist.
    """
    try:
        site = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        return [f"(file): cannot read {path}: {exc.strerror}"], []
    except yaml.YAMLError as exc:
        return [f"(file): not valid YAML/JSON: {exc}"], []
    if not isinstance(site, dict):
        return ["(top level): must be a mapping of policy keys"], []
    return policy.site_problems(load_yaml("policy.yaml"), site), _no_effect(site)


def _no_effect(site: Mapping[str, Any]) -> list[str]:
    from service.engine.rules import RULES

    terms = load_terminology()
    known = {
        "rules": (set(RULES), "rule"),
        "extra_codes": (set(terms.names()), "value set"),
        "extra_drugs": (set(terms.drug_classes()), "drug class"),
    }
    out = []
    for key, (names, what) in known.items():
        section = site.get(key)
        if not isinstance(section, Mapping):
            continue
        for name in section:
            if name not in names:
                listed = (
                    "`ketamine-cds rules` lists them"
                    if key == "rules"
                    else "known: " + ", ".join(sorted(names))
                )
                out.append(
                    f"{key}.{name}: no {what} has this name, so it changes nothing ({listed})"
                )
    return out
