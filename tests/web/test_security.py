"""Hardening: CORS, the fhirServer allow-list and what is sent to it, input limits, the
OpenAPI description, and a log scan of a full fixture run through gunicorn with auth on."""

import json
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
import requests
from jsonschema import Draft202012Validator
from pytest_httpserver import HTTPServer
from werkzeug import Response

from cds_hooks.fhir import AllowedServers, FetchSettings, FhirClient
from cds_hooks.validation import InputLimits
from service.config import ConfigError, Settings
from service.tools.fixtures import compare, load, names
from service.web.app import create_app
from tests.auth_helpers import ISSUER, JwksServer, bearer, es384
from tests.conftest import CONFORMANCE, start_gunicorn, stop
from tests.fhir_mock import serve_prefetch

SIGN = "/cds-services/ketamine-order-sign"
SANDBOX = "https://sandbox.cds-hooks.org"
KEY = es384()


def post(client, path, body, **kw):
    return client.post(path, data=orjson.dumps(body), content_type="application/json", **kw)


def clean_request():
    return load("clean-iv-ketamine-sign")[0]


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [KEY.jwk()]}))
    return path


def jwt_app(jwks_file, **settings):
    issuers = json.dumps({ISSUER: {"jwks_file": str(jwks_file)}})
    env = {"KCDS_TRUSTED_ISSUERS": issuers, "KCDS_REGISTRY": "off"}
    return create_app(replace(Settings.from_env(env), **settings))


# -- CORS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_client(jwks_file):
    return jwt_app(jwks_file, cors_origins=(SANDBOX,), public_url="https://cds.test").test_client()


