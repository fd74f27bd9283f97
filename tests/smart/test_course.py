"""The course view's arithmetic (service.engine.course) on the course patient of the browser
test, and on variations of it: sessions, blood pressure around them, scores against the
baseline, frequency against the policy, and the gaps in words."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from service.config import Settings
from service.engine.course import administration_index, course
from service.engine.record import BloodPressure
from service.engine.rules import Evaluation
from service.web.app import build_engine

from .conftest import AFTER, PATIENT, PHQ9, SESSION_DAYS, course_patient


@cache
def engine():
    return build_engine(Settings.from_env({"KCDS_AUTH": "off"}))


def evaluate(resources, gaps=None, now=None):
    e = engine()
    record = e.builder.build(PATIENT, {"all": resources}, gaps or {})
    now = now or datetime.now(UTC)
    ev = Evaluation(record, None, e.policy, e.terminology, now, "patient-view")
    return ev, course(ev, administration_index(resources))


def test_sessions_carry_dose_route_who_and_the_blood_pressure_around_them():
    _, c = evaluate(course_patient())
    assert [s.number for s in c.sessions] == list(range(1, 9))
    first = c.sessions[0]
    assert (first.drug, first.route, first.dose_mg, first.performer) == (
        "ketamine",
        "Intravenous",
        35,
        "J. Okafor, RN",
    )
    assert first.weight_kg == 70 and first.dose_mg_per_kg == pytest.approx(0.5)
    assert all((s.bp_before.systolic, s.bp_before.diastolic) == (126, 80) for s in c.sessions)
    after = [
        (s.bp_after.systolic, s.bp_after.diastolic) if s.bp_after else None for s in c.sessions
    ]
    assert after == list(AFTER)
    assert [s.in_30_days for s in c.sessions] == list(range(1, 9))
    assert c.busiest_30_days == 8
    assert c.course_days == SESSION_DAYS[0]


def test_scores_are_measured_against_the_baseline_and_another_patients_are_left_out():
    _, c = evaluate(course_patient())
    assert [s.value for s in c.scores] == [score for _, score in PHQ9]
    assert c.baseline.is_baseline and c.baseline.value == 21 and c.baseline.change is None
    assert c.latest.value == 9
    assert c.latest.change == pytest.approx(12 / 21)
    assert c.response_line == pytest.approx(10.5)  # 50% below the baseline (policy)
    assert c.limits.remission_score is None  # the default policy sets none: no line drawn


def test_the_limits_are_the_policys():
    ev, c = evaluate(course_patient())
    p = ev.policy
    assert c.limits.bp_caution == (p.bp_caution_systolic, p.bp_caution_diastolic)
    assert c.limits.bp_hazard == (p.bp_hazard_systolic, p.bp_hazard_diastolic)
    assert c.limits.max_per_30d == p.ketamine_max_per_30d
    assert c.limits.course_days == p.ketamine_course_days
    assert c.limits.policy_version == p.version


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ((), "no reading"),
        (((120, 70),), "below the caution threshold"),
        (((120, 70), (140, 80)), "at or above the caution threshold"),
        (((120, 95),), "at or above the caution threshold"),
        (((130, 100),), "at or above the hazard threshold"),
        (((185, 90), None), "at or above the hazard threshold"),
    ],
)
def test_blood_pressure_classes(readings, expected):
    _, c = evaluate(course_patient())
    now = datetime.now(UTC)
    bps = [BloodPressure(now, r[0], r[1], ()) if r else None for r in readings]
    assert c.limits.bp_class(*bps) == expected


def test_the_gaps_are_said_in_words():
    resources = course_patient()
    _, c = evaluate(resources)
    last = c.sessions[-1].when.date()
    assert c.gaps == (f"No post-dose blood pressure for session 8 on {last}.",)

    # no weight, no ratings after the first dose, a search that failed
    bare = [
        r
        for r in resources
        if not (
            r["resourceType"] == "Observation"
            and r["code"]["coding"][0]["code"] in ("29463-7", "44261-6")
        )
    ]
    _, c = evaluate(bare, gaps={"conditions": "FHIR server answered HTTP 500"})
    first = c.sessions[0].when.date()
    assert c.gaps[0] == (
        "conditions: could not be read (FHIR server answered HTTP 500); what depends on it is "
        "not shown"
    )
    assert f"No rating before the first session ({first}): no baseline." in c.gaps
    assert f"No rating since the first session ({first})." in c.gaps
    assert any(g.startswith("No body weight in the 30 days before session 1 on") for g in c.gaps)
    assert c.sessions[0].dose_mg_per_kg is None
    assert c.baseline is None and c.response_line is None


def test_an_old_last_rating_is_a_gap():
    later = datetime.now(UTC) + timedelta(days=30)
    _, c = evaluate(course_patient(), now=later)
    assert any(g.startswith(f"No rating since {c.latest.when.date()} (more than") for g in c.gaps)


def test_an_esketamine_course_is_held_to_the_evaluated_year():
    resources = [r for r in course_patient() if r["resourceType"] != "MedicationAdministration"]
    spray = {
        "resourceType": "MedicationAdministration",
        "id": "adm-e-1",
        "status": "completed",
        "medicationCodeableConcept": {"text": "esketamine 28 MG per device Nasal Spray [Spravato]"},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": (datetime.now(UTC) - timedelta(days=10)).isoformat(),
        "dosage": {"dose": {"value": 56, "unit": "mg"}},
    }
    _, c = evaluate([*resources, spray])
    assert c.drug == "esketamine"
    assert c.limits.course_days == 365
    assert c.sessions[0].route is None and c.sessions[0].performer is None


def test_no_course_no_sessions():
    resources = [r for r in course_patient() if r["resourceType"] != "MedicationAdministration"]
    _, c = evaluate(resources)
    assert c.sessions == () and c.course_days is None and c.busiest_30_days == 0


def test_a_site_remission_score_draws_the_remission_line(tmp_path):
    from service.web.course import scores_chart

    site = tmp_path / "policy.yaml"
    site.write_text("version: site-remission\nthresholds:\n  remission_score: 5\n")
    e = build_engine(Settings.from_env({"KCDS_AUTH": "off", "KCDS_POLICY_FILE": str(site)}))
    resources = course_patient()
    record = e.builder.build(PATIENT, {"all": resources}, {})
    ev = Evaluation(record, None, e.policy, e.terminology, datetime.now(UTC), "patient-view")
    c = course(ev, administration_index(resources))
    assert c.limits.remission_score == 5
    svg = base64.b64decode(scores_chart(c).svg.split(",", 1)[1]).decode()
    assert "remission &lt; 5" in svg and "response ≤ 10.5" in svg


def test_the_course_length_is_the_current_courses_as_p05_counts_it():
    resources = course_patient()
    old = dict(next(r for r in resources if r["resourceType"] == "MedicationAdministration"))
    old["id"] = "adm-long-ago"
    old["effectiveDateTime"] = (datetime.now(UTC) - timedelta(days=200)).isoformat()
    _, c = evaluate([*resources, old])
    assert len(c.sessions) == 9
    assert c.course_days == SESSION_DAYS[0]  # the 160-day gap started a new course
    _, later = evaluate(resources, now=datetime.now(UTC) + timedelta(days=60))
    assert later.course_days is None  # the last session a re-induction gap ago: none running
