"""The SMART launch in process (Flask's test client as the browser, the loopback EHR over
real HTTP): the confidential client, the v1 scope fallback, a token the FHIR server stops
accepting, the configuration checks and the session store's expiry."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.config import ConfigError, Settings
from service.web.app import create_app
from service.web.smart import (
    ClientKey,
    Grant,
    Launch,
    Refusal,
    SessionStore,
    SmartSettings,
    SqlSessionStore,
)

from .conftest import PATIENT, SESSION_KEY
from .ehr import CLIENT_ID, Ehr

SECRET = "a-confidential-client-secret"


def app_for(ehr: Ehr, **extra: str):
    env = {
        "KCDS_AUTH": "off",
        "KCDS_REGISTRY": "off",
        "KCDS_PUBLIC_URL": "http://cds.test",
        "KCDS_SMART_CLIENT_ID": CLIENT_ID,
        "KCDS_SMART_ISSUERS": ehr.fhir,
        "KCDS_SESSION_KEY": SESSION_KEY,
        **extra,
    }
    return create_app(Settings.from_env(env)).test_client()


def launched(client, ehr: Ehr):
    """Launch, authorize at the EHR, come back: the answer of GET /smart/course."""
    start = client.get(
        "/smart/launch", query_string={"iss": ehr.fhir, "launch": ehr.launch(PATIENT)}
    )
    assert start.status_code == 302, start.get_data(as_text=True)
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    callback = urlsplit(back.headers["Location"])
    assert callback.path == "/smart/callback"
    done = client.get(f"{callback.path}?{callback.query}")
    assert done.status_code == 302, done.get_data(as_text=True)
    return client.get(done.headers["Location"])


def test_a_confidential_client_authenticates_with_its_secret(ehr):
    ehr.client_secret = SECRET
    view = launched(app_for(ehr, KCDS_SMART_CLIENT_SECRET=SECRET), ehr)
    assert view.status_code == 200
    assert "client_secret" not in ehr.token_requests[-1]  # in the Basic header, not the body


def test_a_public_client_cannot_pass_a_confidential_server(ehr):
    ehr.client_secret = SECRET
    client = app_for(ehr)
    start = client.get(
        "/smart/launch", query_string={"iss": ehr.fhir, "launch": ehr.launch(PATIENT)}
    )
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(back.headers["Location"])
    refused = client.get(f"{callback.path}?{callback.query}")
    assert refused.status_code == 403
    assert "invalid_client" in refused.get_data(as_text=True)


def private_key(tmp_path, kind: str) -> str:
    key = (
        ec.generate_private_key(ec.SECP384R1())
        if kind == "ES384"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_a_private_key_jwt_client_signs_its_assertion(ehr, tmp_path, alg):
    client = app_for(ehr, KCDS_SMART_PRIVATE_KEY=private_key(tmp_path, alg))
    jwks = client.get("/smart/jwks.json").get_json()
    assert [k["alg"] for k in jwks["keys"]] == [alg]
    assert not {"d", "p", "q"} & set(jwks["keys"][0])  # the public half only
    ehr.client_jwks = jwks  # registered with the EHR
    assert launched(client, ehr).status_code == 200
    assert ehr.token_requests[-1]["client_assertion_type"].endswith("jwt-bearer")


def test_an_assertion_signed_by_an_unregistered_key_is_refused(ehr, tmp_path):
    client = app_for(ehr, KCDS_SMART_PRIVATE_KEY=private_key(tmp_path, "ES384"))
    (tmp_path / "other").mkdir()
    other = app_for(ehr, KCDS_SMART_PRIVATE_KEY=private_key(tmp_path / "other", "ES384"))
    ehr.client_jwks = other.get("/smart/jwks.json").get_json()
    start = client.get(
        "/smart/launch", query_string={"iss": ehr.fhir, "launch": ehr.launch(PATIENT)}
    )
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(back.headers["Location"])
    refused = client.get(f"{callback.path}?{callback.query}")
    assert refused.status_code == 403 and "invalid_client" in refused.get_data(as_text=True)


def test_the_jwks_exists_only_for_a_private_key_client(ehr):
    assert app_for(ehr).get("/smart/jwks.json").status_code == 404


def test_a_server_without_smart_v2_is_asked_for_v1_scopes(ehr):
    ehr.permission_v2 = False
    assert launched(app_for(ehr), ehr).status_code == 200
    assert ehr.authorize_requests[-1]["scope"] == "launch openid fhirUser patient/*.read"


def test_configured_scopes_are_asked_as_they_are(ehr):
    scopes = "launch openid patient/Observation.rs patient/MedicationAdministration.rs"
    launched(app_for(ehr, KCDS_SMART_SCOPES=scopes), ehr)
    assert ehr.authorize_requests[-1]["scope"] == scopes


def test_a_token_the_fhir_server_no_longer_accepts_ends_the_view(ehr):
    client = app_for(ehr)
    assert launched(client, ehr).status_code == 200
    ehr.tokens.clear()  # revoked at the EHR
    again = client.get("/smart/course")
    assert again.status_code == 401
    assert "no longer accepts this session" in again.get_data(as_text=True)


def test_smart_is_off_without_a_client_id():
    client = create_app(Settings(auth="off", registry=False)).test_client()
    assert client.get("/smart/launch?iss=x&launch=y").status_code == 404


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KCDS_SMART_ISSUERS": ""}, "KCDS_SMART_ISSUERS"),
        ({"KCDS_SMART_ISSUERS": "ftp://ehr.example.org"}, "KCDS_SMART_ISSUERS"),
        ({"KCDS_SESSION_KEY": ""}, "KCDS_SESSION_KEY"),
        ({"KCDS_PUBLIC_URL": ""}, "KCDS_PUBLIC_URL"),
        ({"KCDS_SMART_PRIVATE_KEY": "/nonexistent.pem"}, "KCDS_SMART_PRIVATE_KEY"),
        (
            {"KCDS_SMART_PRIVATE_KEY": "/x.pem", "KCDS_SMART_CLIENT_SECRET": SECRET},
            "one client authentication",
        ),
    ],
)
def test_a_smart_configuration_that_cannot_work_names_the_variable(env, named):
    full = {
        "KCDS_SMART_CLIENT_ID": CLIENT_ID,
        "KCDS_SMART_ISSUERS": "https://ehr.example.org/fhir",
        "KCDS_SESSION_KEY": SESSION_KEY,
        "KCDS_PUBLIC_URL": "https://cds.example.org",
        **env,
    }
    with pytest.raises(ConfigError, match=named):
        SmartSettings.of(Settings.from_env(full))


def test_a_short_session_key_is_refused():
    with pytest.raises(ConfigError, match="KCDS_SESSION_KEY must be at least 32"):
        Settings.from_env({"KCDS_SESSION_KEY": "short"})


@pytest.fixture(params=["memory", "sql"])
def store_at(request, tmp_path):
    """A session store of each kind and its clock (a list to move)."""
    now = [1000.0]
    if request.param == "memory":
        return SessionStore(clock=lambda: now[0]), now
    db = f"sqlite:///{tmp_path}/sessions.db"
    return SqlSessionStore(db, SESSION_KEY, clock=lambda: now[0]), now


def test_sessions_expire_and_are_purged(store_at):
    store, now = store_at
    launch = store.put(Launch("https://ehr/fhir", "https://ehr/token", "launch", "s", "v", 1600))
    grant = store.put(Grant("https://ehr/fhir", "p1", "token", 1100))
    assert isinstance(store.get(launch), Launch) and isinstance(store.get(grant), Grant)
    now[0] = 1100.0
    assert store.get(grant) is None  # expired at its time
    assert store.get(launch) is not None
    now[0] = 1700.0
    store.put(Grant("https://ehr/fhir", "p2", "token-2", 5000))  # purges the expired
    assert store.get(launch) is None
    store.drop("no-such-session")


def test_the_grant_does_not_show_its_token():
    grant = Grant("https://ehr/fhir", "p1", "secret-token-value", 1.0)
    assert "secret-token-value" not in repr(grant) and "p1" not in repr(grant)


def test_the_sql_store_holds_no_readable_token_patient_or_session_id(tmp_path):
    import sqlite3

    db = tmp_path / "sessions.db"
    store = SqlSessionStore(f"sqlite:///{db}", SESSION_KEY)
    sid = store.put(Grant("https://ehr/fhir", "patient-4711", "bearer-token-0815", 4e9))
    assert store.get(sid) == Grant("https://ehr/fhir", "patient-4711", "bearer-token-0815", 4e9)
    dump = "\n".join(sqlite3.connect(db).iterdump())
    for secret in ("patient-4711", "bearer-token-0815", sid):
        assert secret not in dump
    # another session key cannot read it: as good as gone
    assert SqlSessionStore(f"sqlite:///{db}", SESSION_KEY[::-1]).get(sid) is None
    store.drop(sid)
    assert store.get(sid) is None


def test_an_unreachable_session_database_is_a_503_page_not_a_crash():
    store = SqlSessionStore("postgresql://postgres@127.0.0.1:1/none", SESSION_KEY)
    with pytest.raises(Refusal) as refused:
        store.put(Grant("https://ehr/fhir", "p1", "token", 4e9))
    assert refused.value.status == 503


def test_a_private_key_on_another_curve_is_refused(tmp_path):
    path = tmp_path / "p256.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="RSA or an EC P-384"):
        ClientKey.load(str(path))


def test_a_failure_in_the_view_is_a_500_page_and_logged(ehr, monkeypatch, capfd):
    import service.web.course as course_view

    def broken(_course):
        raise RuntimeError("a bug")

    client = app_for(ehr)
    monkeypatch.setattr(course_view, "charts", broken)
    answer = launched(client, ehr)
    assert answer.status_code == 500 and answer.mimetype == "text/html"
    assert "The course view failed" in answer.get_data(as_text=True)
    logged = capfd.readouterr().err
    assert '"message":"course view failed"' in logged and '"error_type":"RuntimeError"' in logged
    ours = [
        line for line in logged.splitlines() if '"logger":"werkzeug"' not in line
    ]  # not the EHR's
    assert ours and not any(PATIENT in line for line in ours)