def preflight(client, path, origin, method="POST"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


@pytest.mark.parametrize(
    "path, method",
    [("/cds-services", "GET"), (SIGN, "POST"), (SIGN + "/feedback", "POST")],
)
def test_preflight_from_an_allowed_origin_works_without_a_token(cors_client, path, method):
    r = preflight(cors_client, path, SANDBOX, method)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == SANDBOX
    assert method in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert "Access-Control-Allow-Credentials" not in r.headers
    assert "Origin" in r.headers["Vary"]


def test_preflight_from_another_origin_fails(cors_client):
    r = preflight(cors_client, SIGN, "https://evil.example")
    assert r.status_code == 403 and r.get_json()["error"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in r.headers


def test_actual_requests_expose_answers_to_allowed_origins_only(cors_client):
    token = KEY.token("https://cds.test" + SIGN)
    r = post(cors_client, SIGN, clean_request(), headers={"Origin": SANDBOX, **bearer(token)})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == SANDBOX
    r = post(cors_client, SIGN, clean_request(), headers={"Origin": SANDBOX})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == SANDBOX
    r = post(cors_client, SIGN, clean_request(), headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_wildcard_origin_never_allows_credentials(jwks_file):
    client = jwt_app(jwks_file, cors_origins=("*",)).test_client()
    r = preflight(client, SIGN, "https://anywhere.example")
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_no_cors_by_default(client):
    assert preflight(client, SIGN, SANDBOX).status_code == 403


@pytest.mark.parametrize("raw", ["*, https://a.example", "https://a.example/path", "a.example"])
def test_bad_cors_origins_are_start_up_errors(raw):
    with pytest.raises(ConfigError, match="KCDS_CORS_ORIGINS"):
        Settings.from_env({"KCDS_CORS_ORIGINS": raw})


# -- fhirServer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://fhir.example.org/r4", True),
        ("https://fhir.example.org:8443/r4/", True),
        ("https://fhir.example.org/r4/tenant", True),
        ("https://fhir.example.org/r40", False),
        ("https://fhir.example.org/", False),
        ("https://fhir.example.org.evil.example/r4", False),
        ("https://fhir.example.org@evil.example/r4", False),
        ("https://evil.example/r4?fhir.example.org/r4", False),
        ("http://fhir.example.org/r4", False),
        ("http://127.0.0.1:8080/fhir", True),
        ("http://127.0.0.1:8081/fhir", False),
        ("ftp://fhir.example.org/r4", False),
        ("not a url", False),
    ],
)
def test_allowed_servers_compare_scheme_host_port_and_path(url, allowed):
    rules = AllowedServers(("https://fhir.example.org/r4", "http://127.0.0.1:8080"))
    assert rules.allows(url) is allowed


def test_default_allow_list_depends_on_auth():
    assert Settings(auth="jwt").fhir_servers() == ("https://",)
    assert "http://127.0.0.1" in Settings(auth="off").fhir_servers()
    assert AllowedServers(("https://",)).allows("https://any.example/fhir")
    assert Settings.from_env({"KCDS_FHIR_ALLOWED": "https://a.example, https://b"}).fhir_allowed
    with pytest.raises(ConfigError, match="KCDS_FHIR_ALLOWED"):
        Settings.from_env({"KCDS_FHIR_ALLOWED": "https://user:pw@a.example"})


def test_a_disallowed_fhir_server_is_a_400_naming_it(client, jwks_file):
    body = clean_request()
    body["fhirServer"] = "http://fhir.example.org/r4"  # plain http, not loopback
    r = post(client, SIGN, body)
    assert r.status_code == 400 and r.get_json()["field"] == "fhirServer"
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # loopback http: only with auth off
    assert post(client, SIGN, body).status_code == 200
    app = jwt_app(jwks_file, public_url="https://cds.test").test_client()
    r = post(app, SIGN, body, headers=bearer(KEY.token("https://cds.test" + SIGN)))
    assert r.status_code == 400 and r.get_json()["field"] == "fhirServer"


@pytest.fixture
def fetcher() -> Iterator[FhirClient]:
    client = FhirClient(
        FetchSettings(timeout=2.0, max_bytes=4096, limits=InputLimits(max_entries=3))
    )
    yield client
    client.close()


def test_redirects_are_never_followed_so_the_token_stays_put(httpserver, fetcher):
    other = HTTPServer()
    other.start()
    try:
        other.expect_request("/steal").respond_with_data("{}")
        httpserver.expect_request("/fhir/Condition").respond_with_data(
            "", status=302, headers={"Location": other.url_for("/steal")}
        )
        out = fetcher.complete(httpserver.url_for("/fhir"), "tok", {"c": "Condition"}, {})
        assert out["c"].status == "unavailable" and "302" in out["c"].reason, out["c"].reason
        assert other.log == []
    finally:
        other.clear()
        other.stop()


def test_responses_over_the_size_cap_are_dropped(httpserver, fetcher):
    big = {"resourceType": "Patient", "id": "x", "note": "y" * 8000}
    httpserver.expect_request("/fhir/Patient/1").respond_with_json(big)

    def streamed(_request):
        return Response(iter([orjson.dumps(big)]), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/Patient/2").respond_with_handler(streamed)
    out = fetcher.complete(
        httpserver.url_for("/fhir"), None, {"a": "Patient/1", "b": "Patient/2"}, {}
    )
    for key in "ab":
        assert out[key].status == "unavailable" and "limit" in out[key].reason


def test_fetched_data_is_held_to_the_input_limits(httpserver, fetcher):
    deep: dict = {"resourceType": "Observation"}
    node = deep
    for _ in range(80):
        node["extension"] = [{}]
        node = node["extension"][0]
    entries = [{"resource": {"resourceType": "Condition", "id": str(i)}} for i in range(5)]
    httpserver.expect_request("/fhir/Observation").respond_with_data(
        orjson.dumps(deep), content_type="application/fhir+json"
    )
    httpserver.expect_request("/fhir/Condition").respond_with_json(
        {"resourceType": "Bundle", "entry": entries}
    )
    out = fetcher.complete(
        httpserver.url_for("/fhir"), None, {"o": "Observation", "c": "Condition"}, {}
    )
    assert out["o"].status == "unavailable" and "nested deeper" in out["o"].reason
    assert len(out["c"].resources) == 3 and not out["c"].complete


# -- input limits --------------------------------------------------------------------------


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": [value]}
    return value


def _condition(**fields):
    return {"resource": {"resourceType": "Condition", "id": "c-limit", **fields}}


LIMITS = {
    "deep extension": (
        lambda b: b.__setitem__("extension", nested(40)),
        "extension.a[0].a[0]",
    ),
    "long free text": (
        lambda b: b["prefetch"]["conditions"]["entry"].append(
            _condition(code={"text": "x" * 70000})
        ),
        "prefetch.conditions.entry[",
    ),
    "long code": (
        lambda b: b["prefetch"]["conditions"]["entry"].append(
            _condition(code={"coding": [{"system": "http://snomed.info/sct", "code": "1" * 300}]})
        ),
        "].resource.code.coding[0].code",
    ),
    "too many resources in one key": (
        lambda b: b["prefetch"]["observations"].__setitem__(
            "entry", [{"resource": {"resourceType": "Observation"}}] * 5001
        ),
        "prefetch.observations.entry",
    ),
    "too many draft orders": (
        lambda b: b["context"]["draftOrders"].__setitem__(
            "entry", [{"resource": {"resourceType": "MedicationRequest"}}] * 5001
        ),
        "context.draftOrders.entry",
    ),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_each_limit_is_a_400_naming_the_field(client, case):
    mutate, field = LIMITS[case]
    body = clean_request()
    mutate(body)
    r = post(client, SIGN, body)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()
    assert error["error"] == "limit_exceeded" and field in error["field"]
    assert error["field"] in error["message"]


def test_json_deeper_than_the_parser_allows_is_a_400(client):
    raw = b'{"hook": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    r = client.post(SIGN, data=raw, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["field"] == "body"


def test_attachments_are_exempt_from_the_string_limit(client):
    body = clean_request()
    body["prefetch"]["patient"]["photo"] = [{"contentType": "image/png", "data": "A" * 100_000}]
    assert post(client, SIGN, body).status_code == 200


def test_feedback_is_limited_too(client):
    example = CONFORMANCE / "22-example-overridden-guidance-without-overridereason.json"
    item = json.loads(example.read_text())["feedback"][0]
    r = post(client, SIGN + "/feedback", {"feedback": [item] * 101})
    assert r.status_code == 400 and r.get_json()["field"] == "feedback"
    assert len(r.get_json()["message"]) < 100
    r = post(client, SIGN + "/feedback", {"feedback": [item], "extension": nested(70)})
    assert r.status_code == 400 and r.get_json()["error"] == "limit_exceeded"


# -- OpenAPI -------------------------------------------------------------------------------


def openapi_validator(doc: dict, component: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"components": doc["components"], "$ref": f"#/components/schemas/{component}"}
    )


def test_openapi_describes_the_real_endpoints(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"] == "3.1.0"
    discovery = client.get("/cds-services").get_json()
    expected = {"/cds-services"} | {
        p
        for s in discovery["services"]
        for p in (f"/cds-services/{s['id']}", f"/cds-services/{s['id']}/feedback")
    }
    assert set(doc["paths"]) == expected
    assert not list(openapi_validator(doc, "discovery").iter_errors(discovery))
    assert "security" not in doc  # auth is off in this app


def test_every_fixture_request_and_response_fits_the_openapi_schemas(client):
    doc = client.get("/openapi.json").get_json()
    for name in names():
        request, expected = load(name)
        operation = doc["paths"][f"/cds-services/{expected['service']}"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        validator = Draft202012Validator({"components": doc["components"], **schema})
        assert not list(validator.iter_errors(request)), name
    response = post(client, SIGN, clean_request()).get_json()
    assert not list(openapi_validator(doc, "response").iter_errors(response))


def test_openapi_declares_the_jwt_when_auth_is_on(cors_client):
    doc = cors_client.get("/openapi.json").get_json()  # no token needed
    assert doc["components"]["securitySchemes"]["cdsHooksJwt"]["bearerFormat"] == "JWT"
    assert "401" in doc["paths"][SIGN]["post"]["responses"]


# -- logs ----------------------------------------------------------------------------------


def identifying_strings(request: dict) -> set[str]:
    """Everything in a fixture request that could identify its patient, and its token."""
    found = {request["context"]["patientId"]}
    if "fhirAuthorization" in request:
        found.add(request["fhirAuthorization"]["access_token"])
    stack = [request]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        if node.get("resourceType") == "Patient":
            found.add(node.get("id"))
            found.add(node.get("birthDate"))
            for name in node.get("name") or ():
                found.update([name.get("family"), name.get("text"), *(name.get("given") or ())])
        for identifier in node.get("identifier") or ():
            if isinstance(identifier, dict):
                found.add(identifier.get("value"))
        for note in node.get("note") or ():
            if isinstance(note, dict):
                found.add(note.get("text"))
    return {s for s in found if isinstance(s, str) and s}


@pytest.mark.e2e
def test_full_fixture_run_with_auth_on_logs_no_patient_data_or_tokens(tmp_path):
    fhir, jwks_server = HTTPServer(), HTTPServer()
    fhir.start()
    jwks_server.start()
    jwks = JwksServer(jwks_server, keys=[KEY.jwk()])
    env = {
        "KCDS_AUTH": "jwt",
        "KCDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_url": jwks.url}}),
        "KCDS_FHIR_ALLOWED": "https://fhir.example.org/r4 http://localhost http://127.0.0.1",
        "KCDS_PSEUDONYM_KEY": "log-scan-test-key-" + "k" * 32,
        "KCDS_LOG_LEVEL": "DEBUG",
    }
    server = start_gunicorn(tmp_path, env, workers=1)
    secrets: set[str] = set()
    try:
        for name in names():
            request, expected = load(name)
            if expected.get("fhir_data_from"):
                source, _ = load(expected["fhir_data_from"])
                token = request["fhirAuthorization"]["access_token"]
                request["fhirServer"] = serve_prefetch(fhir, source["prefetch"], token, [])
                secrets |= identifying_strings(source)
            secrets |= identifying_strings(request)
            path = f"/cds-services/{expected['service']}"
            token = KEY.token(server.url + path)
            secrets.add(token)
            r = requests.post(server.url + path, json=request, headers=bearer(token), timeout=10)
            assert r.status_code == 200, (name, r.text)
            assert compare(r.json(), expected) == [], name
            # the same token again is a replay; a refusal must not log it either
            r = requests.post(server.url + path, json=request, headers=bearer(token), timeout=10)
            assert r.status_code == 401
        # refusals that echo data back to the caller must not log it
        request = clean_request()
        request["context"]["userId"] = (
            "Nurse/" + request["prefetch"]["patient"]["name"][0]["family"]
        )
        token = KEY.token(server.url + SIGN)
        secrets.add(token)
        r = requests.post(server.url + SIGN, json=request, headers=bearer(token), timeout=10)
        assert r.status_code == 400
        r = requests.post(server.url + SIGN, json=request, timeout=10)
        assert r.status_code == 401
    finally:
        stop(server)
        fhir.clear()
        fhir.stop()
        jwks_server.stop()
    logs = server.logs()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert len(lines) > 2 * len(names())
    records = [json.loads(line) for line in lines if line.startswith("{")]
    access = [r for r in records if r.get("status") == 200 and r.get("service_id")]
    assert len(access) == len(names())
    assert all(r["iss"] == ISSUER and "hook_instance" in r for r in access)
    assert any("rules" in r for r in access)
    leaked = sorted(s for s in secrets if s in logs)
    assert leaked == [], f"identifying strings or tokens in the logs: {leaked}"
    # the scan looked for names, MRNs, birth dates, patient ids and both kinds of token
    assert {"Rivera", "Alex", "MRN-kcds-clean", "kcds-clean", "fixture-access-token"} <= secrets
    assert sum(s.count(".") == 2 and s.startswith("eyJ") for s in secrets) > len(names())
    assert sum(len(s) == 10 and s[4] == "-" for s in secrets) > 10
