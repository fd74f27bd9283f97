"""What the CDS Hooks Sandbox (the reference EHR client) sends, rebuilt from recorded facts:
``../shared/cds-hooks/`` (spec-notes §7, §9, §10 and SOURCES.md) and issue 13, which drove the
service with the real Sandbox in headless Chromium.

- **JWT**: ES384, header ``{alg, typ: JWT, kid, jku: <its public JWKS URL>}``, claims
  ``{iss: https://sandbox.cds-hooks.org, aud: <the URL called>, exp: iat + 300, iat, jti}``;
  no ``tenant``, no ``sub``. Feedback is signed with ``aud = <service URL>/feedback``.
- **Prefetch**: the Sandbox fills each template itself, searching its FHIR server with
  ``POST /{Type}/_search`` and ``Accept: application/json+fhir``; a search that fails is
  swallowed and its key left out, so prefetch arrives partly missing.
- **No fhirAuthorization**: its FHIR server is open; ``fhirServer`` is sent without a token.
- **order-select drafts** (the Rx View's ``MedicationRequest/request-123``): no
  ``medication[x]`` until a drug is chosen, no ``intent``; ``reasonCode`` is the chosen
  Condition's ``code`` object and ``category`` one object (both lists in FHIR R4); the dose
  is ``{value, system: UCUM, code: "{pill}"}``; the ``draftOrders`` Bundle has no ``type``.
- **Feedback**: overrides carry ``reason`` with ``code`` and ``system`` only; accepted
  suggestions are named by ``id``.
- It is a browser page: calls carry ``Origin: https://sandbox.cds-hooks.org`` and need CORS.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
import orjson
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from service.engine.prefetch import PREFETCH
from tests.auth_helpers import SigningKey

SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_ORIGIN = SANDBOX
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_ACCEPT = "application/json+fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
DRAFT_ID = "request-123"  # the Rx View's draft order id


def sandbox_token(key: SigningKey, aud: str, jku: str = SANDBOX_JKU) -> str:
    """A token shaped exactly as the Sandbox signs it (its key replaced by ``key``)."""
    iat = int(time.time())
    claims = {"iss": SANDBOX, "aud": aud, "exp": iat + 300, "iat": iat, "jti": str(uuid.uuid4())}
    header = {"alg": "ES384", "typ": "JWT", "kid": key.kid, "jku": jku}
    return jwt.encode(claims, key.private, algorithm="ES384", headers=header)


@dataclass
class SandboxFhir:
    """The Sandbox's open FHIR server, on loopback, holding one patient's record. Answers
    reads, ``GET`` searches and ``POST /{Type}/_search`` (in the content type asked for);
    a ``POST`` search of a type in ``failing`` answers 500, as a search the Sandbox could not
    run. Every request is recorded as (method, path, Accept, Authorization)."""

    server: HTTPServer
    record: dict[str, list[dict[str, Any]]]  # resource type → resources
    failing: frozenset[str] = frozenset()
    seen: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.expect_request(re.compile(r"^/fhir/.+$")).respond_with_handler(self._serve)

    @property
    def base(self) -> str:
        return self.server.url_for("/fhir")

    def _serve(self, request: Request) -> Response:
        accept = request.headers.get("Accept")
        self.seen.append(
            (request.method, request.path, accept, request.headers.get("Authorization"))
        )
        kind, _, rest = request.path.removeprefix("/fhir/").partition("/")
        content_type = SANDBOX_ACCEPT if accept == SANDBOX_ACCEPT else "application/fhir+json"
        if request.method == "POST" and kind in self.failing:
            return Response(b'{"resourceType": "OperationOutcome"}', status=500)
        resources = self.record.get(kind, [])
        if rest and rest != "_search":  # a read
            found = [r for r in resources if r.get("id") == rest]
            if not found:
                return Response(b'{"resourceType": "OperationOutcome"}', status=404)
            return Response(orjson.dumps(found[0]), content_type=content_type)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
        }
        return Response(orjson.dumps(bundle), content_type=content_type)


def record_of(prefetch: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A fixture's prefetch as a FHIR server's content: resource type → resources."""
    record: dict[str, list[dict[str, Any]]] = {}
    for key, value in prefetch.items():
        kind = PREFETCH[key][0]
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            record[kind] = [e["resource"] for e in value.get("entry", [])]
        elif isinstance(value, dict):
            record[kind] = [value]
    return record


def sandbox_prefetch(service: dict[str, Any], fhir: SandboxFhir, context: dict[str, Any]):
    """Prefetch as the Sandbox fulfils it: every template of the discovery entry filled
    from the context, searched by ``POST {fhirServer}/{Type}/_search`` (reads by ``GET``)
    with ``Accept: application/json+fhir``; a key whose search fails is left out."""
    prefetch = {}
    for key, template in service.get("prefetch", {}).items():
        url = template.replace("{{context.patientId}}", context["patientId"])
        url = url.replace("{{context.userId}}", context["userId"])
        path, _, query = url.partition("?")
        headers = {"Accept": SANDBOX_ACCEPT}
        if query:
            r = requests.post(
                f"{fhir.base}/{path}/_search", data=parse_qsl(query), headers=headers, timeout=5
            )
        else:
            r = requests.get(f"{fhir.base}/{path}", headers=headers, timeout=5)
        if r.status_code == 200 and r.content:
            prefetch[key] = r.json()
    return prefetch


def sandbox_request(
    hook: str, context: dict[str, Any], fhir: SandboxFhir, prefetch: dict[str, Any]
) -> dict[str, Any]:
    """A hook call as the Sandbox sends it: fhirServer, no fhirAuthorization."""
    body = {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "fhirServer": fhir.base,
        "context": context,
    }
    if prefetch:
        body["prefetch"] = prefetch
    return body


def rx_view_draft(
    patient_id: str,
    medication: dict[str, str] | None,
    reason: dict[str, Any] | None = None,
    dispense_days: int | None = None,
) -> dict[str, Any]:
    """The Rx View's draft order: ``medication`` ({code, display} of an RxNorm concept) is
    None until the user picks a drug; ``reason`` is the chosen Condition's ``code``, sent as
    one object; a dispense request adds ``intent: order`` and ``category`` as one object."""
    draft: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": DRAFT_ID,
        "status": "draft",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if medication is not None:
        draft["dosageInstruction"] = [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "system": UCUM, "code": "{pill}"}}],
            }
        ]
        draft["medicationCodeableConcept"] = {
            "text": medication["display"],
            "coding": [{"display": medication["display"], "system": RXNORM, **medication}],
        }
    if dispense_days is not None:
        draft["dispenseRequest"] = {
            "expectedSupplyDuration": {
                "value": dispense_days,
                "unit": "days",
                "system": UCUM,
                "code": "d",
            }
        }
        draft["intent"] = "order"
        draft["category"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "code": "community",
                }
            ]
        }
    if reason is not None:
        draft["reasonCode"] = reason
    return draft


def order_select_context(patient_id: str, draft: dict[str, Any]) -> dict[str, Any]:
    return {
        "patientId": patient_id,
        "userId": "Practitioner/example",
        "selections": [f"MedicationRequest/{draft['id']}"],
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]},
    }
