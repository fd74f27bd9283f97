"""Bad and odd data never crash the rules: each is understood or reported as 'could not
check'. A property-based test feeds random FHIR-ish records through the engine."""

import copy
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks.service import ServiceCatalog, handle
from cds_hooks.validation import validator
from service.config import Settings
from service.engine.prefetch import PREFETCH
from service.tools.fixtures import card_rules, load
from service.web.app import build_engine

ENGINE = build_engine(Settings())
CATALOG = ServiceCatalog(ENGINE.services())
KEY_TYPES = {key: kind for key, (kind, _) in PREFETCH.items() if kind != "Patient"}


def evaluate(request, service="ketamine-order-sign"):
    _, response = handle(CATALOG.get(service), request, None, "http://cds.test")
    body = response.to_json()
    assert not list(validator("response.json").iter_errors(body))
    return body


def clean():
    return load("clean-iv-ketamine-sign")[0]


def add(request, key, *resources):
    request["prefetch"][key]["entry"].extend({"resource": r} for r in resources)


def test_odd_resources_are_ignored_or_understood(caplog):
    request = clean()
    add(
        request,
        "conditions",
        {"resourceType": "Condition", "id": "no-code"},
        {"resourceType": "Condition", "id": "no-system", "code": {"coding": [{"code": "I71.4"}]}},
        {
            "resourceType": "Condition",
            "id": "bad-date",
            "onsetDateTime": "2021-13-45",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "H40.11"}]},
        },
        {"resourceType": "Condition", "id": "weird", "code": "I71.4", "clinicalStatus": 7},
        {"resourceType": "Condition", "id": "list-code", "code": [1, 2]},
    )
    add(
        request,
        "observations",
        {
            "resourceType": "Observation",
            "id": "no-value",
            "status": "final",
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}
                ]
            },
            "effectiveDateTime": "yesterday",
        },
        {
            "resourceType": "Observation",
            "id": "string-value",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": "high"},
        },
    )
    add(
        request,
        "medicationRequests",
        {
            "resourceType": "MedicationRequest",
            "id": "ref-only",
            "status": "active",
            "medicationReference": {"reference": "Medication/unknown"},
        },
        {"resourceType": "MedicationRequest", "id": "no-status"},
    )
    request["prefetch"]["procedures"]["entry"].append("not an entry")
    with caplog.at_level(logging.ERROR):
        body = evaluate(request)
    assert not [r for r in caplog.records if r.message == "rule failed"]
    fired = card_rules(body)
    assert "R01" not in fired  # a code without a system is not trusted
    assert fired.get("R12") == "info"  # glaucoma understood despite its unparseable date


