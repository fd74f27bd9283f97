"""The patient record, directly: FHIR value parsing, the builder's hygiene (spec §3) and the
queries the rules ask."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.config import Settings
from service.engine.record import (
    MedState,
    Quantity,
    RecordBuilder,
    dose_in_mg,
    ketamine_kind,
    medication_concept,
    parse_datetime,
    quantity,
    weight_kg,
)
from service.engine.record.values import belongs_to, coded_status, period_start
from service.tools.convert import esketamine_order, ketamine_order
from service.web.app import build_engine

ENGINE = build_engine(Settings())
TERMINOLOGY = ENGINE.terminology
BUILDER = RecordBuilder(TERMINOLOGY)
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def status(code):
    return {"coding": [{"code": code}]}


def build(*resources, patient_id="p1", gaps=None):
    patient = {"resourceType": "Patient", "id": patient_id, "birthDate": "1980-06-15"}
    return BUILDER.build(patient_id, {"all": [patient, *resources]}, gaps or {})


def observation(
    rid, code, when, value=None, unit="mm[Hg]", obs_status="final", code_text=None, **extra
):
    resource = {
        "resourceType": "Observation",
        "id": rid,
        "status": obs_status,
        "code": {"coding": [{"system": LOINC, "code": code}], "text": code_text},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        **extra,
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "code": unit}
    return resource


# -- FHIR value parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021", datetime(2021, 1, 1, tzinfo=UTC)),
        ("2021-07", datetime(2021, 7, 1, tzinfo=UTC)),
        ("2021-07-09", datetime(2021, 7, 9, tzinfo=UTC)),
        ("2021-07-09T10:00:00+02:00", datetime(2021, 7, 9, 8, tzinfo=UTC)),
        ("2021-07-09T10:00:00", datetime(2021, 7, 9, 10, tzinfo=UTC)),
        ("2021-13-45", None),
        ("soon", None),
        ("", None),
        (None, None),
        (20210709, None),
    ],
)
def test_parse_datetime_reads_every_fhir_precision_as_utc(value, expected):
    assert parse_datetime(value) == expected


def test_period_start_takes_the_first_parseable_name_and_a_period_start_or_end():
    resource = {"onsetPeriod": {"end": "2020-02-01"}, "recordedDate": "2019"}
    assert period_start(resource, "onsetDateTime", "onsetPeriod") == datetime(
        2020, 2, 1, tzinfo=UTC
    )
    assert period_start(resource, "missing") is None


def test_coded_status_reads_the_first_code_and_tolerates_junk():
    assert coded_status(status("resolved")) == "resolved"
    assert coded_status({"coding": [7, {"code": "active"}]}) == "active"
    assert coded_status("active") is None
    assert coded_status(None) is None


def test_quantity_needs_a_number_and_keeps_code_over_unit():
    assert quantity({"value": 70, "unit": "kilogram", "code": "kg"}) == Quantity(70.0, "kg")
    assert quantity({"value": 5.5, "unit": "mg"}) == Quantity(5.5, "mg")
    assert quantity({"value": True, "unit": "mg"}) is None
    assert quantity({"value": "70", "unit": "kg"}) is None
    assert quantity([70]) is None


@pytest.mark.parametrize(
    ("dose", "mg"),
    [
        ({"value": 40, "code": "mg"}, 40.0),
        ({"value": 0.05, "unit": "g"}, 50.0),
        ({"value": 40, "unit": "Milligrams"}, 40.0),
        ({"value": 40000, "code": "ug"}, None),  # never guessed
        ({"value": 0.5, "code": "mg/kg"}, None),
        (None, None),
    ],
)
def test_dose_in_mg_converts_mass_units_and_refuses_others(dose, mg):
    assert dose_in_mg(dose) == mg


@pytest.mark.parametrize(
    ("q", "kg"),
    [
        (Quantity(70, "kg"), 70.0),
        (Quantity(70000, "g"), 70.0),
        (Quantity(154, "[lb_av]"), pytest.approx(69.85, abs=0.01)),
        (Quantity(154, "LB"), pytest.approx(69.85, abs=0.01)),
        (Quantity(11, "[stn_i]"), None),  # a unit not read is never guessed
        (Quantity(0, "kg"), None),
        (None, None),
    ],
)
def test_weight_kg_converts_kg_g_and_pounds(q, kg):
    assert weight_kg(q) == kg


def test_belongs_to_refuses_only_another_named_patient():
    assert belongs_to({"subject": {"reference": "Patient/p1"}}, "p1")
    assert belongs_to({"patient": {"reference": "https://fhir.x/Patient/p1/_history/2"}}, "p1")
    assert belongs_to({"subject": {"reference": "urn:uuid:p1"}}, "p1")
    assert not belongs_to({"subject": {"reference": "Patient/p2"}}, "p1")
    assert belongs_to({"subject": {"display": "someone"}}, "p1")
    assert belongs_to({}, "p1")


def test_medication_concept_follows_inline_contained_listed_and_display_references():
    inline = {"medicationCodeableConcept": {"text": "ketamine"}}
    assert medication_concept(inline, {}) == {"text": "ketamine"}
    contained = {
        "contained": [{"resourceType": "Medication", "id": "m", "code": {"text": "esketamine"}}],
        "medicationReference": {"reference": "#m"},
    }
    assert medication_concept(contained, {}) == {"text": "esketamine"}
    listed = {"medicationReference": {"reference": "https://fhir.x/Medication/7"}}
    index = {"Medication/7": {"resourceType": "Medication", "code": {"text": "lorazepam"}}}
    assert medication_concept(listed, index) == {"text": "lorazepam"}
    dangling = {"medicationReference": {"reference": "Medication/8", "display": "Ativan"}}
    assert medication_concept(dangling, index) == {"text": "Ativan"}
    assert medication_concept({}, index) == {}


def test_ketamine_kind_tells_esketamine_from_ketamine():
    assert ketamine_kind(TERMINOLOGY, ketamine_order()["medicationCodeableConcept"]) == "ketamine"
    spravato = esketamine_order()["medicationCodeableConcept"]
    assert ketamine_kind(TERMINOLOGY, spravato) == "esketamine"
    assert ketamine_kind(TERMINOLOGY, {"text": "sertraline 50 mg"}) is None


# -- the builder's hygiene -------------------------------------------------------------------


def test_the_patient_is_the_one_asked_for_with_age_on_a_day():
    other = {"resourceType": "Patient", "id": "p2", "birthDate": "1990-01-01"}
    record = BUILDER.build(
        "p1",
        {"a": [other], "b": [{"resourceType": "Patient", "id": "p1", "birthDate": "1980-06-15"}]},
        {},
    )
    assert record.patient_id == "p1" and record.birth_date.isoformat() == "1980-06-15"
    assert record.age_on(datetime(2026, 6, 14, tzinfo=UTC)) == 45
    assert record.age_on(datetime(2026, 6, 15, tzinfo=UTC)) == 46


def test_duplicates_and_other_patients_resources_are_dropped_and_counted():
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "Glaucoma"},
    }
    foreign = condition | {"id": "c2", "subject": {"reference": "Patient/p2"}}
    record = build(condition, dict(condition), foreign, gaps={"procedures": "timeout"})
    assert [c.ref for c in record.conditions] == ["Condition/c1"]
    assert record.ignored == {"duplicate resource": 1, "resource of another patient": 1}
    assert record.gaps == {"procedures": "timeout"}


def test_condition_status_refuted_dropped_resolved_kept_as_history():
    base = {"resourceType": "Condition", "code": {"text": "Hyperthyroidism"}}
    record = build(
        base | {"id": "active", "onsetDateTime": "2020-01-01"},
        base | {"id": "refuted", "verificationStatus": status("refuted")},
        base | {"id": "error", "verificationStatus": status("entered-in-error")},
        base
        | {
            "id": "resolved",
            "clinicalStatus": status("resolved"),
            "abatementDateTime": "2026-01-05",
        },
    )
    by_id = {c.ref: c for c in record.conditions}
    assert set(by_id) == {"Condition/active", "Condition/resolved"}
    assert by_id["Condition/active"].active
    resolved = by_id["Condition/resolved"]
    assert not resolved.active and resolved.abated == datetime(2026, 1, 5, tzinfo=UTC)
    assert resolved.status == "resolved"


# -- §3b, clause by clause -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "current"),
    [
        ({"clinicalStatus": status("active")}, True),
        ({"clinicalStatus": status("recurrence")}, True),
        ({"clinicalStatus": status("relapse")}, True),
        ({}, True),  # no status, no abatement
        ({"abatementDateTime": "2025-01-01"}, False),  # no status but abated
        ({"clinicalStatus": status("inactive")}, False),
        ({"clinicalStatus": status("resolved")}, False),
        ({"clinicalStatus": status("remission")}, False),
    ],
)
def test_current_condition(extra, current):
    record = build({"resourceType": "Condition", "id": "c", "code": {"text": "Glaucoma"}} | extra)
    assert record.conditions[0].active is current


def _icd(rid, code, display, **extra):
    return {
        "resourceType": "Condition",
        "id": rid,
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}],
            "text": display,
        },
    } | extra


def test_history_counts_and_current_only():
    record = build(
        _icd("old", "I71.4", "Abdominal aortic aneurysm", clinicalStatus=status("resolved"))
    )
    assert record.conditions_in("aneurysm") == []
    assert [c.ref for c, _ in record.conditions_in("aneurysm", history_counts=True)] == [
        "Condition/old"
    ]


def test_remission_is_history_never_active_use():
    record = build(
        _icd("rem", "F10.21", "Alcohol dependence, in remission", clinicalStatus=status("active"))
    )
    [condition] = record.conditions
    assert condition.remission
    assert record.conditions_in("substance_use_disorder") == []
    hits = record.conditions_in("substance_use_disorder_remission", history_counts=True)
    assert [c.ref for c, _ in hits] == ["Condition/rem"]
    assert "in remission" in hits[0][0].fact(hits[0][1]).value


def test_windows_judge_the_onset_whatever_the_status():
    since = NOW - timedelta(days=180)
    record = build(
        _icd(
            "resolved-recent",
            "I21.9",
            "Acute myocardial infarction, unspecified",
            clinicalStatus=status("resolved"),
            onsetDateTime="2026-01-02",
        ),
        _icd(
            "active-old",
            "I21.9",
            "Acute myocardial infarction, unspecified",
            clinicalStatus=status("active"),
            onsetDateTime="2016-03-01",
        ),
        _icd(
            "recorded-only",
            "I21.9",
            "Acute myocardial infarction, unspecified",
            recordedDate="2026-02-01",
        ),
    )
    hits = record.conditions_in("myocardial_infarction", since=since)
    assert sorted(c.ref for c, _ in hits) == [
        "Condition/recorded-only",
        "Condition/resolved-recent",
    ]


def test_onset_age_is_read_from_the_birth_date():
    record = build(
        _icd("age", "I21.9", "Acute MI", onsetAge={"value": 45, "unit": "years", "code": "a"})
    )
    assert record.conditions[0].onset == datetime(2025, 6, 15, tzinfo=UTC)


def test_medication_currency_with_look_back_and_stale_entries():
    def med(rid, kind, med_status, **extra):
        return {
            "resourceType": kind,
            "id": rid,
            "status": med_status,
            "medicationCodeableConcept": {"text": "lorazepam 1 mg tablet"},
            **extra,
        }

    record = build(
        med("r1", "MedicationRequest", "active", authoredOn="2025-09-01"),
        med("r-stale", "MedicationRequest", "active", authoredOn="2015-01-01"),
        med(
            "r-valid",
            "MedicationRequest",
            "active",
            authoredOn="2015-01-01",
            dispenseRequest={"validityPeriod": {"end": "2026-12-31"}},
        ),
        med("r2", "MedicationRequest", "draft"),
        med("r3", "MedicationRequest", "cancelled"),
        med(
            "s1",
            "MedicationStatement",
            "completed",
            effectivePeriod={"start": "2026-01-01", "end": "2026-02-25"},
        ),
        med("s2", "MedicationStatement", "stopped", effectiveDateTime="2025-06-01"),
        {"resourceType": "MedicationRequest", "id": "r4", "medicationCodeableConcept": {}},
    )
    state = {m.ref.split("/")[1]: m.state(NOW, 365, 14) for m in record.medications}
    assert state == {
        "r1": MedState.CURRENT,
        "r-stale": MedState.STALE,
        "r-valid": MedState.CURRENT,  # its validity period covers now
        "s1": MedState.RECENT,  # stopped 5 days ago: lingers
        "s2": MedState.PAST,
    }
    assert record.medications[-2].ended == datetime(2026, 2, 25, tzinfo=UTC)
    hits = record.medications_in("benzodiazepines", NOW, 365, 14)
    assert {h.medication.ref.split("/")[1]: h.state for h in hits} == {
        "r1": MedState.CURRENT,
        "r-stale": MedState.STALE,
        "r-valid": MedState.CURRENT,
        "s1": MedState.RECENT,
    }
    stale = next(h for h in hits if h.state is MedState.STALE)
    assert stale.fact().value.endswith("possibly outdated")


def test_inactive_allergies_and_not_done_procedures_are_not_kept():
    record = build(
        {"resourceType": "AllergyIntolerance", "id": "a1", "code": {"text": "ketamine"}},
        {
            "resourceType": "AllergyIntolerance",
            "id": "a2",
            "code": {"text": "ketamine"},
            "clinicalStatus": status("inactive"),
        },
        {"resourceType": "Procedure", "id": "x1", "status": "completed", "code": {"text": "ECT"}},
        {"resourceType": "Procedure", "id": "x2", "status": "not-done", "code": {"text": "ECT"}},
    )
    assert [a.ref for a in record.allergies] == ["AllergyIntolerance/a1"]
    assert [p.ref for p in record.procedures] == ["Procedure/x1"]


def test_administrations_are_ketamine_only_counted_statuses_and_in_time_order():
    def admin(rid, order, when, admin_status="completed"):
        return {
            "resourceType": "MedicationAdministration",
            "id": rid,
            "status": admin_status,
            "medicationCodeableConcept": order["medicationCodeableConcept"],
            "effectiveDateTime": when,
            "dosage": {"dose": {"value": 56, "unit": "mg"}},
        }

    spravato, ketamine = esketamine_order(), ketamine_order()
    record = build(
        admin("a2", spravato, "2026-02-26T10:00:00Z"),
        admin("a1", ketamine, "2026-02-19T10:00:00Z"),
        admin("a3", spravato, "2026-02-27T10:00:00Z", "not-done"),
        admin("a4", {"medicationCodeableConcept": {"text": "sertraline"}}, "2026-02-20"),
    )
    assert [(a.ref, a.drug, a.dose_mg) for a in record.administrations] == [
        ("MedicationAdministration/a1", "ketamine", 56.0),
        ("MedicationAdministration/a2", "esketamine", 56.0),
    ]


def test_observations_final_only_newest_first_and_latest_within_a_window():
    record = build(
        observation("w1", "29463-7", "2026-02-01", 70, "kg"),
        observation("w2", "29463-7", "2026-02-20", 71, "kg"),
        observation("w3", "29463-7", "2026-03-01", 90, "kg", obs_status="preliminary"),
        observation("x", "99999-9", "2026-03-01", 1, "kg"),
    )
    assert [o.ref for o in record.observations["29463-7"]] == [
        "Observation/w2",
        "Observation/w1",
    ]
    assert "99999-9" not in record.observations
    assert record.latest(["29463-7"]).quantity == Quantity(71.0, "kg")
    assert record.latest(["29463-7"], since=NOW - timedelta(days=5)) is None


def test_blood_pressure_from_panels_and_separate_readings_at_one_time():
    panel = observation(
        "bp1",
        "85354-9",
        "2026-02-28T09:00:00Z",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 150, "unit": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 95, "unit": "mm[Hg]"},
            },
        ],
    )
    record = build(
        panel,
        observation("s", "8480-6", "2026-03-01T09:00:00Z", 182),
        observation("d", "8462-4", "2026-03-01T09:00:00Z", 101),
    )
    readings = [(bp.systolic, bp.diastolic, bp.text()) for bp in record.blood_pressures]
    assert readings == [(182.0, 101.0, "182/101 mmHg"), (150.0, 95.0, "150/95 mmHg")]
    assert [f.resource for f in record.blood_pressures[0].facts] == [
        "Observation/s",
        "Observation/d",
    ]


def _split(rid, code, when, value):
    return observation(rid, code, when, value)


def test_separate_systolic_and_diastolic_pair_within_minutes_only():
    record = build(
        _split("s1", "8480-6", "2026-03-01T09:00:00Z", 188),
        _split("d1", "8462-4", "2026-03-01T09:06:00Z", 96),
        _split("s2", "8480-6", "2026-02-20T09:00:00Z", 150),
        _split("d2", "8462-4", "2026-02-20T09:30:00Z", 92),  # 30 min later: not its pair
    )
    texts = [bp.text() for bp in record.blood_pressures]
    assert texts == [
        "188/96 mmHg",
        "diastolic 92 mmHg, no systolic recorded with it",
        "systolic 150 mmHg, no diastolic recorded with it",
    ]
    assert record.latest_bp(NOW - timedelta(days=7)).systolic == 188
    wider = RecordBuilder(TERMINOLOGY, bp_pair_minutes=45)
    patient = {"resourceType": "Patient", "id": "p1"}
    again = wider.build(
        "p1",
        {
            "all": [
                patient,
                _split("s2", "8480-6", "2026-02-20T09:00:00Z", 150),
                _split("d2", "8462-4", "2026-02-20T09:30:00Z", 92),
            ]
        },
        {},
    )
    assert [bp.text() for bp in again.blood_pressures] == ["150/92 mmHg"]


def _pregnancy(record):
    return record.pregnancy(NOW, 300, 30, 25.0, ("pregnancy", "pregnancy_obstetric"))


def _status(rid, when, answer):
    return observation(
        rid,
        "82810-3",
        when,
        code_text="Pregnancy status",
        valueCodeableConcept={"coding": [{"system": LOINC, "code": answer}]},
    )


def test_pregnancy_newest_evidence_wins():
    pregnant = _icd("preg", "Z33.1", "Pregnant state, incidental", onsetDateTime="2026-01-10")
    record = build(pregnant)
    assert _pregnancy(record).pregnant
    record = build(pregnant, _status("neg", "2026-02-27", "LA26683-5"))
    status = _pregnancy(record)
    assert not status.pregnant and status.superseded_by.resource == "Observation/neg"
    assert status.documented
    old = _icd("old", "Z33.1", "Pregnant state, incidental", onsetDateTime="2021-05-01")
    assert not _pregnancy(build(old)).pregnant  # outside the condition window


@pytest.mark.parametrize(
    ("value", "pregnant"),
    [
        ({"valueQuantity": {"value": 180, "unit": "m[IU]/mL"}}, True),
        ({"valueQuantity": {"value": 3, "unit": "m[IU]/mL"}}, False),
        ({"valueQuantity": {"value": 180, "unit": "ng/mL"}}, False),  # unit not read: no answer
        ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "10828004"}]}}, True),
        ({"valueCodeableConcept": {"text": "Negative"}}, False),
        ({"valueString": "POSITIVE"}, True),
    ],
)
def test_hcg_quantitative_and_qualitative(value, pregnant):
    test = observation("hcg", "21198-7", "2026-02-28", **value)
    status = _pregnancy(build(test))
    assert status.pregnant is pregnant and status.documented


@pytest.mark.parametrize(
    "value",
    [
        {"valueInteger": 19},
        {"valueQuantity": {"value": 19, "unit": "{score}"}},
        {"valueString": "19"},
    ],
)
def test_scores_as_integer_quantity_or_string(value):
    record = build(observation("phq", "44261-6", "2026-02-28", **value))
    latest = record.latest(["44261-6"])
    assert latest.quantity.value == 19.0
    assert latest.fact().value == "19"  # no {score} in text (§7)


@pytest.mark.parametrize(
    ("unit", "kg"),
    [
        ("kilograms", 70.0),
        ("lbs", pytest.approx(31.75, abs=0.01)),
        ("pounds", pytest.approx(31.75, abs=0.01)),
    ],
)
def test_weight_units_as_ehrs_write_them(unit, kg):
    record = build(observation("w", "29463-7", "2026-02-28", 70, unit))
    assert weight_kg(record.latest(["29463-7"]).quantity) == kg
