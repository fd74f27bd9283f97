"""End to end: a real gunicorn process on loopback, driven over HTTP."""

import copy

import pytest
import requests

from service.tools.fixtures import compare, load, names
from tests.fhir_mock import serve_prefetch

pytestmark = pytest.mark.e2e


def post(server, path, body, **kw):
    return requests.post(server.url + path, json=body, timeout=10, **kw)


def test_discovery_over_http(gunicorn):
    r = requests.get(gunicorn.url + "/cds-services", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert len(r.json()["services"]) == 3


@pytest.mark.parametrize("name", names())
def test_every_fixture_gives_its_expected_cards(gunicorn, httpserver, name):
    request, expected = load(name)
    if expected.get("fhir_data_from"):
        source, _ = load(expected["fhir_data_from"])
        seen: list = []
        request["fhirServer"] = serve_prefetch(
            httpserver, source["prefetch"], request["fhirAuthorization"]["access_token"], seen
        )
    r = post(gunicorn, f"/cds-services/{expected['service']}", request)
    assert r.status_code == 200, r.text
    assert compare(r.json(), expected) == []


def test_without_prefetch_the_same_cards_come_from_the_fhir_server(gunicorn, httpserver):
    with_prefetch, _ = load("clean-iv-ketamine-sign")
    without, _ = load("clean-iv-ketamine-sign-no-prefetch")
    seen: list = []
    token = without["fhirAuthorization"]["access_token"]
    without["fhirServer"] = serve_prefetch(httpserver, with_prefetch["prefetch"], token, seen)
    a = post(gunicorn, "/cds-services/ketamine-order-sign", with_prefetch).json()
    b = post(gunicorn, "/cds-services/ketamine-order-sign", without).json()

    def strip(response):
        out = copy.deepcopy(response)
        for card in out["cards"]:
            card.pop("uuid")
            for s in card.get("suggestions", ()):
                s.pop("uuid")
        return out

    assert strip(a) == strip(b)
    assert len(seen) == 8  # every prefetch key fetched once
    assert all(auth == f"Bearer {token}" for _, auth in seen)


def test_bad_input_over_http_is_a_json_4xx(gunicorn):
    url = gunicorn.url + "/cds-services/ketamine-order-sign"
    r = requests.post(
        url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = requests.post(
        url, data=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 413 and r.json()["error"] == "request_entity_too_large"
    r = requests.put(url, json={}, timeout=5)
    assert r.status_code == 405 and r.headers["Content-Type"] == "application/json"
    request, _ = load("clean-iv-ketamine-sign")
    del request["hookInstance"]
    r = post(gunicorn, "/cds-services/ketamine-order-sign", request)
    assert r.status_code == 400 and r.json()["field"] == "hookInstance"


def test_access_log_is_json_without_patient_data(gunicorn):
    request, _ = load("clean-iv-ketamine-sign")
    post(gunicorn, "/cds-services/ketamine-order-sign", request)
    logs = gunicorn.logs()
    assert '"rules":["R38"]' in logs
    for secret in ("Rivera", "MRN-", request["fhirAuthorization"]["access_token"]):
        assert secret not in logs