def test_duplicates_and_other_patients_are_ignored_and_reported():
    request = clean()
    entries = request["prefetch"]["observations"]["entry"]
    entries.append(copy.deepcopy(entries[0]))
    foreign = {
        "resourceType": "Condition",
        "id": "other",
        "subject": {"reference": "Patient/not-this-one"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I71.4"}]},
    }
    add(request, "conditions", foreign)
    body = evaluate(request)
    fired = card_rules(body)
    assert "R01" not in fired and fired["D02"] == "info"
    plan = body["cards"][-1]
    assert "1 duplicate resource" in plan["detail"]
    assert "1 resource of another patient" in plan["detail"]


def test_dose_without_a_unit_is_reported_not_guessed():
    request = clean()
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {"value": 40}
    body = evaluate(request)
    card = next(c for c in body["cards"] if c["source"]["topic"]["code"] == "R25")
    assert "not understood" in card["summary"]


def test_medication_reference_to_a_contained_medication_is_recognised():
    request = clean()
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("medicationCodeableConcept")
    order["contained"] = [
        {"resourceType": "Medication", "id": "m1", "code": {"text": "Ketalar 50 mg/mL"}}
    ]
    order["medicationReference"] = {"reference": "#m1"}
    assert card_rules(evaluate(request)) == {"R38": "info"}


def test_order_select_only_looks_at_selections():
    request = load("spravato-order-select")[0]
    entry = request["context"]["draftOrders"]["entry"][0]["resource"]
    entry["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 70
    request["context"]["selections"] = ["MedicationRequest/something-else"]
    assert evaluate(request, "ketamine-order-select") == {"cards": []}


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "2024-02-30",
            "2025-01-01",
            "2025-05-30T10:00:00Z",
            "active",
            "resolved",
            "final",
            "completed",
            "kg",
            "mg",
            "[lb_av]",
            "I71.4",
            "F33.2",
            "29463-7",
            "8480-6",
        ]
    ),
)
codings = st.fixed_dictionaries(
    {},
    optional={
        "system": st.sampled_from(
            [
                "http://hl7.org/fhir/sid/icd-10-cm",
                "http://snomed.info/sct",
                "http://loinc.org",
                "urn:x",
                "",
            ]
        ),
        "code": st.one_of(
            st.sampled_from(
                [
                    "I71.4",
                    "Q28.2",
                    "F20.9",
                    "29463-7",
                    "85354-9",
                    "44261-6",
                    "8480-6",
                    "LA15173-0",
                    "370143000",
                ]
            ),
            st.text(max_size=6),
            st.integers(),
        ),
        "display": st.one_of(
            st.text(max_size=20),
            st.sampled_from(["Body weight", "lorazepam", "ketamine", "Pregnant", "Positive"]),
        ),
    },
)
concepts = st.one_of(
    scalars,
    st.fixed_dictionaries(
        {},
        optional={
            "coding": st.one_of(st.lists(st.one_of(codings, scalars), max_size=3), scalars),
            "text": st.one_of(st.text(max_size=20), st.sampled_from(["Ketamine", "phenelzine"])),
        },
    ),
)
quantity = st.one_of(
    scalars,
    st.fixed_dictionaries(
        {},
        optional={
            "value": st.one_of(st.floats(-1e6, 1e6), st.integers(), st.text(max_size=3)),
            "unit": st.sampled_from(["kg", "g", "[lb_av]", "mg", "mm[Hg]", "", "stone"]),
            "code": st.sampled_from(["kg", "g", "[lb_av]", "mg", "mm[Hg]"]),
        },
    ),
)
FIELDS = {
    "code": concepts,
    "clinicalStatus": concepts,
    "verificationStatus": concepts,
    "status": st.sampled_from(
        [
            "active",
            "final",
            "completed",
            "stopped",
            "draft",
            "entered-in-error",
            "on-hold",
            "intended",
            "x",
        ]
    ),
    "onsetDateTime": scalars,
    "recordedDate": scalars,
    "authoredOn": scalars,
    "effectiveDateTime": scalars,
    "effectivePeriod": st.dictionaries(st.sampled_from(["start", "end"]), scalars),
    "medicationCodeableConcept": concepts,
    "valueQuantity": quantity,
    "valueCodeableConcept": concepts,
    "component": st.lists(
        st.fixed_dictionaries({"code": concepts, "valueQuantity": quantity}), max_size=2
    ),
    "dosage": st.fixed_dictionaries({}, optional={"dose": quantity}),
    "subject": st.sampled_from(
        [{"reference": "Patient/kcds-clean"}, {"reference": "Patient/other"}, {}, "x"]
    ),
    "id": st.text(min_size=1, max_size=4),
}


def resource(kind):
    return st.fixed_dictionaries(
        {"resourceType": st.just(kind)}, optional={k: v for k, v in FIELDS.items()}
    )


records = st.fixed_dictionaries(
    {key: st.lists(resource(kind), max_size=6) for key, kind in KEY_TYPES.items()}
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records, birth=scalars)
def test_random_records_never_crash_the_rules(records, birth):
    request = clean()
    request["prefetch"]["patient"]["birthDate"] = birth
    for key, resources in records.items():
        request["prefetch"][key]["entry"].extend({"resource": r} for r in resources)
    body = evaluate(request)
    assert body["cards"], "a ketamine order always gets at least the plan"
    for card in body["cards"]:
        assert "could not be checked" not in card["summary"], card["summary"]
