"""Fixtures of the SMART course view tests: a patient with a ketamine course, the loopback
EHR serving it, and the service under gunicorn with SMART configured for that EHR."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from fixtures.builder import NOW, Patient
from service.tools.fixtures import shift
from tests.conftest import Server, free_port, start_gunicorn, stop

# Chromium (one per module) and a page that fails its test on any console error, a CSP
# violation included: the preview tests' fixtures
from tests.web.test_preview_browser import browser, page  # noqa: F401

from .ehr import CLIENT_ID, Ehr, EhrServer

PATIENT, OTHER = "kcds-smart-1", "kcds-smart-2"
SESSION_KEY = "course-view-test-session-key-0123456789"
#: days before now of the eight IV ketamine sessions (twice weekly)
SESSION_DAYS = (40, 37, 33, 30, 26, 23, 19, 16)
#: (systolic, diastolic) about 40 minutes after each session; the last has none recorded
AFTER = ((138, 86), (136, 84), (140, 88), (134, 82), (152, 94), (136, 84), (132, 80), None)
#: PHQ-9 totals: (days before now, score); the first is the baseline, before the first dose
PHQ9 = ((42, 21), (33, 17), (26, 13), (17, 9))
IV = {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}], "text": "Intravenous"}


def course_patient() -> list[dict[str, Any]]:
    """The course patient's resources, Patient first, dated relative to now."""
    p = Patient(PATIENT, gender="female", age=46, given="Robin", family="Testcase")
    p.icd("F33.2", "Major depressive disorder, recurrent severe without psychotic features")
    p.weight(70, days=45)
    for days, score in PHQ9:
        p.phq9(score, days=days)
    for days, after in zip(SESSION_DAYS, AFTER, strict=True):
        p.bp(126, 80, days=days + 1 / 24)
        admin = p.administration("ketamine", days, 35)
        admin["dosage"]["route"] = IV
        admin["performer"] = [
            {"actor": {"reference": "Practitioner/rn-1", "display": "J. Okafor, RN"}}
        ]
        if after:
            p.bp(*after, days=days - 40 / 1440)
    # filed under this patient's search by mistake, but about another patient: never shown
    stray = p.observation("44261-6", "PHQ-9 total score", 3, 2, "{score}", category="survey")
    stray["subject"] = {"reference": f"Patient/{OTHER}"}
    now = datetime.now(UTC)
    return shift([p.patient, *p.resources], now - NOW, (now.date() - NOW.date()).days)


def other_patient() -> list[dict[str, Any]]:
    p = Patient(OTHER, given="Sam", family="Otherperson")
    p.administration("esketamine", 5, 56)
    now = datetime.now(UTC)
    return shift([p.patient, *p.resources], now - NOW, (now.date() - NOW.date()).days)


@pytest.fixture(scope="session")
def ehr() -> Iterator[Ehr]:
    with EhrServer(Ehr({PATIENT: course_patient(), OTHER: other_patient()})) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_knobs(ehr: Ehr) -> None:
    ehr.forge_state = ehr.deny = False
    ehr.expires_in = 3600
    ehr.permission_v2 = True
    ehr.client_secret = None
    ehr.client_jwks = None


def smart_env(ehr: Ehr, port: int) -> dict[str, str]:
    return {
        "KCDS_SMART_CLIENT_ID": CLIENT_ID,
        "KCDS_SMART_ISSUERS": ehr.fhir,
        "KCDS_SESSION_KEY": SESSION_KEY,
        "KCDS_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


@pytest.fixture(scope="session")
def service(tmp_path_factory, ehr: Ehr) -> Iterator[Server]:
    port = free_port()
    # two workers, the registry on: launch, callback and view may each meet another worker,
    # and the sessions are shared through the registry's database
    server = start_gunicorn(
        tmp_path_factory.mktemp("smart"), smart_env(ehr, port), workers=2, port=port
    )
    yield server
    stop(server)
