"""Draft orders, directly: which are ketamine or esketamine, their route, dose and infusion
time, FHIR R4 validation naming the field, and the rule scopes that cover them."""

from __future__ import annotations

import copy

import pytest

from service.config import Settings
from service.engine.orders import has_ketamine, ketamine_orders
from service.engine.scope import Scope
from service.tools.convert import esketamine_order, ketamine_order
from service.web.app import build_engine

TERMINOLOGY = build_engine(Settings()).terminology
V3 = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"


def bundle(*resources):
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def one(order):
    [found] = ketamine_orders(TERMINOLOGY, bundle(order), None)
    return found


def sertraline():
    return {
        "resourceType": "MedicationRequest",
        "id": "ssri",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "sertraline 50 mg tablet"},
    }


def test_iv_ketamine_order_is_read_whole():
    order = one(ketamine_order(35, "iv", 40, authored="2026-03-02T09:30:00Z", patient_id="p1"))
    assert (order.ref, order.drug, order.route) == (
        "MedicationRequest/draft-ketamine-1",
        "ketamine",
        "iv",
    )
    assert (order.dose_mg, order.dose_mg_per_kg, order.minutes) == (35.0, None, 40.0)
    assert order.is_iv and order.label() == "IV ketamine"
    assert order.authored.isoformat() == "2026-03-02T09:30:00+00:00"
    assert order.code is not None and order.code.code == "238083"


def test_esketamine_order_is_spravato_and_never_iv():
    order = one(esketamine_order(84, patient_id="p1"))
    assert (order.drug, order.route, order.dose_mg) == ("esketamine", "nasal", 84.0)
    assert not order.is_iv and order.label() == "esketamine (Spravato)"


@pytest.mark.parametrize(
    ("route", "expected", "iv"),
    [("im", "im", False), ("oral", "oral", False), ("nasal", "nasal", False), (None, None, True)],
)
def test_ketamine_routes_and_no_route_treated_as_iv(route, expected, iv):
    order = one(ketamine_order(35, route, None, patient_id="p1"))
    assert order.route == expected and order.is_iv is iv


def test_route_from_text_when_not_coded():
    resource = ketamine_order(35, None, None, patient_id="p1")
    resource["dosageInstruction"][0]["route"] = {"text": "Intramuscular injection"}
    assert one(resource).route == "im"
    resource["dosageInstruction"][0]["route"] = {"text": "intraosseous"}
    order = one(resource)
    assert (order.route, order.route_text) == ("other", "intraosseous")


def test_dose_per_kg_and_units_never_guessed():
    assert one(ketamine_order(0.5, "iv", 40, unit="mg/kg", patient_id="p1")).dose_mg_per_kg == 0.5
    micrograms = one(ketamine_order(35000, "iv", 40, unit="ug", patient_id="p1"))
    assert micrograms.dose_mg is None and micrograms.dose is not None
    assert one(ketamine_order(None, "iv", 40, patient_id="p1")).dose is None


def test_infusion_time_from_timing_or_dosage_text():
    resource = ketamine_order(35, "iv", None, patient_id="p1")
    dosage = resource["dosageInstruction"][0]
    dosage["timing"] = {"repeat": {"duration": 1.5, "durationUnit": "h"}}
    assert one(resource).minutes == 90.0
    del dosage["timing"]
    dosage["text"] = "35 mg IV over 1 hour"
    assert one(resource).minutes == 60.0
    dosage["text"] = "35 mg IV"
    assert one(resource).minutes is None


def test_only_ketamine_orders_and_only_the_selected_ones():
    ketamine, spravato = ketamine_order(patient_id="p1"), esketamine_order(patient_id="p1")
    orders = ketamine_orders(TERMINOLOGY, bundle(sertraline(), ketamine, spravato), None)
    assert [o.drug for o in orders] == ["ketamine", "esketamine"]
    selected = {"MedicationRequest/draft-esketamine-1"}
    chosen = ketamine_orders(TERMINOLOGY, bundle(ketamine, spravato), selected)
    assert [o.drug for o in chosen] == ["esketamine"]
    assert has_ketamine(TERMINOLOGY, bundle(sertraline(), ketamine), None)
    assert not has_ketamine(TERMINOLOGY, bundle(sertraline()), None)
    assert not has_ketamine(TERMINOLOGY, bundle(ketamine), {"MedicationRequest/other"})
    assert not has_ketamine(TERMINOLOGY, "not a bundle", None)


def test_medication_reference_to_a_bundle_medication_is_followed():
    medication = {
        "resourceType": "Medication",
        "id": "med-1",
        "code": copy.deepcopy(esketamine_order()["medicationCodeableConcept"]),
    }
    resource = esketamine_order(patient_id="p1")
    del resource["medicationCodeableConcept"]
    resource["medicationReference"] = {"reference": "Medication/med-1"}
    [order] = ketamine_orders(TERMINOLOGY, bundle(medication, resource), None)
    assert order.drug == "esketamine"


