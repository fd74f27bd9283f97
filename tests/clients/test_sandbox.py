"""The CDS Hooks Sandbox, replayed (what it sends: see tests/clients/sandbox.py): its JWT
pinned offline, its partly missing prefetch completed from its open FHIR server without a
token, its R4-invalid but readable draft orders evaluated, its feedback accepted. Every call
is answered 200 with cards that make sense for the order; never 400 for a readable order."""

import json

import orjson
import pytest
from pytest_httpserver import HTTPServer

from service.config import Settings
from service.tools.fixtures import load
from service.web.app import create_app
from tests.auth_helpers import es384
from tests.clients.sandbox import (
    SANDBOX,
    SANDBOX_ACCEPT,
    SANDBOX_KID,
    SANDBOX_ORIGIN,
    SandboxFhir,
    order_select_context,
    record_of,
    rx_view_draft,
    sandbox_prefetch,
    sandbox_request,
    sandbox_token,
)

PUBLIC_URL = "https://cds.example.org"
KEY = es384(kid=SANDBOX_KID)  # stands in for the Sandbox's key, pinned under its issuer
#: the record: an adult eligible for esketamine (the spravato-order-select fixture's patient)
REQUEST, _ = load("spravato-order-select")
PATIENT = REQUEST["context"]["patientId"]
#: esketamine as the ketamine_esketamine ValueSet lists it (RxNorm)
ESKETAMINE = {"code": "2201625", "display": "esketamine Nasal Spray [Spravato]"}
#: the chosen Condition's code, as the Rx View copies it into reasonCode (one object)
DEPRESSION = {
    "coding": [
        {
            "system": "http://snomed.info/sct",
            "code": "15639000",
            "display": "Moderate major depression, single episode (disorder)",
        }
    ],
    "text": "Moderate major depression, single episode",
}


@pytest.fixture(scope="module")
def fhir():
    server = HTTPServer()
    server.start()
    # the Sandbox's own Observation search fails: it leaves "observations" out
    yield SandboxFhir(server, record_of(REQUEST["prefetch"]), failing=frozenset({"Observation"}))
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory, fhir):
    tmp = tmp_path_factory.mktemp("sandbox")
    jwks = tmp / "sandbox-jwks.json"
    jwks.write_text(json.dumps({"keys": [KEY.jwk()]}))
    env = {
        "KCDS_TRUSTED_ISSUERS": json.dumps({SANDBOX: str(jwks)}),  # the plain form
        "KCDS_PUBLIC_URL": PUBLIC_URL,
        "KCDS_CORS_ORIGINS": SANDBOX_ORIGIN,
        "KCDS_FHIR_ALLOWED": fhir.base,
        "KCDS_DATABASE_URL": f"sqlite:///{tmp}/registry.db",
        "KCDS_REPLAY_CACHE": "memory",
        "KCDS_PSEUDONYM_KEY": "sandbox-replay-pseudonym-key-0123456789",
    }
    return create_app(Settings.from_env(env)).test_client()


def discovery(client) -> dict:
    r = client.get(
        "/cds-services",
        headers={
            "Authorization": f"Bearer {sandbox_token(KEY, PUBLIC_URL + '/cds-services')}",
            "Origin": SANDBOX_ORIGIN,
        },
    )
    assert r.status_code == 200, r.get_json()
    assert r.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN
    return {s["id"]: s for s in r.get_json()["services"]}


def call(client, path: str, body: dict):
    token = sandbox_token(KEY, PUBLIC_URL + path)
    return client.post(
        path,
        data=orjson.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}", "Origin": SANDBOX_ORIGIN},
    )


def hook_call(client, fhir: SandboxFhir, service_id: str, context: dict):
    """Discovery, the Sandbox's own prefetch, then the call; the JSON answer."""
    service = discovery(client)[service_id]
    prefetch = sandbox_prefetch(service, fhir, context)
    assert "observations" not in prefetch and "patient" in prefetch  # partly missing
    fhir.seen.clear()
    body = sandbox_request(service["hook"], context, fhir, prefetch)
    r = call(client, f"/cds-services/{service_id}", body)
    assert r.status_code == 200, r.get_json()
    assert r.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN
    return r.get_json()


