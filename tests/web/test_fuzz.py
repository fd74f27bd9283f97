"""Fuzzing the HTTP surface: schemathesis against the service's own OpenAPI description, and
hypothesis mutating valid hook requests. The service must never answer 5xx, nor a non-JSON
body, nor take long. Both runs are bounded: about 1,200 schemathesis requests over the seven
operations and 300 mutated requests, some 20 s in all.

The app fuzzed has authentication off (the JWT is tested on its own in test_auth) and may
call only one FHIR server, a loopback mock holding the clean fixture's record, so no
generated ``fhirServer`` ever reaches the network.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.config import Settings
from service.tools.fixtures import load
from service.web.app import create_app
from tests.conftest import free_port
from tests.fhir_mock import serve_prefetch

SLOW = 2.0  # seconds; a request taking longer counts as a hang
FHIR_PORT = free_port()  # the mock FHIR server's; the app may call nothing else
APP = create_app(
    Settings(
        auth="off",
        registry=False,
        fhir_timeout=1.0,
        fhir_allowed=(f"http://127.0.0.1:{FHIR_PORT}",),
    )
)
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def fhir_url() -> Iterator[str]:
    """A loopback FHIR server holding the clean fixture's record."""
    server = HTTPServer(host="127.0.0.1", port=FHIR_PORT)
    server.start()
    clean, _ = load("clean-iv-ketamine-sign")
    token = clean["fhirAuthorization"]["access_token"]
    yield serve_prefetch(server, clean["prefetch"], token, [])
    server.clear()
    server.stop()


def test_the_description_is_valid_openapi_3_1():
    schema.validate()  # against the OpenAPI 3.1 meta-schema


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case):
    started = time.perf_counter()
    response = case.call()
    assert time.perf_counter() - started < SLOW
    # schema-valid is not enough to be answerable: a fhirServer off the allow-list is a 400,
    # a request without the patient's data a 412, so "positive data accepted" does not apply
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


# -- mutations of valid requests -----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ODD = st.sampled_from(
    [
        "x" * 70_000,
        "9" * 300,
        -1,
        1e308,
        float("nan"),
        [],
        {},
        "Patient/../../etc/passwd",
        "http://169.254.169.254/latest",
        "\u0000\ud7ff\U0001f600",
    ]
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (the root excluded)."""
    out = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


def _parent(body: Any, path: tuple) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


def mutate(body: dict, data: st.DataObject) -> None:
    """One random change at a random place: delete, replace, wrap deep, multiply, or add."""
    path = data.draw(st.sampled_from(paths(body)))
    parent, key = _parent(body, path), path[-1]
    action = data.draw(st.sampled_from(["delete", "replace", "odd", "deep", "multiply", "add"]))
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = data.draw(JSON)
    elif action == "odd":
        parent[key] = copy.deepcopy(data.draw(ODD))  # the samples themselves stay pristine
    elif action == "deep":
        value = parent[key]
        for _ in range(data.draw(st.integers(1, 150))):
            value = [value]
        parent[key] = value
    elif action == "multiply" and isinstance(parent[key], list):
        parent[key] = parent[key] * data.draw(st.integers(2, 300))
    elif action == "add" and isinstance(parent[key], dict):
        parent[key][data.draw(st.text(max_size=12))] = copy.deepcopy(data.draw(JSON | ODD))


@pytest.mark.parametrize(
    "fixture", ["clean-iv-ketamine-sign", "spravato-order-select", "p01-course-summary-fires"]
)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_requests_never_get_a_5xx(fhir_url, fixture, data):
    body, expected = load(fixture)
    if "fhirServer" in body:
        body["fhirServer"] = fhir_url  # keys deleted from prefetch are fetched from the mock
    for _ in range(data.draw(st.integers(1, 4))):
        if paths(body):
            mutate(body, data)
    started = time.perf_counter()
    response = APP.test_client().post(
        f"/cds-services/{expected['service']}",
        data=json.dumps(body),  # NaN, huge integers and all: the parser must cope
        content_type="application/json",
    )
    elapsed = time.perf_counter() - started
    assert response.status_code < 500, response.get_json()
    assert response.is_json and isinstance(response.get_json(), dict)
    assert elapsed < SLOW
