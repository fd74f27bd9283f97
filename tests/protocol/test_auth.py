"""Caller JWT authentication (CDS Hooks 2.0 §9): each attack gets a 401 that does not say
why, while the log says why; valid ES384 and RS384 tokens pass. Keys are generated here and
served as a JWK Set by a real HTTP server on loopback; the spec's example key and token and
the sandbox's published key are checked too."""

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.utils import base64url_decode, base64url_encode
from pytest_httpserver import HTTPServer

import cds_hooks
import cds_hooks.auth
from cds_hooks.auth import (
    AuthenticationError,
    JwtAuthenticator,
    JwtPolicy,
    TrustedIssuer,
    load_jwks,
    parse_trusted_issuers,
)
from cds_hooks.replay import MemoryReplayCache
from service.config import ConfigError, Settings
from service.tools.fixtures import load
from service.web.app import create_app
from tests.auth_helpers import (
    ISSUER,
    PUBLIC_URL,
    JwksServer,
    SigningKey,
    bearer,
    es384,
    rs384,
)
from tests.clients.sandbox import SANDBOX, SANDBOX_JKU, SANDBOX_KID, sandbox_token
from tests.conftest import CONFORMANCE

SIGN = "/cds-services/ketamine-order-sign"
SIGN_AUD = PUBLIC_URL + SIGN
TENANT_ISSUER = "https://tenant-ehr.example.org"
ES_KEY = es384()
RS_KEY = rs384()


@pytest.fixture(scope="module")
def jwks():
    server = HTTPServer()
    server.start()
    yield JwksServer(server, keys=[ES_KEY.jwk(), RS_KEY.jwk()])
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def alt_jwks(jwks):
    """A second JWK Set on the same server, only reachable through an allow-listed jku."""
    return JwksServer(jwks.server, path="/alt-jwks.json")


@pytest.fixture(scope="module")
def client(jwks, alt_jwks):
    issuers = {
        ISSUER: {"jwks_url": jwks.url, "jku": [alt_jwks.url]},
        TENANT_ISSUER: {"jwks_url": jwks.url, "tenants": ["tenant-a"]},
    }
    settings = Settings(
        auth="jwt",
        trusted_issuers=parse_trusted_issuers(json.dumps(issuers)),
        public_url=PUBLIC_URL,
        registry=False,
    )
    return create_app(settings).test_client()


def call(client, token: str | None, path: str = SIGN, body=None):
    headers = bearer(token) if token is not None else {}
    if path == "/cds-services":
        return client.get(path, headers=headers)
    body = body if body is not None else load("clean-iv-ketamine-sign")[0]
    return client.post(
        path, data=orjson.dumps(body), content_type="application/json", headers=headers
    )


def refused(response) -> bool:
    return (
        response.status_code == 401
        and response.get_json()
        == {"error": "unauthorized", "message": "the caller could not be authenticated"}
        and response.headers["WWW-Authenticate"] == "Bearer"
    )


# -- valid tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [ES_KEY, RS_KEY], ids=["ES384", "RS384"])
def test_valid_tokens_pass_on_every_route(client, key):
    assert call(client, key.token(PUBLIC_URL + "/cds-services"), "/cds-services").status_code == 200
    r = call(client, key.token(SIGN_AUD))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["cards"]
    feedback = json.loads((CONFORMANCE / "21-example-suggestion-accepted.json").read_text())
    r = call(client, key.token(SIGN_AUD + "/feedback"), SIGN + "/feedback", feedback)
    assert r.status_code == 200


def test_aud_may_be_a_list(client):
    assert call(client, ES_KEY.token(["https://other.example", SIGN_AUD])).status_code == 200


def test_access_log_names_the_issuer_not_the_token(client, caplog):
    token = ES_KEY.token(SIGN_AUD)
    with caplog.at_level(logging.INFO):
        call(client, token)
    access = [r for r in caplog.records if r.name == "cds_hooks.http"][-1]
    assert access.fields["iss"] == ISSUER and access.fields["status"] == 200
    assert token not in caplog.text


# -- attacks -------------------------------------------------------------------------------