def test_an_invalid_but_readable_order_is_read_and_its_problem_named():
    """§3b: never a 400 for an order the service can read (the Sandbox sends reasonCode and
    category as objects)."""
    resource = ketamine_order(35, "iv", 40, patient_id="p1")
    resource["authoredOn"] = "yesterday"
    resource["category"] = {"text": "inpatient"}
    resource["reasonCode"] = {"text": "treatment-resistant depression"}
    [order] = ketamine_orders(TERMINOLOGY, bundle(sertraline(), resource), None)
    assert (order.dose_mg, order.route, order.minutes) == (35.0, "iv", 40.0)
    assert order.problem.startswith("`context.draftOrders.entry[1].resource.")
    assert order.reasons == ({"text": "treatment-resistant depression"},)
    assert order.authored is None
    assert one(ketamine_order(35, "iv", 40, patient_id="p1")).problem is None


def test_fields_of_the_wrong_shape_are_read_or_left_out_never_raise():
    resource = ketamine_order(35, "iv", 40, patient_id="p1")
    resource["dosageInstruction"] = resource["dosageInstruction"][0]  # an object, not a list
    assert one(resource).dose_mg == 35.0
    resource["dosageInstruction"] = "35 mg IV"
    order = one(resource)
    assert (order.dose, order.route, order.minutes) == (None, None, None)
    assert order.problem is not None


@pytest.mark.parametrize(
    ("coding", "route"),
    [
        ({"system": "http://snomed.info/sct", "code": "78421000"}, "im"),
        ({"system": "http://snomed.info/sct", "code": "46713006"}, "nasal"),
        ({"system": V3, "code": "IVINJ"}, "iv"),
        ({"system": V3, "code": "IM"}, "im"),
        ({"system": V3, "code": "NASINHL"}, "nasal"),
        ({"system": V3, "code": "PO"}, "oral"),
    ],
)
def test_routes_are_read_from_snomed_and_v3_codes(coding, route):
    resource = ketamine_order(35, None, None, patient_id="p1")
    resource["dosageInstruction"][0]["route"] = {"coding": [coding]}
    assert one(resource).route == route


def test_an_unknown_route_code_is_checked_as_iv_and_said_so():
    resource = ketamine_order(35, None, 40, patient_id="p1")
    resource["dosageInstruction"][0]["route"] = {
        "coding": [{"system": "urn:local:routes", "code": "X7"}]
    }
    order = one(resource)
    assert order.route == "unrecognised" and order.is_iv
    assert order.route_text == "route code X7"


def test_infusion_time_from_the_rate_with_the_dose_or_the_volume():
    resource = ketamine_order(40, "iv", None, patient_id="p1")
    dose_and_rate = resource["dosageInstruction"][0]["doseAndRate"][0]
    dose_and_rate["rateQuantity"] = {"value": 60, "unit": "mg/h"}
    assert one(resource).minutes == 40.0
    dose_and_rate["rateQuantity"] = {"value": 150, "unit": "mL/h"}
    resource["dosageInstruction"][0]["text"] = "40 mg in 100 mL sodium chloride 0.9%"
    assert one(resource).minutes == 40.0
    del resource["dosageInstruction"][0]["text"]
    assert one(resource).minutes is None  # a rate in mL without a volume: not stated


def test_injected_esketamine_is_not_spravato():
    resource = esketamine_order(patient_id="p1")
    resource["dosageInstruction"][0]["route"] = {
        "coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]
    }
    order = one(resource)
    assert order.drug == "esketamine" and not order.spravato and order.is_iv
    assert order.label() == "IV esketamine (not Spravato)"
    assert Scope.KIV.covers(order) and Scope.K.covers(order) and not Scope.E.covers(order)


@pytest.mark.parametrize(
    ("scope", "iv_ketamine", "im_ketamine", "spravato", "course"),
    [
        (Scope.ANY, True, True, True, True),
        (Scope.ALL, True, True, True, True),
        (Scope.K, True, True, False, True),
        (Scope.KIV, True, False, False, True),
        (Scope.E, False, False, True, True),
    ],
)
def test_scopes_cover_the_orders_the_specification_says(
    scope, iv_ketamine, im_ketamine, spravato, course
):
    orders = (
        one(ketamine_order(35, "iv", 40, patient_id="p1")),
        one(ketamine_order(35, "im", None, patient_id="p1")),
        one(esketamine_order(patient_id="p1")),
    )
    assert [scope.covers(o) for o in orders] == [iv_ketamine, im_ketamine, spravato]
    assert scope.covers(None) is course


def test_every_scope_has_words_and_hooks():
    assert Scope.COURSE.hooks == ("patient-view",)
    assert Scope.ANY.hooks == ("order-select", "order-sign", "patient-view")
    assert all(s.description and s.hooks for s in Scope)
    assert Scope("KIV") is Scope.KIV


def test_odd_shapes_in_route_and_timing_are_read_or_left_out():
    """Found by the fuzz test: unhashable codes and units must not crash the lookup."""
    resource = ketamine_order(35, None, None, patient_id="p1")
    dosage = resource["dosageInstruction"][0]
    dosage["route"] = {"coding": [{"system": {"x": 1}, "code": ["47625008"]}, "IV"]}
    dosage["timing"] = {"repeat": {"duration": 40, "durationUnit": ["min"]}}
    order = one(resource)
    assert (order.route, order.minutes) == (None, None)
    assert order.problem is not None
