"""The protocol layer through the Flask app: discovery, validation errors, status codes."""

import json

import orjson
import pytest

from cds_hooks.validation import check_request, validator
from service.tools.fixtures import load
from tests.conftest import CONFORMANCE

SIGN = "/cds-services/ketamine-order-sign"


def post(client, path, body, **kw):
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    return client.post(
        path, data=data, content_type=kw.pop("content_type", "application/json"), **kw
    )


def clean_request():
    return load("clean-iv-ketamine-sign")[0]


def test_discovery_lists_the_three_services(client):
    r = client.get("/cds-services")
    assert r.status_code == 200
    body = r.get_json()
    assert not list(validator("discovery.json").iter_errors(body))
    services = {s["id"]: s for s in body["services"]}
    assert set(services) == {
        "ketamine-order-select",
        "ketamine-order-sign",
        "ketamine-patient-view",
    }
    assert services["ketamine-order-sign"]["hook"] == "order-sign"
    for s in services.values():
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["usageRequirements"] and s["title"] and s["description"]


@pytest.mark.parametrize(
    "name",
    [
        "order-select-01-example-r4.json",
        "order-sign-01-example-r4.json",
        "patient-view-01-examples.json",
        "patient-view-02-examples.json",
    ],
)
def test_library_hook_examples_are_valid_contexts(name):
    example = json.loads((CONFORMANCE / name).read_text())
    hook = name.split("-0")[0]
    check_request({"hook": hook, "hookInstance": "x", **example})


def test_spec_patient_view_request_is_valid():
    check_request(json.loads((CONFORMANCE / "02-service-request-patient-view.json").read_text()))


def test_spec_order_select_example_answers_no_cards(client):
    example = json.loads((CONFORMANCE / "order-select-01-example-r4.json").read_text())
    body = {
        "hook": "order-select",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        **example,
    }
    r = post(client, "/cds-services/ketamine-order-select", body)
    assert r.status_code == 200
    assert r.get_json() == {"cards": []}


@pytest.mark.parametrize(
    "mutate, status, field",
    [
        (lambda b: b.pop("hookInstance"), 400, "hookInstance"),
        (lambda b: b.pop("context"), 400, "context"),
        (lambda b: b.__setitem__("hookInstance", 42), 400, "hookInstance"),
        (lambda b: b["context"].pop("patientId"), 400, "context.patientId"),
        (lambda b: b["context"].__setitem__("userId", "Nurse/1"), 400, "context.userId"),
        (
            lambda b: b["context"]["draftOrders"].__setitem__("resourceType", "List"),
            400,
            "context.draftOrders.resourceType",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0].pop("resource"),
            400,
            "context.draftOrders.entry[0].resource",
        ),
        (lambda b: b.__setitem__("hook", "order-select"), 400, "hook"),
        (lambda b: b.__setitem__("hook", "no-such-hook"), 400, "hook"),
        (lambda b: b["prefetch"].__setitem__("patient", "Patient/1"), 400, "prefetch.patient"),
        (lambda b: b.pop("fhirServer"), 400, "fhirServer"),
        (
            lambda b: b["fhirAuthorization"].pop("access_token"),
            400,
            "fhirAuthorization.access_token",
        ),
    ],
)
def test_bad_requests_name_the_field(client, mutate, status, field):
    body = clean_request()
    mutate(body)
    r = post(client, SIGN, body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()
    assert error["field"] == field
    assert field.split(".")[-1].split("[")[0] in error["message"]


def test_a_readable_but_r4_invalid_ketamine_order_is_checked_not_refused(client):
    """Spec v2 §3b: 400 is for the request envelope; a ketamine order the service can read
    is checked, and the plan card names what is not valid FHIR R4."""
    body = clean_request()
    body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"] = "40 mg"
    r = post(client, SIGN, body)
    assert r.status_code == 200, r.get_json()
    details = " ".join(c["detail"] for c in r.get_json()["cards"])
    assert "context.draftOrders.entry[0].resource.dosageInstruction" in details


def test_draft_orders_without_bundle_type_are_accepted(client):
    body = clean_request()
    del body["context"]["draftOrders"]["type"]
    assert post(client, SIGN, body).status_code == 200


def test_malformed_json_is_a_400_naming_the_body(client):
    r = post(client, SIGN, b'{"hook": "order-sign",')
    assert r.status_code == 400
    assert r.get_json()["field"] == "body"
    assert "not valid JSON" in r.get_json()["message"]


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"x"', b"null"])
def test_non_object_bodies_are_refused(client, raw):
    r = post(client, SIGN, raw)
    assert r.status_code == 400 and r.get_json()["field"] == "body"


def test_empty_body_is_refused(client):
    assert post(client, SIGN, b"").status_code == 400


def test_unknown_service_is_404_json(client):
    r = post(client, "/cds-services/no-such-service", clean_request())
    assert r.status_code == 404
    assert r.get_json()["error"] == "unknown_service"


def test_wrong_method_is_405_json(client):
    r = client.get(SIGN)
    assert r.status_code == 405
    assert r.get_json()["error"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_wrong_content_type_is_415(client):
    r = post(client, SIGN, clean_request(), content_type="text/plain")
    assert r.status_code == 415
    assert "Content-Type" in r.get_json()["message"]


def test_body_over_the_limit_is_413_json(client):
    huge = b'{"hook": "order-sign", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    r = post(client, SIGN, huge)
    assert r.status_code == 413
    assert r.get_json()["error"] == "request_entity_too_large"


def test_unknown_path_is_404_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.is_json


def test_missing_patient_without_fhir_server_is_412(client):
    body = clean_request()
    del body["prefetch"]
    del body["fhirServer"]
    del body["fhirAuthorization"]
    r = post(client, SIGN, body)
    assert r.status_code == 412
    assert r.get_json()["field"] == "prefetch.patient"


def test_null_patient_prefetch_is_412(client):
    body = clean_request()
    body["prefetch"]["patient"] = None
    del body["fhirServer"], body["fhirAuthorization"]
    assert post(client, SIGN, body).status_code == 412


def test_missing_keys_are_reported_on_a_card_not_refused(client):
    body = clean_request()
    for key in ("conditions", "medicationRequests"):
        del body["prefetch"][key]
    del body["fhirServer"], body["fhirAuthorization"]
    r = post(client, SIGN, body)
    assert r.status_code == 200
    cards = r.get_json()["cards"]
    d01 = [c for c in cards if "D01" in c["extension"]["ketamine-cds.rules"]]
    assert d01 and d01[0]["indicator"] == "warning"
    assert "conditions" in d01[0]["detail"] and "medicationRequests" in d01[0]["detail"]


def test_operation_outcome_prefetch_counts_as_missing(client):
    body = clean_request()
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    del body["fhirServer"], body["fhirAuthorization"]
    cards = post(client, SIGN, body).get_json()["cards"]
    assert any("D01" in c["extension"]["ketamine-cds.rules"] for c in cards)


def test_feedback_examples_are_accepted(client):
    for name in (
        "21-example-suggestion-accepted.json",
        "22-example-overridden-guidance-without-overridereason.json",
        "23-example-overridden-guidance-with-overridereason.json",
    ):
        body = json.loads((CONFORMANCE / name).read_text())
        r = post(client, SIGN + "/feedback", body)
        assert r.status_code == 200, (name, r.get_json())


def test_feedback_accepted_without_suggestions_is_refused(client):
    body = {
        "feedback": [
            {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2021-12-11T10:05:31Z"}
        ]
    }
    r = post(client, SIGN + "/feedback", body)
    assert r.status_code == 400
    assert "acceptedSuggestions" in r.get_json()["message"]