def _hs256_with_the_public_key() -> str:
    """The classic algorithm-confusion forgery: HMAC-SHA256 keyed with the public key's PEM
    (built by hand: PyJWT itself refuses to sign it)."""
    pem = ES_KEY.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": ES_KEY.kid}
    claims = {"iss": ISSUER, "aud": SIGN_AUD, "iat": now, "exp": now + 300, "jti": "hs"}
    signing_input = b".".join(base64url_encode(orjson.dumps(part)) for part in (header, claims))
    signature = base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def _alg_none() -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SIGN_AUD, "iat": now, "exp": now + 300, "jti": "none"}
    return jwt.encode(claims, None, algorithm="none", headers={"kid": ES_KEY.kid})


def _resigned_by_another_key() -> str:
    return es384(kid=ES_KEY.kid).token(SIGN_AUD)


def _tampered() -> str:
    header, payload, signature = ES_KEY.token(SIGN_AUD).split(".")
    claims = orjson.loads(base64url_decode(payload))
    claims["tenant"] = "someone-else"
    forged = base64url_encode(orjson.dumps(claims)).decode()
    return f"{header}.{forged}.{signature}"


ATTACKS = {
    "unsigned (no Authorization header)": (lambda: None, "no bearer token"),
    "not a JWT": (lambda: "not-a-jwt", "malformed token"),
    "wrongly signed (another key, same kid)": (_resigned_by_another_key, "signature"),
    "payload tampered after signing": (_tampered, "signature"),
    "expired": (lambda: ES_KEY.token(SIGN_AUD, age=400, lifetime=300), "expired"),
    "wrong audience (discovery token on a service)": (
        lambda: ES_KEY.token(PUBLIC_URL + "/cds-services"),
        "aud",
    ),
    "wrong audience (another host)": (
        lambda: ES_KEY.token("https://evil.example/cds-services/ketamine-order-sign"),
        "aud",
    ),
    "HS256 keyed with the public key": (_hs256_with_the_public_key, "HS256"),
    "alg none": (_alg_none, "none"),
    "untrusted issuer": (lambda: ES_KEY.token(SIGN_AUD, iss="https://evil.example"), "issuer"),
    "unknown kid": (lambda: es384(kid="nobody").token(SIGN_AUD), "kid"),
    "no kid": (lambda: ES_KEY.token(SIGN_AUD, headers={"kid": None}), "kid"),
    "iat in the future": (lambda: ES_KEY.token(SIGN_AUD, age=-600), "future"),
    "iat older than the bound": (lambda: ES_KEY.token(SIGN_AUD, age=7200, lifetime=9000), "age"),
    "no exp": (lambda: ES_KEY.token(SIGN_AUD, exp=None), "exp missing"),
    "no jti": (lambda: ES_KEY.token(SIGN_AUD, jti=None), "jti missing"),
    "key from a jku not on the allow-list": (
        lambda: es384(kid="attacker").token(
            SIGN_AUD, headers={"jku": "https://evil.example/jwks.json"}
        ),
        "jku",
    ),
    "key on record, jku not on the allow-list, signed by another key": (
        lambda: es384(kid=ES_KEY.kid).token(
            SIGN_AUD, headers={"jku": "https://evil.example/jwks.json"}
        ),
        "signature",
    ),
    "tenant not allowed": (
        lambda: ES_KEY.token(SIGN_AUD, iss=TENANT_ISSUER, tenant="tenant-b"),
        "tenant",
    ),
    "typ is not JWT": (lambda: ES_KEY.token(SIGN_AUD, headers={"typ": "at+jwt"}), "typ"),
    "ES384 token naming an RSA key": (
        lambda: SigningKey(RS_KEY.kid, "ES384", ES_KEY.private).token(SIGN_AUD),
        "algorithm",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_is_a_401_that_does_not_say_why(client, caplog, attack):
    make, reason = ATTACKS[attack]
    token = make()
    with caplog.at_level(logging.WARNING, logger="cds_hooks.auth"):
        r = call(client, token)
    assert refused(r), r.get_json()
    logged = [rec for rec in caplog.records if rec.name == "cds_hooks.auth"]
    assert len(logged) == 1 and reason in logged[0].reason, logged[0].reason
    if token:
        assert token not in caplog.text


def test_a_replayed_token_is_refused(client, caplog):
    token = ES_KEY.token(SIGN_AUD)
    assert call(client, token).status_code == 200
    with caplog.at_level(logging.WARNING, logger="cds_hooks.auth"):
        assert refused(call(client, token))
    assert "jti replayed" in caplog.records[-1].reason


def test_a_refused_token_does_not_burn_its_jti(client):
    """The jti is recorded only once every other check passed."""
    good = ES_KEY.token(SIGN_AUD, jti="burn-test")
    bad = ES_KEY.token(PUBLIC_URL + "/cds-services", jti="burn-test")
    assert refused(call(client, bad))
    assert call(client, good).status_code == 200


def test_allowed_tenant_passes(client):
    token = ES_KEY.token(SIGN_AUD, iss=TENANT_ISSUER, tenant="tenant-a")
    assert call(client, token).status_code == 200


def test_allow_listed_jku_is_honoured(client, alt_jwks):
    other = es384(kid="alt-key")
    alt_jwks.keys = [other.jwk()]
    token = other.token(SIGN_AUD, headers={"jku": alt_jwks.url})
    assert call(client, token).status_code == 200
    # the same key without the jku is looked up in the issuer's own set, and is not there
    assert refused(call(client, other.token(SIGN_AUD)))


def test_a_kid_on_record_is_verified_with_the_key_on_record_whatever_the_jku(
    client, jwks, alt_jwks
):
    """A jku is a hint where to find an unknown kid: a kid already on record needs no fetch,
    whether the jku is allow-listed or not."""
    before = jwks.fetches, alt_jwks.fetches
    assert call(client, ES_KEY.token(SIGN_AUD, headers={"jku": alt_jwks.url})).status_code == 200
    foreign = {"jku": "https://evil.example/jwks.json"}
    assert call(client, ES_KEY.token(SIGN_AUD, headers=foreign)).status_code == 200
    assert (jwks.fetches, alt_jwks.fetches) == before


def test_preflight_needs_no_token(client):
    r = client.options(SIGN, headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and "POST" in r.headers["Allow"]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_short_rsa_keys_are_refused(jwks):
    weak = rs384(kid="weak", bits=1024)
    auth = JwtAuthenticator([TrustedIssuer(ISSUER, jwks_url=jwks.url)])
    jwks.keys.append(weak.jwk())
    try:
        with pytest.raises(AuthenticationError) as info:
            auth.verify(weak.token(SIGN_AUD), SIGN_AUD)
        assert info.value.reason == "key too weak"
    finally:
        jwks.keys.remove(weak.jwk())


# -- the JWK Set cache ---------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_unknown_kid_triggers_one_refresh_and_no_more(jwks):
    clock = Clock()
    auth = JwtAuthenticator(
        [TrustedIssuer(ISSUER, jwks_url=jwks.url)],
        JwtPolicy(jwks_ttl=600, jwks_cooldown=10),
        clock=clock,
    )
    before = jwks.fetches
    auth.verify(ES_KEY.token(SIGN_AUD), SIGN_AUD)
    auth.verify(RS_KEY.token(SIGN_AUD), SIGN_AUD)
    assert jwks.fetches == before + 1  # one fetch, then the cache
    rotated = es384(kid="rotated")
    jwks.keys.append(rotated.jwk())
    try:
        clock.now += 11
        auth.verify(rotated.token(SIGN_AUD), SIGN_AUD)  # unknown kid: one refetch finds it
        assert jwks.fetches == before + 2
        stranger = es384(kid="made-up")
        for _ in range(5):  # made-up kids within the cooldown: no more fetches
            with pytest.raises(AuthenticationError):
                auth.verify(stranger.token(SIGN_AUD), SIGN_AUD)
        assert jwks.fetches == before + 2
        clock.now += 11
        with pytest.raises(AuthenticationError):
            auth.verify(stranger.token(SIGN_AUD), SIGN_AUD)
        assert jwks.fetches == before + 3  # after the cooldown: exactly one more
        clock.now += 600
        auth.verify(ES_KEY.token(SIGN_AUD, lifetime=3600), SIGN_AUD)
        assert jwks.fetches == before + 4  # the TTL ran out
    finally:
        jwks.keys.remove(rotated.jwk())


def test_keys_survive_a_failed_refetch(jwks):
    clock = Clock()
    server_down = {"flag": False}

    def loader(location):
        if server_down["flag"]:
            raise OSError("down")
        return load_jwks(location)

    auth = JwtAuthenticator(
        [TrustedIssuer(ISSUER, jwks_url=jwks.url)],
        JwtPolicy(jwks_ttl=60),
        clock=clock,
        loader=loader,
    )
    auth.verify(ES_KEY.token(SIGN_AUD), SIGN_AUD)
    server_down["flag"] = True
    clock.now += 61
    auth.verify(ES_KEY.token(SIGN_AUD), SIGN_AUD)


def test_replay_cache_forgets_after_expiry():
    clock = Clock()
    cache = MemoryReplayCache(clock)
    assert cache.first_use(ISSUER, "a", clock.now + 10)
    assert not cache.first_use(ISSUER, "a", clock.now + 10)
    assert cache.first_use("https://other.example", "a", clock.now + 10)  # per issuer
    clock.now += 11
    assert cache.first_use(ISSUER, "a", clock.now + 10)
    assert len(cache) == 1  # the expired entries were dropped


# -- the spec's vectors and the sandbox's key ----------------------------------------------


SPEC_TOKEN = (CONFORMANCE / "27b-example-jwt-authorization-header-value.txt").read_text().strip()
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"
SPEC_AUD = "https://cds.example.org/cds-services/some-service"


def spec_authenticator(now: float) -> JwtAuthenticator:
    """Trusts the spec's issuer; its jku is allow-listed and 'fetched' from the spec file."""
    spec_jwks = json.loads((CONFORMANCE / "26-jwks-public.json").read_text())
    return JwtAuthenticator(
        [TrustedIssuer("https://fhir-ehr.example.com/", jku=frozenset({SPEC_JKU}))],
        JwtPolicy(max_age=10**9),  # the example was issued 3.5 years before it expired
        clock=lambda: now,
        loader=lambda location: spec_jwks if location == SPEC_JKU else {},
    )


def test_spec_example_token_verifies_with_the_spec_key_at_its_time():
    caller = spec_authenticator(now=1422568000).verify(SPEC_TOKEN, SPEC_AUD)
    assert caller.issuer == "https://fhir-ehr.example.com/"
    assert caller.tenant == "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"


def test_spec_example_token_is_expired_today_and_bound_to_its_audience():
    with pytest.raises(AuthenticationError) as info:
        spec_authenticator(now=time.time()).verify(SPEC_TOKEN, SPEC_AUD)
    assert info.value.reason == "expired"
    with pytest.raises(AuthenticationError) as info:
        spec_authenticator(now=1422568000).verify(SPEC_TOKEN, SPEC_AUD + "-other")
    assert info.value.reason == "aud is not the invoked URL"


def test_spec_private_key_signs_tokens_we_accept():
    private = json.loads((CONFORMANCE / "27-jwk-private-example-from-spec.json").read_text())
    key = jwt.PyJWK(private).key
    now = time.time()
    token = jwt.encode(
        {
            "iss": "https://fhir-ehr.example.com/",
            "aud": SPEC_AUD,
            "iat": int(now),
            "exp": int(now) + 60,
            "jti": "spec-key",
        },
        key,
        algorithm="ES384",
        headers={"kid": "example-kid", "jku": SPEC_JKU},
    )
    assert spec_authenticator(now).verify(token, SPEC_AUD).jti == "spec-key"


def test_sandbox_published_key_is_usable_and_not_forgeable(jwks):
    sandbox = json.loads((CONFORMANCE / "sandbox" / "jwks.json").read_text())
    served = JwksServer(jwks.server, path="/sandbox-jwks.json", keys=sandbox["keys"])
    kid = sandbox["keys"][0]["kid"]
    auth = JwtAuthenticator([TrustedIssuer("https://sandbox.cds-hooks.org", jwks_url=served.url)])
    assert auth.key_sets[served.url].key(kid, "ES384").algorithm_name == "ES384"
    forged = es384(kid=kid).token(SIGN_AUD, iss="https://sandbox.cds-hooks.org")
    with pytest.raises(AuthenticationError) as info:
        auth.verify(forged, SIGN_AUD)
    assert info.value.reason == "signature does not verify"


# -- the Sandbox's token, offline -----------------------------------------------------------

SANDBOX_PRESET = Path(cds_hooks.__file__).parent / "presets" / "cds-hooks-sandbox.jwks.json"


def _no_network(location: str):
    """A JWK Set loader for a host with no route out: files only."""
    if "://" in location:
        raise AssertionError(f"fetched {location} over the network")
    return load_jwks(location)


@pytest.fixture
def offline(monkeypatch):
    """Any HTTP fetch of a JWK Set fails the test."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"fetched {url} over the network")

    monkeypatch.setattr(cds_hooks.auth.requests, "get", refuse)


@pytest.fixture
def sandbox_app(tmp_path, offline):
    """The Sandbox's issuer pinned to a test key's JWK Set file, in the plain form."""
    key = es384(kid=SANDBOX_KID)
    path = tmp_path / "sandbox-jwks.json"
    path.write_text(json.dumps({"keys": [key.jwk()]}))
    env = {"KCDS_TRUSTED_ISSUERS": json.dumps({SANDBOX: str(path)}), "KCDS_REGISTRY": "off"}
    return key, create_app(Settings.from_env(env | {"KCDS_PUBLIC_URL": PUBLIC_URL}))


def test_a_sandbox_shaped_token_passes_offline_on_every_route(sandbox_app):
    key, app = sandbox_app
    client = app.test_client()
    discovery = PUBLIC_URL + "/cds-services"
    assert call(client, sandbox_token(key, discovery), "/cds-services").status_code == 200
    r = call(client, sandbox_token(key, SIGN_AUD))
    assert r.status_code == 200 and r.get_json()["cards"], r.get_json()
    feedback = json.loads((CONFORMANCE / "21-example-suggestion-accepted.json").read_text())
    token = sandbox_token(key, SIGN_AUD + "/feedback")
    assert call(client, token, SIGN + "/feedback", feedback).status_code == 200


def test_foreign_jku_tokens_still_fail_offline(sandbox_app, caplog):
    """A key the issuer has not on record is refused, from the Sandbox's own jku (not
    allow-listed here) as from anyone else's, and nothing is fetched."""
    _, app = sandbox_app
    client = app.test_client()
    stranger = es384(kid="not-on-record")
    for jku in (SANDBOX_JKU, "https://evil.example/jwks.json"):
        with caplog.at_level(logging.WARNING, logger="cds_hooks.auth"):
            assert refused(call(client, sandbox_token(stranger, SIGN_AUD, jku)))
        assert caplog.records[-1].reason == "jku not on the issuer's allow-list"
    forged = sandbox_token(es384(kid=SANDBOX_KID), SIGN_AUD)  # the pinned kid, another key
    assert refused(call(client, forged))


def test_an_allow_listed_jku_is_fetched_only_for_a_kid_not_on_record(tmp_path, jwks):
    pinned, rotated = es384(kid=SANDBOX_KID), es384(kid="rotated-in")
    path = tmp_path / "pinned.json"
    path.write_text(json.dumps({"keys": [pinned.jwk()]}))
    served = JwksServer(jwks.server, path="/rotating-jwks.json", keys=[rotated.jwk()])
    config = {SANDBOX: {"jwks_file": str(path), "jku": [served.url]}}
    auth = JwtAuthenticator(parse_trusted_issuers(json.dumps(config)))
    auth.verify(sandbox_token(pinned, SIGN_AUD, served.url), SIGN_AUD)
    assert served.fetches == 0
    auth.verify(sandbox_token(rotated, SIGN_AUD, served.url), SIGN_AUD)
    assert served.fetches == 1
    with pytest.raises(AuthenticationError) as info:
        auth.verify(sandbox_token(es384(kid="nobody"), SIGN_AUD, served.url), SIGN_AUD)
    assert info.value.reason == "kid not in the issuer's JWK Set"


def test_the_sandbox_preset_is_its_published_key(offline):
    """The shipped preset is the Sandbox's published JWK Set, usable as a jwks_file."""
    published = json.loads((CONFORMANCE / "sandbox" / "jwks.json").read_text())
    assert json.loads(SANDBOX_PRESET.read_text()) == published
    (issuer,) = parse_trusted_issuers(json.dumps({SANDBOX: str(SANDBOX_PRESET)}))
    auth = JwtAuthenticator([issuer])
    assert auth.key_sets[str(SANDBOX_PRESET)].key(SANDBOX_KID, "ES384").algorithm_name == "ES384"


# -- configuration -------------------------------------------------------------------------


def test_jwt_is_the_default_and_needs_trusted_issuers():
    settings = Settings.from_env({"KCDS_REGISTRY": "off"})
    assert settings.auth == "jwt"
    with pytest.raises(ConfigError, match="KCDS_TRUSTED_ISSUERS"):
        create_app(settings)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ('["https://a"]', "JSON object"),
        ('{"https://a": {}}', "jwks_url, jwks_file or jwks"),
        ('{"https://a": {"jwks_url": "http://a.example/jwks"}}', "https URL"),
        ('{"https://a": {"jwks_url": "https://a/j", "jwks_file": "x"}}', "jwks_url, jwks_file"),
        ('{"https://a": "http://a.example/jwks"}', "https URL"),
        ('{"https://a": ""}', "URL or file path, or an object"),
        ('{"https://a": ["https://a/j"]}', "URL or file path, or an object"),
        ('{"https://a": {"jwks": {"keys": "x"}}}', "jwks is not a JWK Set"),
        ('{"https://a": {"jwks": {"keys": [{"kty": "oct", "kid": "k"}]}}}', "no EC or RSA"),
        ('{"https://a": {"jwks_url": "https://a/j", "tenant": ["x"]}}', "only"),
        ('{"https://a": {"jwks_url": "https://a/j", "tenants": "x"}}', "list of strings"),
    ],
)
def test_bad_trusted_issuers_are_start_up_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"KCDS_TRUSTED_ISSUERS": raw})


