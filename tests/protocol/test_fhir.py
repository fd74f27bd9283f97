"""Prefetch resolution against a real HTTP FHIR server on loopback (pytest-httpserver)."""

import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.prefetch import KeyResult, interpret, render

TOKEN = "secret-fhir-token"


def bundle(*resources, next_url=None):
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


@pytest.fixture
def client():
    c = FhirClient(FetchSettings(timeout=2.0, max_pages=3))
    yield c
    c.close()


def test_render_fills_context_and_user_tokens():
    ctx = {"patientId": "123", "userId": "PractitionerRole/abc", "encounterId": "e1"}
    assert render("Patient/{{context.patientId}}", ctx) == "Patient/123"
    assert render("X?e={{context.encounterId}}&u={{userPractitionerRoleId}}", ctx) == "X?e=e1&u=abc"
    assert render("X?u={{userPractitionerId}}", ctx) is None  # user is a PractitionerRole
    assert render("X?m={{context.draftOrders}}", {"draftOrders": {"a": 1}}) is None


def test_interpret_distinguishes_absent_null_bundle_and_outcome():
    assert interpret(None, present=False) is None
    assert interpret(None, present=True).status == "empty"
    assert interpret({"resourceType": "OperationOutcome"}, present=True) is None
    paged = interpret(bundle({"resourceType": "Condition"}, next_url="http://x/p2"), True)
    assert paged.status == "provided" and paged.next_url == "http://x/p2"
    assert interpret({"resourceType": "Patient", "id": "1"}, True).resources[0]["id"] == "1"


def test_fetch_sends_the_bearer_token_and_pages(httpserver, client):
    base = httpserver.url_for("/fhir")
    httpserver.expect_request(
        "/fhir/Condition", query_string="patient=1", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(
        bundle({"resourceType": "Condition", "id": "a"}, next_url=f"{base}/Condition?page=2")
    )
    httpserver.expect_request(
        "/fhir/Condition", query_string="page=2", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(bundle({"resourceType": "Condition", "id": "b"}))
    httpserver.expect_request(
        "/fhir/Patient/1", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json({"resourceType": "Patient", "id": "1"})
    out = client.complete(base, TOKEN, {"c": "Condition?patient=1", "p": "Patient/1"}, {})
    assert [r["id"] for r in out["c"].resources] == ["a", "b"] and out["c"].complete
    assert out["p"].status == "fetched" and out["p"].resources[0]["id"] == "1"


def test_page_cap_marks_the_result_incomplete(httpserver, client):
    base = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/Observation").respond_with_json(
        bundle({"resourceType": "Observation", "id": "o"}, next_url=f"{base}/Observation?p=n")
    )
    out = client.complete(base, None, {"o": "Observation?patient=1"}, {})
    assert out["o"].status == "fetched" and not out["o"].complete
    assert len(out["o"].resources) == 3


def test_next_link_to_another_server_is_not_followed(httpserver, client):
    base = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/Condition").respond_with_json(
        bundle({"resourceType": "Condition", "id": "a"}, next_url="http://evil.example/steal")
    )
    out = client.complete(base, TOKEN, {"c": "Condition?patient=1"}, {})
    assert not out["c"].complete and "outside fhirServer" in out["c"].reason


def test_errors_and_outcomes_make_a_key_unavailable(httpserver, client):
    base = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/A").respond_with_json({"x": 1}, status=500)
    httpserver.expect_request("/fhir/B").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": []}
    )
    httpserver.expect_request("/fhir/C").respond_with_data("<html>", content_type="text/html")
    httpserver.expect_request("/fhir/Patient/9").respond_with_json({}, status=404)
    out = client.complete(base, None, {"a": "A", "b": "B", "c": "C", "p": "Patient/9"}, {})
    assert out["a"].status == "unavailable" and "500" in out["a"].reason
    assert out["b"].status == "unavailable" and "OperationOutcome" in out["b"].reason
    assert out["c"].status == "unavailable" and "JSON" in out["c"].reason
    assert out["p"].status == "empty"


@pytest.fixture
def threaded_server():
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


def test_fetches_run_in_parallel_within_the_budget(threaded_server):
    httpserver = threaded_server

    def slow(_request):
        time.sleep(0.3)
        return Response(
            '{"resourceType": "Bundle", "type": "searchset"}', content_type="application/fhir+json"
        )

    for key in "abcdefgh":
        httpserver.expect_request(f"/fhir/{key}").respond_with_handler(slow)
    client = FhirClient(FetchSettings(timeout=2.0))
    start = time.perf_counter()
    out = client.complete(httpserver.url_for("/fhir"), None, {k: k for k in "abcdefgh"}, {})
    elapsed = time.perf_counter() - start
    client.close()
    assert all(r.status == "fetched" for r in out.values())
    assert elapsed < 1.2  # eight 0.3 s fetches, not 2.4 s in a row


def test_time_budget_is_enforced(httpserver):
    def stuck(_request):
        time.sleep(1.5)
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/fhir/slow").respond_with_handler(stuck)
    client = FhirClient(FetchSettings(timeout=0.4))
    start = time.perf_counter()
    out = client.complete(httpserver.url_for("/fhir"), None, {"s": "slow"}, {})
    assert time.perf_counter() - start < 1.0
    assert out["s"].status == "unavailable"
    client.close()


def test_unreachable_server_is_unavailable_not_an_error(client):
    out = client.complete("http://127.0.0.1:9/fhir", None, {"c": "Condition"}, {})
    assert out["c"].status == "unavailable" and "unreachable" in out["c"].reason


def test_a_paged_result_is_continued_from_its_next_link(httpserver, client):
    base = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/Condition", query_string="page=2").respond_with_json(
        bundle({"resourceType": "Condition", "id": "b"})
    )
    sent = bundle({"resourceType": "Condition", "id": "a"}, next_url=f"{base}/Condition?page=2")
    out = client.complete(base, None, {}, {"c": interpret(sent, present=True)})
    assert [r["id"] for r in out["c"].resources] == ["a", "b"] and out["c"].complete


def test_key_result_availability():
    assert not KeyResult("unavailable").available
    assert KeyResult("empty").available
