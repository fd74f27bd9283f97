"""The SMART EHR launch over real HTTP: the service under gunicorn, the loopback EHR's
authorization and FHIR servers, a requests session as the browser. The full launch in a
real browser is in test_course_browser.py; these are the refusals, each with its page."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from .conftest import OTHER, PATIENT
from .ehr import Ehr

pytestmark = pytest.mark.e2e


def launch(service, ehr: Ehr, patient: str = PATIENT, iss: str | None = None):
    """A browser session that followed the launch as far as it goes; (session, last answer)."""
    browser = requests.Session()
    answer = browser.get(
        service.url + "/smart/launch",
        params={"iss": iss or ehr.fhir, "launch": ehr.launch(patient)},
        timeout=10,
    )
    return browser, answer


def test_the_launch_reads_the_launch_patient_only_and_shows_the_course(service, ehr):
    before = len(ehr.reads)
    browser, answer = launch(service, ehr)
    assert answer.status_code == 200, answer.text
    assert answer.url == service.url + "/smart/course"
    # PKCE S256 and state were sent, and the token exchange proved the verifier
    asked = ehr.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and len(asked["state"]) >= 20
    assert asked["scope"] == "launch openid fhirUser patient/*.rs"
    assert "code_verifier" in ehr.token_requests[-1]
    reads = ehr.reads[before:]
    assert reads and all(PATIENT in r for r in reads), reads
    assert not any(OTHER in r for r in reads)
    # the token never reaches the browser: only an opaque, signed session id
    token = next(iter(ehr.tokens))
    assert token not in answer.text
    assert all(token not in c.value for c in browser.cookies)
    cookie = answer.history[-1].headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/smart" in cookie
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Robin Testcase" in answer.text
    assert len(re.findall(r'<tr><th scope="row">', answer.text)) >= 8
    # the service's log names neither the patient nor the token, code or state
    logged = service.logs()
    assert '"message":"smart authorised"' in logged
    for secret in (PATIENT, token, asked["state"], asked["code_challenge"]):
        assert secret not in logged


def test_an_issuer_not_allowed_is_refused(service, ehr):
    _, answer = launch(service, ehr, iss=ehr.url + "/other-fhir")
    assert answer.status_code == 403
    assert "may not launch the course view" in answer.text
    assert "KCDS_SMART_ISSUERS" in answer.text


def test_a_launch_without_its_parameters_is_refused(service):
    answer = requests.get(service.url + "/smart/launch", timeout=10)
    assert answer.status_code == 400
    assert "Not an EHR launch" in answer.text


def test_a_wrong_state_is_refused(service, ehr):
    ehr.forge_state = True
    before = len(ehr.token_requests)
    _, answer = launch(service, ehr)
    assert answer.status_code == 403
    assert "does not match this launch" in answer.text
    assert len(ehr.token_requests) == before  # the code was never exchanged


def test_a_refused_authorization_says_so(service, ehr):
    ehr.deny = True
    _, answer = launch(service, ehr)
    assert answer.status_code == 403
    assert "access_denied" in answer.text


def test_a_callback_without_a_launch_is_refused(service):
    answer = requests.get(service.url + "/smart/callback?code=x&state=y", timeout=10)
    assert answer.status_code == 401
    assert "No course view session" in answer.text


def test_the_view_without_a_session_or_with_a_forged_cookie_is_refused(service):
    assert requests.get(service.url + "/smart/course", timeout=10).status_code == 401
    forged = requests.get(
        service.url + "/smart/course", cookies={"kcds_smart": "abc.def.ghi"}, timeout=10
    )
    assert forged.status_code == 401
    assert "Open the course view again from the patient" in forged.text


def test_another_patient_is_refused_and_never_read(service, ehr):
    browser, answer = launch(service, ehr)
    assert answer.status_code == 200
    before = len(ehr.reads)
    other = browser.get(service.url + "/smart/course", params={"patient": OTHER}, timeout=10)
    assert other.status_code == 403
    assert "only the patient the EHR launched it for" in other.text
    assert len(ehr.reads) == before


def test_an_expired_token_ends_the_session(service, ehr):
    ehr.expires_in = 3
    browser, answer = launch(service, ehr)
    assert answer.status_code == 200
    _, expiry = list(ehr.tokens.values())[-1]  # the token of this launch
    time.sleep(max(0.0, expiry - time.time()) + 0.5)  # waits for the expiry; asserts no time
    again = browser.get(service.url + "/smart/course", timeout=10)
    assert again.status_code == 401
    assert "No course view session" in again.text


def test_the_redirect_uri_is_the_public_url_and_the_code_goes_to_the_token_endpoint(service, ehr):
    launch(service, ehr)
    asked = ehr.authorize_requests[-1]
    assert asked["redirect_uri"] == service.url + "/smart/callback"
    assert asked["aud"] == ehr.fhir
    sent = ehr.token_requests[-1]
    assert sent["redirect_uri"] == asked["redirect_uri"] and sent["client_id"] == asked["client_id"]
    assert parse_qs(urlsplit(asked["redirect_uri"]).query) == {}