def test_both_forms_of_trusted_issuers(tmp_path):
    """The plain form maps an issuer to where its JWK Set is (URL or file); the object form
    also takes the JWK Set inline."""
    plain = parse_trusted_issuers(
        json.dumps({"https://a": "https://a.example/jwks.json", "https://b": "/etc/kcds/b.json"})
    )
    assert plain == (
        TrustedIssuer("https://a", jwks_url="https://a.example/jwks.json"),
        TrustedIssuer("https://b", jwks_file="/etc/kcds/b.json"),
    )
    inline = {"keys": [ES_KEY.jwk()]}
    (issuer,) = parse_trusted_issuers(json.dumps({ISSUER: {"jwks": inline, "tenants": ["t"]}}))
    assert issuer.jwks == inline and issuer.tenants == {"t"}
    auth = JwtAuthenticator([issuer], loader=_no_network)
    assert auth.verify(ES_KEY.token(SIGN_AUD, tenant="t"), SIGN_AUD).tenant == "t"


def test_a_missing_jwks_file_is_a_start_up_error(tmp_path):
    raw = json.dumps({ISSUER: {"jwks_file": str(tmp_path / "missing.json")}})
    with pytest.raises(ConfigError, match="jwks_file"):
        create_app(Settings.from_env({"KCDS_TRUSTED_ISSUERS": raw, "KCDS_REGISTRY": "off"}))


def test_jwks_file_configuration_works(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ES_KEY.jwk()]}))
    raw = json.dumps({ISSUER: {"jwks_file": str(path)}})
    app = create_app(Settings.from_env({"KCDS_TRUSTED_ISSUERS": raw, "KCDS_REGISTRY": "off"}))
    r = app.test_client().get(
        "/cds-services", headers=bearer(ES_KEY.token("http://localhost/cds-services"))
    )
    assert r.status_code == 200  # no KCDS_PUBLIC_URL: aud is the request's own URL


def test_auth_off_logs_a_loud_warning(capsys):
    create_app(Settings(auth="off", registry=False))
    assert "KCDS_AUTH=off: callers are NOT authenticated" in capsys.readouterr().err