def summaries(answer: dict) -> list[str]:
    return [card["summary"] for card in answer["cards"]]


def assert_completed_without_a_token(fhir: SandboxFhir) -> None:
    """The service fetched what the Sandbox left out, from fhirServer, with no token."""
    fetched = [(method, path, auth) for method, path, _, auth in fhir.seen]
    assert ("GET", "/fhir/Observation", None) in fetched, fetched


def test_the_sandbox_searches_as_recorded(fhir):
    """The double behaves as the Sandbox's side does: POST _search with its Accept."""
    service = {"prefetch": {"conditions": "Condition?patient={{context.patientId}}"}}
    fhir.seen.clear()
    prefetch = sandbox_prefetch(service, fhir, {"patientId": PATIENT, "userId": "x"})
    assert prefetch["conditions"]["resourceType"] == "Bundle"
    assert fhir.seen == [("POST", "/fhir/Condition/_search", SANDBOX_ACCEPT, None)]


def test_preflight_and_discovery(client):
    r = client.options(
        "/cds-services/ketamine-order-select",
        headers={
            "Origin": SANDBOX_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN
    assert set(discovery(client)) == {
        "ketamine-order-select",
        "ketamine-order-sign",
        "ketamine-patient-view",
    }


def test_order_select_before_a_drug_is_chosen(client, fhir):
    """No medication[x], no intent: nothing says ketamine, so no cards (and no 400)."""
    context = order_select_context(PATIENT, rx_view_draft(PATIENT, None, DEPRESSION))
    assert hook_call(client, fhir, "ketamine-order-select", context) == {"cards": []}


def test_order_select_esketamine_without_intent_and_reason_as_an_object(client, fhir):
    context = order_select_context(PATIENT, rx_view_draft(PATIENT, ESKETAMINE, DEPRESSION))
    answer = hook_call(client, fhir, "ketamine-order-select", context)
    assert_completed_without_a_token(fhir)
    # the Sandbox's "1 {pill} daily" is not an esketamine dose: the card says so
    assert any("{pill}" in s for s in summaries(answer)), summaries(answer)
    # the observations the Sandbox left out were fetched: nothing is reported missing
    assert not any("observations" in s for s in summaries(answer)), summaries(answer)


def test_order_select_with_a_dispense_request_and_category_as_an_object(client, fhir):
    draft = rx_view_draft(PATIENT, ESKETAMINE, DEPRESSION, dispense_days=28)
    answer = hook_call(client, fhir, "ketamine-order-select", order_select_context(PATIENT, draft))
    assert any("{pill}" in s for s in summaries(answer)), summaries(answer)


def test_order_sign_of_the_same_draft(client, fhir):
    draft = rx_view_draft(PATIENT, ESKETAMINE, DEPRESSION, dispense_days=28)
    context = order_select_context(PATIENT, draft)
    del context["selections"]  # order-sign has none
    answer = hook_call(client, fhir, "ketamine-order-sign", context)
    assert any("REMS" in s for s in summaries(answer)), summaries(answer)  # the plan


def test_patient_view(client, fhir):
    context = {"patientId": PATIENT, "userId": "Practitioner/example"}
    answer = hook_call(client, fhir, "ketamine-patient-view", context)
    assert answer["cards"] == []  # no ketamine course in this record
    assert_completed_without_a_token(fhir)


def test_feedback_as_the_sandbox_sends_it(client, fhir):
    """Overrides with reason {code, system} only; accepted suggestions by id."""
    body = load("clean-iv-ketamine-sign")[0]  # a call whose cards carry suggestions
    body.pop("fhirAuthorization")
    body["fhirServer"] = fhir.base
    r = call(client, "/cds-services/ketamine-order-sign", body)
    assert r.status_code == 200, r.get_json()
    card = next(c for c in r.get_json()["cards"] if c.get("suggestions"))
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-29T10:05:31Z",
            },
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "patient-aware", "system": "http://example.org/reasons"}
                },
                "outcomeTimestamp": "2026-11-29T10:05:32Z",
            },
        ]
    }
    r = call(client, "/cds-services/ketamine-order-sign/feedback", feedback)
    assert r.status_code == 200, r.get_json()
