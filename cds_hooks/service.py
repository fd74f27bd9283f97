"""Service definitions, the discovery document, and the request pipeline.

The pipeline is what every hook call goes through, whatever the domain: validate (shape
and input limits), refuse a ``fhirServer`` that is not allowed, resolve prefetch (fetching
what is missing), refuse with 412 when required data cannot be had, then hand a
:class:`HookRequest` to the service's handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import CDSHooksError, bad_request
from .models import Response
from .prefetch import KeyResult, interpret, render
from .source import FhirSource
from .validation import InputLimits, check_request


@dataclass
class HookRequest:
    """A validated hook call with its prefetch resolved; what a service handler receives."""

    service_id: str
    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, KeyResult]
    fhir_server: str | None
    base_url: str  # the service's public base URL, for links back to it
    log_fields: dict[str, Any] = field(default_factory=dict)  # non-identifying, for the log


Handler = Callable[[HookRequest], Response]


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    handler: Handler
    prefetch: dict[str, str] = field(default_factory=dict)
    usage_requirements: str | None = None
    required_keys: frozenset[str] = frozenset()  # without these → 412
    # cheap check on the context before any data is fetched; False → {"cards": []} at once
    relevant: Callable[[dict[str, Any]], bool] | None = None

    def discovery(self) -> dict[str, Any]:
        entry = {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
        }
        if self.prefetch:
            entry["prefetch"] = dict(self.prefetch)
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


class ServiceCatalog:
    """The services one CDS server offers."""

    def __init__(self, services: Iterable[ServiceDefinition]):
        self._services = {s.id: s for s in services}

    def __iter__(self):
        return iter(self._services.values())

    def get(self, service_id: str) -> ServiceDefinition:
        service = self._services.get(service_id)
        if service is None:
            raise CDSHooksError(404, "unknown_service", f"no CDS service with id {service_id!r}")
        return service

    def discovery(self) -> dict[str, Any]:
        return {"services": [s.discovery() for s in self._services.values()]}


def resolve_prefetch(
    service: ServiceDefinition, body: dict[str, Any], client: FhirSource | None
) -> dict[str, KeyResult]:
    """Interpret what the client sent for each prefetch key and fetch the rest."""
    context = body["context"]
    sent = body.get("prefetch") or {}
    results: dict[str, KeyResult] = {}
    wanted: dict[str, str] = {}
    paged: dict[str, KeyResult] = {}
    for key, template in service.prefetch.items():
        result = interpret(sent.get(key), key in sent)
        if result is not None and result.next_url is None:
            results[key] = result
            continue
        if result is not None:
            paged[key] = result
            continue
        url = render(template, context)
        if url is None:
            results[key] = KeyResult("unavailable", reason="its template could not be filled")
        else:
            wanted[key] = url
    server = body.get("fhirServer")
    if wanted or paged:
        if server and client is not None:
            token = (body.get("fhirAuthorization") or {}).get("access_token")
            results.update(client.complete(server, token, wanted, paged))
        else:
            why = "not prefetched and no fhirServer to fetch it from"
            for key in wanted:
                results[key] = KeyResult("unavailable", reason=why)
            for key, result in paged.items():
                results[key] = KeyResult(
                    "provided",
                    result.resources,
                    complete=False,
                    reason="paged, and no fhirServer to fetch the other pages",
                )
    return results


def handle(
    service: ServiceDefinition,
    body: Any,
    client: FhirSource | None,
    base_url: str,
    limits: InputLimits | None = None,
) -> tuple[HookRequest, Response]:
    """Run one hook call through validation, prefetch resolution and the handler. Without
    a ``client`` nothing is fetched, so ``fhirServer`` is not checked either."""
    check_request(body, service.hook, limits)
    server = body.get("fhirServer")
    if server is not None and client is not None and not client.allows(server):
        raise bad_request(
            "fhirServer is not one of the FHIR servers this service may call", field="fhirServer"
        )
    request = HookRequest(
        service_id=service.id,
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch={},
        fhir_server=server,
        base_url=base_url,
    )
    if service.relevant is not None and not service.relevant(body["context"]):
        return request, Response()
    prefetch = resolve_prefetch(service, body, client)
    for key in service.required_keys:
        result = prefetch.get(key)
        if result is None or result.status in ("unavailable", "empty"):
            reason = result.reason if result and result.reason else "no data"
            raise CDSHooksError(
                412,
                "precondition_failed",
                f"required prefetch {key!r} could not be obtained: {reason}",
                field=f"prefetch.{key}",
            )
    request.prefetch = prefetch
    return request, service.handler(request)
