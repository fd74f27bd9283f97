"""service.tools.convert: FHIR Bundles and NDJSON exports → CDS Hooks requests for this service."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from cds_hooks.validation import check_request
from service.engine.prefetch import PREFETCH
from service.tools import convert

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "synthea"
# Synthea sample (source A of SOURCES.md: smart-on-fhir/generated-sample-data, Apache-2.0)
ENDA = SAMPLES / "Enda_Schaefer_dd760206-6c4e-4e25-a799-f5c563e489a1.json"
ENDA_ID = "d070e7dd-4d25-4c52-9fb2-78d232e1cf2c"  # the Patient.id, not the file name's
needs_sample = pytest.mark.skipif(not ENDA.exists(), reason=f"Synthea sample not found: {ENDA}")


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1980-01-02"}


def condition(cid: str, ref: str, code: str = "370143000") -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": ref},
    }


def observation(oid: str, ref: str, loinc: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": ref},
        "effectiveDateTime": "2024-01-01T10:00:00Z",
    }


def transaction(*resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {"method": "POST"}}
            for r in resources
        ],
    }


# -- reading -----------------------------------------------------------------------------


@needs_sample
def test_reads_a_synthea_transaction_bundle_and_rewrites_urn_uuid_references():
    resources = convert.resources_from(ENDA)
    assert len(resources) == 89
    assert b"urn:uuid:" not in orjson.dumps(resources)
    kinds = [r["resourceType"] for r in resources]
    assert kinds.count("Patient") == 1
    assert kinds.count("Observation") == 41
    cond = next(r for r in resources if r["resourceType"] == "Condition")
    assert cond["subject"] == {"reference": f"Patient/{ENDA_ID}"}
    assert cond["encounter"]["reference"].startswith("Encounter/")


def test_accepts_parsed_objects_and_bytes_without_modifying_them():
    bundle = transaction(patient("p1"), condition("c1", "urn:uuid:p1"))
    before = copy.deepcopy(bundle)
    from_obj = convert.resources_from(bundle)
    assert bundle == before
    assert convert.resources_from(orjson.dumps(bundle)) == from_obj
    assert from_obj[1]["subject"] == {"reference": "Patient/p1"}


def test_missing_ids_are_taken_from_the_urn_uuid_full_url():
    bundle = transaction(patient("p1"))
    bundle["entry"][0]["resource"] = {"resourceType": "Patient"}
    assert convert.resources_from(bundle) == [{"resourceType": "Patient", "id": "p1"}]


def test_reads_ndjson_files_a_folder_and_a_list_of_files(tmp_path):
    (tmp_path / "Patient.ndjson").write_bytes(orjson.dumps(patient("p1")) + b"\n")
    (tmp_path / "Condition.ndjson").write_bytes(
        b"\n".join(orjson.dumps(condition(f"c{i}", "Patient/p1")) for i in range(3)) + b"\n\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    from_folder = convert.resources_from(tmp_path)
    assert sorted(r["id"] for r in from_folder) == ["c0", "c1", "c2", "p1"]
    from_list = convert.resources_from(
        [tmp_path / "Patient.ndjson", str(tmp_path / "Condition.ndjson")]
    )
    assert sorted(map(orjson.dumps, from_list)) == sorted(map(orjson.dumps, from_folder))


def test_bad_ndjson_names_the_line(tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(orjson.dumps(patient("p1")) + b"\n{not json\n")
    with pytest.raises(convert.ConversionError, match="line 2"):
        convert.resources_from(path)


def test_leftover_urn_uuid_references_are_resolved_by_id():
    resources = [patient("p1"), condition("c1", "urn:uuid:p1")]
    body = convert.to_hook_request(resources, hook="patient-view", instance="i-1")
    entry = body["prefetch"]["conditions"]["entry"][0]["resource"]
    assert entry["subject"] == {"reference": "Patient/p1"}
    assert resources[1]["subject"] == {"reference": "urn:uuid:p1"}  # input untouched


# -- the request ---------------------------------------------------------------------------


def test_each_prefetch_query_searches_its_resource_type():
    for kind, query in PREFETCH.values():
        assert query.split("?")[0].split("/")[0] == kind


@needs_sample
def test_synthea_patient_becomes_a_valid_order_sign_request():
    resources = convert.resources_from(ENDA)
    order = convert.ketamine_order(10, "iv", 40)
    body = convert.to_hook_request(resources, hook="order-sign", orders=[order], instance="x-1")
    check_request(body, "order-sign")
    assert body["hookInstance"] == "x-1"
    assert body["context"]["patientId"] == ENDA_ID
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["subject"] == {"reference": f"Patient/{ENDA_ID}"}
    assert "subject" not in order  # the caller's order is not modified
    prefetch = body["prefetch"]
    assert list(prefetch) == list(PREFETCH)
    assert prefetch["patient"]["resourceType"] == "Patient"
    counts = {k: len(v["entry"]) for k, v in prefetch.items() if k != "patient"}
    assert counts == {
        "conditions": 1,
        "medicationRequests": 1,
        "medicationStatements": 0,
        "medicationAdministrations": 0,
        "observations": 41,
        "allergies": 0,
        "procedures": 3,
    }
    for key in counts:
        bundle = prefetch[key]
        assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset")
        assert bundle["total"] == counts[key]
        assert all(e["search"] == {"mode": "match"} for e in bundle["entry"])
    assert b"urn:uuid:" not in orjson.dumps(body)


@needs_sample
def test_converted_request_runs_through_the_service(client):
    body = convert.to_hook_request(
        convert.resources_from(ENDA),
        hook="order-sign",
        orders=[convert.ketamine_order(10, "iv", 40)],
    )
    response = client.post("/cds-services/ketamine-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    assert isinstance(response.get_json()["cards"], list)


def test_several_patients_need_a_patient_id_and_keep_only_that_patients_data():
    resources = [
        patient("p1"),
        patient("p2"),
        condition("c1", "Patient/p1"),
        condition("c2", "Patient/p2"),
        {"resourceType": "Condition", "id": "c3"},  # nobody's: dropped
        {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}},
    ]
    with pytest.raises(convert.ConversionError, match="2 patients"):
        convert.to_hook_request(resources, hook="patient-view")
    with pytest.raises(convert.ConversionError, match="no Patient with id"):
        convert.to_hook_request(resources, hook="patient-view", patient_id="p9")
    body = convert.to_hook_request(resources, hook="patient-view", patient_id="p2")
    assert body["prefetch"]["patient"]["id"] == "p2"
    assert [e["resource"]["id"] for e in body["prefetch"]["conditions"]["entry"]] == ["c2"]
    assert "draftOrders" not in body["context"]
    check_request(body, "patient-view")


def test_no_patient_is_an_error():
    with pytest.raises(convert.ConversionError, match="no Patient"):
        convert.to_hook_request([condition("c1", "Patient/p1")], hook="patient-view")


def test_order_select_selects_every_order_by_default():
    orders = [convert.esketamine_order(56), convert.ketamine_order(order_id="k2")]
    body = convert.to_hook_request([patient("p1")], hook="order-select", orders=orders)
    assert body["context"]["selections"] == [
        "MedicationRequest/draft-esketamine-1",
        "MedicationRequest/k2",
    ]
    picked = convert.to_hook_request(
        [patient("p1")], hook="order-select", orders=orders, selections=["MedicationRequest/k2"]
    )
    assert picked["context"]["selections"] == ["MedicationRequest/k2"]


def test_observation_codes_filter_like_the_services_search():
    resources = [
        patient("p1"),
        observation("o1", "Patient/p1", "8867-4"),
        observation("o2", "Patient/p1", "2339-0"),
    ]
    every = convert.to_hook_request(resources, hook="patient-view")
    assert every["prefetch"]["observations"]["total"] == 2
    some = convert.to_hook_request(resources, hook="patient-view", observation_codes=["8867-4"])
    assert [e["resource"]["id"] for e in some["prefetch"]["observations"]["entry"]] == ["o1"]


def test_referenced_medications_are_included_and_full_urls_use_the_fhir_server():
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "Ketamine"}}
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "urn:uuid:m1"},
        "subject": {"reference": "urn:uuid:p1"},
    }
    resources = convert.resources_from(transaction(patient("p1"), medication, request))
    body = convert.to_hook_request(
        resources, hook="patient-view", fhir_server="https://fhir.example.org/r4/"
    )
    bundle = body["prefetch"]["medicationRequests"]
    assert bundle["total"] == 1
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]] == [
        ("r1", "match"),
        ("m1", "include"),
    ]
    assert bundle["entry"][0]["fullUrl"] == "https://fhir.example.org/r4/MedicationRequest/r1"
    assert body["fhirServer"] == "https://fhir.example.org/r4/"


def test_one_patient_merges_records_onto_one_id():
    resources = [
        patient("p1"),
        patient("p2"),
        condition("c1", "Patient/p1"),
        condition("c2", "Patient/p2"),
    ]
    merged = convert.one_patient(resources, "merged-1")
    assert [r["id"] for r in merged if r["resourceType"] == "Patient"] == ["merged-1"]
    assert {r["subject"]["reference"] for r in merged[1:]} == {"Patient/merged-1"}
    body = convert.to_hook_request(merged, hook="patient-view")
    assert body["prefetch"]["conditions"]["total"] == 2


# -- orders ----------------------------------------------------------------------------------


def test_ketamine_order_builder():
    order = convert.ketamine_order(
        35, "iv", 40, patient_id="p1", order_id="k1", authored="2025-06-01T10:00:00Z"
    )
    assert order["subject"] == {"reference": "Patient/p1"}
    assert order["authoredOn"] == "2025-06-01T10:00:00Z"
    dosage = order["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 35
    assert dosage["timing"]["repeat"]["duration"] == 40
    assert dosage["route"]["coding"][0]["code"] == "47625008"
    im = convert.ketamine_order(50, "im", None)["dosageInstruction"][0]
    assert im["route"] == {"text": "Intramuscular"}
    assert "timing" not in im
    bare = convert.ketamine_order(None, None, None)["dosageInstruction"][0]
    assert bare == {"sequence": 1}
    with pytest.raises(ValueError, match="route"):
        convert.ketamine_order(40, "rectal")


def test_esketamine_order_builder():
    order = convert.esketamine_order(84, patient_id="p1")
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "50458-028-02"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 84
    assert order["authoredOn"].endswith("Z")


def test_order_builders_produce_valid_fhir_r4():
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    for order in (
        convert.ketamine_order(35, "iv", 40, patient_id="p1"),
        convert.ketamine_order(50, "nasal", None, patient_id="p1"),
        convert.esketamine_order(56, patient_id="p1"),
    ):
        MedicationRequest.model_validate(order)
