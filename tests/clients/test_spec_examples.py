"""The specification's own examples as a client would send them (CDS Hooks 2.0.1, the CDS
Hooks Library 1.0.1 hook pages, the FHIR tools IG), copied unchanged into
tests/conformance/: each is answered 200, with no ketamine cards for orders that are not
ketamine and cards for the same orders with ketamine in them. Their ``fhirServer`` (a host
that does not answer here) is replaced by a loopback FHIR server holding their patient, so
that what they leave out of prefetch is fetched, with their access token."""

import copy
import json

import orjson
import pytest
from pytest_httpserver import HTTPServer

from service.config import Settings
from service.web.app import create_app
from tests.clients.sandbox import RXNORM, SandboxFhir
from tests.conftest import CONFORMANCE

SPEC_PATIENT = {  # the spec's patient 1288992, as its patient-view example prefetches it
    "resourceType": "Patient",
    "gender": "male",
    "birthDate": "1925-12-23",
    "id": "1288992",
    "active": True,
}
#: racemic ketamine as the ketamine_esketamine ValueSet lists it (RxNorm ingredient)
KETAMINE = {"system": RXNORM, "code": "6130", "display": "Ketamine"}


def example(name: str) -> dict:
    return json.loads((CONFORMANCE / name).read_text())


@pytest.fixture(scope="module")
def fhir():
    server = HTTPServer()
    server.start()
    yield SandboxFhir(server, {"Patient": [SPEC_PATIENT]})
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def client(fhir):
    settings = Settings.from_env({"KCDS_AUTH": "off", "KCDS_REGISTRY": "off"})
    return create_app(settings).test_client()


def post(client, path: str, body: dict):
    r = client.post(path, data=orjson.dumps(body), content_type="application/json")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def hook_request(name: str, hook: str, fhir: SandboxFhir) -> dict:
    """A Library hook example (a context) in a request envelope, as an EHR would send it."""
    return {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir.base,
        "fhirAuthorization": {
            "access_token": "some-opaque-fhir-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "cds-service4",
        },
        **example(name),
    }


def with_ketamine(body: dict) -> dict:
    """The same request with its MedicationRequest's drug replaced by ketamine."""
    body = copy.deepcopy(body)
    for entry in body["context"]["draftOrders"]["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            resource["medicationCodeableConcept"] = {"coding": [KETAMINE], "text": "Ketamine"}
    return body


def test_patient_view_request(client, fhir):
    """The spec's full request (the FHIR tools IG's sample request is the same document)."""
    body = example("02-service-request-patient-view.json")
    body["fhirServer"] = fhir.base
    fhir.seen.clear()
    assert post(client, "/cds-services/ketamine-patient-view", body) == {"cards": []}
    # what the example did not prefetch was fetched, with the example's token
    assert fhir.seen and all(
        auth == "Bearer some-opaque-fhir-access-token" for *_, auth in fhir.seen
    )


@pytest.mark.parametrize("name", ["patient-view-01-examples.json", "patient-view-02-examples.json"])
def test_library_patient_view_contexts(client, fhir, name):
    body = hook_request(name, "patient-view", fhir)
    assert post(client, "/cds-services/ketamine-patient-view", body) == {"cards": []}


@pytest.mark.parametrize(
    "name, service",
    [
        ("order-select-01-example-r4.json", "ketamine-order-select"),
        ("order-sign-01-example-r4.json", "ketamine-order-sign"),
    ],
)
def test_library_order_examples(client, fhir, name, service):
    """Amoxicillin and a pureed diet: nothing to say. The same orders with ketamine as the
    drug: cards, never a 400, although the examples' dosage is not valid R4 (doseAndRate as
    an object in order-select, STU3's doseQuantity on the dosage in order-sign)."""
    body = hook_request(name, name.split("-0")[0], fhir)
    assert post(client, f"/cds-services/{service}", body) == {"cards": []}
    answer = post(client, f"/cds-services/{service}", with_ketamine(body))
    assert answer["cards"], answer
    assert all(len(card["summary"]) < 140 for card in answer["cards"])


@pytest.mark.parametrize(
    "name",
    [
        "21-example-suggestion-accepted.json",
        "22-example-overridden-guidance-without-overridereason.json",
        "23-example-overridden-guidance-with-overridereason.json",
    ],
)
def test_feedback_examples(client, name):
    post(client, "/cds-services/ketamine-order-sign/feedback", example(name))
