"""Cards, directly (spec §7): one card per critical or warning finding, info findings folded
into the plan card, ranking, de-duplication, override reasons, and suggestions built as valid
FHIR R4 resources."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_hooks.service import ServiceCatalog, handle
from service.config import Settings
from service.engine.cards import RULE_SYSTEM, RenderContext, evidence_grade, render
from service.engine.overrides import MAX_PER_RULE
from service.engine.overrides import catalogue as override_catalogue
from service.engine.record import Fact
from service.engine.rules import RULES, Finding
from service.engine.rules.base import SuggestionSpec
from service.tools.convert import ketamine_order
from service.tools.fixtures import load, names
from service.web.app import build_engine, create_app

CTX = RenderContext("p1", "https://cds.example.org", "policy-7")
ORDER = ketamine_order(60, "iv", 40, patient_id="p1", authored="2026-03-02T09:30:00Z")
REF = "MedicationRequest/draft-ketamine-1"
#: the rules version 2 of the specification adds (their reasons are declared ahead of them)
SPEC_V2_RULES = ("R41", "R42", "R43", "R44", "P05", "P06")


def found(rule_id, severity, summary=None, *suggestions, facts=()):
    return Finding(
        severity,
        summary or f"{rule_id} {severity} for IV ketamine",
        f"Why {rule_id} matters.\nWhat to do.",
        tuple(facts),
        tuple(suggestions),
        rule_id=rule_id,
        order=REF,
    )


def test_one_card_per_warning_or_critical_ranked_and_info_folded_into_the_plan():
    cards = render(
        [
            found("R38", "info"),
            found("R12", "warning"),
            found("R27", "info"),
            found("R09", "critical"),
        ],
        {REF: ORDER},
        CTX,
    )
    assert [(c.indicator, c.extension["ketamine-cds.rules"]) for c in cards] == [
        ("critical", ["R09"]),
        ("warning", ["R12"]),
        ("info", ["R38", "R27"]),
    ]
    plan = cards[-1]
    assert "**Also note**" in plan.detail and "(R27)" in plan.detail
    assert all(c.extension["ketamine-cds.policy"] == "policy-7" for c in cards)
    assert len({c.uuid for c in cards}) == 3


def test_the_same_finding_twice_makes_one_card():
    cards = render([found("R12", "warning"), found("R12", "warning")], {REF: ORDER}, CTX)
    assert len(cards) == 1


def test_cards_name_their_rule_source_and_link_to_the_catalogue():
    [card] = render([found("R12", "warning")], {REF: ORDER}, CTX)
    rule = RULES["R12"]
    assert (card.source.topic.code, card.source.topic.system) == ("R12", RULE_SYSTEM)
    assert card.source.url == card.links[0].url == "https://cds.example.org/rules/R12"
    assert "(rule R12)" in card.detail and rule.title in card.source.label


def test_facts_are_listed_under_found_in_the_record():
    fact = Fact("Condition/c1", value="text “glaucoma” · active")
    [card] = render([found("R12", "warning", None, facts=[fact])], {REF: ORDER}, CTX)
    assert "**Found in the record**\n- `Condition/c1` · text “glaucoma” · active" in card.detail
    assert "date not recorded" not in card.detail  # spec §7 v2: an undated fact shows no date


def test_override_reasons_only_on_warning_and_critical_cards():
    cards = render([found("R09", "critical"), found("R38", "info")], {REF: ORDER}, CTX)
    assert cards[0].override_reasons and all(r.display for r in cards[0].override_reasons)
    assert cards[1].override_reasons == ()


def test_a_long_summary_is_cut_under_140_characters():
    [card] = render([found("R12", "warning", "x" * 200)], {REF: ORDER}, CTX)
    assert len(card.summary) < 140 and card.summary.endswith("…")


def test_update_dose_suggestion_is_the_order_with_the_corrected_dose():
    spec = SuggestionSpec("update-dose", "Change to 35 mg", dose_mg=35.0)
    [card] = render([found("R25", "warning", None, spec)], {REF: ORDER}, CTX)
    [action] = card.suggestions[0].actions
    assert action.type == "update"
    MedicationRequest.model_validate(action.resource)
    dose = action.resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose["value"] == 35.0 and dose["code"] == "mg"
    assert "text" not in action.resource["dosageInstruction"][0]
    assert ORDER["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 60
    assert card.selection_behavior == "at-most-one"


def test_update_dose_reads_a_dosage_sent_as_one_object_and_writes_an_array():
    order = {**ORDER, "dosageInstruction": ORDER["dosageInstruction"][0]}
    spec = SuggestionSpec("update-dose", "Change to 35 mg", dose_mg=35.0)
    [card] = render([found("R25", "warning", None, spec)], {REF: order}, CTX)
    [action] = card.suggestions[0].actions
    MedicationRequest.model_validate(action.resource)
    [dosage] = action.resource["dosageInstruction"]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 35.0 and "text" not in dosage
    assert order["dosageInstruction"]["doseAndRate"][0]["doseQuantity"]["value"] == 60


def test_a_draft_invalid_beyond_its_dose_keeps_its_card_without_an_update_suggestion():
    order = {**ORDER, "category": {"text": "outpatient"}}  # as the CDS Hooks Sandbox sends it
    spec = SuggestionSpec("update-dose", "Change to 35 mg", dose_mg=35.0)
    [card] = render([found("R25", "critical", None, spec)], {REF: order}, CTX)
    assert (card.indicator, card.suggestions, card.selection_behavior) == ("critical", (), None)


def test_delete_suggestion_names_the_draft_order():
    spec = SuggestionSpec("delete-order", "Remove the ketamine order")
    [card] = render([found("R09", "critical", None, spec)], {REF: ORDER}, CTX)
    [action] = card.suggestions[0].actions
    assert (action.type, action.resource_id) == ("delete", REF)


def test_a_suggestion_appears_once_per_response_on_the_first_card_that_offers_it():
    """Spec §7 v2: no weight order both on the R34 card and on the plan card."""
    weight = SuggestionSpec("order-observation", "Order a weight", "29463-7", "Body weight")
    spo2 = SuggestionSpec("order-observation", "Order SpO2", "59408-5", "SpO2")
    cards = render(
        [
            found("R38", "info", None, spo2),
            found("R34", "warning", None, weight),
            found("R33", "info", None, weight),
        ],
        {REF: ORDER},
        CTX,
    )
    r34, plan = cards
    assert plan.extension["ketamine-cds.rules"] == ["R38", "R33"]
    [action] = r34.suggestions[0].actions
    assert action.type == "create"
    ServiceRequest.model_validate(action.resource)
    assert action.resource["subject"] == {"reference": "Patient/p1"}
    assert action.resource["code"]["coding"][0]["code"] == "29463-7"
    [plan_suggestion] = plan.suggestions
    assert plan_suggestion.actions[0].resource["code"]["coding"][0]["code"] == "59408-5"
    assert plan.selection_behavior == "any"


def test_one_removal_suggestion_per_order_across_contraindication_cards():
    remove = SuggestionSpec("delete-order", "Remove the ketamine order")
    cards = render(
        [found("R09", "critical", None, remove), found("R04", "critical", None, remove)],
        {REF: ORDER},
        CTX,
    )
    assert [len(c.suggestions) for c in cards] == [1, 0]


def test_no_findings_no_cards():
    assert render([], {}, CTX) == []


# -- v2 (spec §7): override reasons per rule, snooze, evidence grade -----------------------

UNTIL = datetime(2026, 12, 29, 9, 30, tzinfo=UTC)


def snoozing(*rules: str, drug: str = "ketamine", offered: bool = True) -> RenderContext:
    return replace(
        CTX,
        drugs={REF: "ketamine"},
        snoozed={(drug, rule): UNTIL for rule in rules},
        snooze_offered=offered,
    )


def test_each_card_offers_its_rules_own_override_reasons_and_warnings_the_snooze():
    reasons = override_catalogue()
    snooze = [s.coding for s in reasons.snooze]
    cards = render(
        [found("R09", "critical"), found("R34", "warning"), found("R38", "info")],
        {REF: ORDER},
        snoozing(),
    )
    assert list(cards[0].override_reasons) == list(reasons.for_rule("R09"))  # never snoozed
    assert list(cards[1].override_reasons) == [*reasons.for_rule("R34"), *snooze]
    assert cards[2].override_reasons == ()
    [without_registry] = render([found("R34", "warning")], {REF: ORDER}, CTX)
    assert list(without_registry.override_reasons) == list(reasons.for_rule("R34"))


def test_every_rule_declares_one_to_five_override_reasons_of_the_service_code_system():
    reasons = override_catalogue()
    for rule_id in RULES:
        declared = reasons.for_rule(rule_id)
        assert 1 <= len(declared) <= MAX_PER_RULE, rule_id
        assert {r.system for r in declared} == {reasons.system}
        assert all(r.display for r in declared)
    assert set(reasons.per_rule) <= set(RULES) | set(SPEC_V2_RULES)


def test_a_snoozed_warning_folds_into_the_plan_card_with_its_end_date():
    cards = render(
        [found("R38", "info"), found("R20", "warning"), found("R34", "warning")],
        {REF: ORDER},
        snoozing("R20"),
    )
    assert [c.extension["ketamine-cds.rules"] for c in cards] == [["R34"], ["R38", "R20"]]
    assert "(R20). Snoozed until 2026-12-29 by an earlier override." in cards[-1].detail


def test_a_snooze_is_per_drug_and_never_hides_a_critical_card():
    other_drug = render([found("R20", "warning")], {REF: ORDER}, snoozing("R20", drug="esketamine"))
    assert [c.extension["ketamine-cds.rules"] for c in other_drug] == [["R20"]]
    critical = render([found("R09", "critical")], {REF: ORDER}, snoozing("R09"))
    assert [c.indicator for c in critical] == ["critical"]


def test_a_snoozed_warning_never_becomes_a_card_of_its_own():
    assert render([found("R20", "warning")], {REF: ORDER}, snoozing("R20")) == []
    [info] = render([found("R12", "info"), found("R20", "warning")], {REF: ORDER}, snoozing("R20"))
    assert info.extension["ketamine-cds.rules"] == ["R12", "R20"]


def test_a_snoozed_warnings_orderable_monitoring_moves_to_the_plan():
    bp = SuggestionSpec("order-observation", "Order a BP", "85354-9", "Blood pressure panel")
    cards = render(
        [found("R38", "info"), found("R09", "warning", None, bp)], {REF: ORDER}, snoozing("R09")
    )
    [plan] = cards
    [action] = plan.suggestions[0].actions
    assert action.resource["code"]["coding"][0]["code"] == "85354-9"


def test_cards_carry_the_drug_they_are_about():
    [card] = render([found("R34", "warning")], {REF: ORDER}, snoozing())
    assert card.extension["ketamine-cds.drug"] == "ketamine"


def test_the_evidence_grade_is_named_where_a_rule_is_not_a_label_fact():
    editorial = [r.id for r in RULES.values() if "[E]" in r.source]
    label_only = [
        r.id
        for r in RULES.values()
        if all(s.strip() in ("S4", "S6", "S16") for s in r.source.replace(";", ",").split(","))
        and not r.thresholds
    ]
    assert editorial and label_only
    for rule_id in editorial:
        assert "editorial [E]" in evidence_grade(rule_id), rule_id
    for rule_id in label_only:
        assert evidence_grade(rule_id) == "", rule_id
    [card] = render([found(editorial[0], "warning")], {REF: ORDER}, CTX)
    assert "**Evidence grade:** editorial [E]" in card.detail


# -- over every fixture: the words and numbers of spec §7 v2 ---------------------------------

ANNOTATION = re.compile(r"\d\s*\{[^}]*\}")  # a UCUM annotation after a number: "19 {score}"
DECIMAL_BP = re.compile(r"\d+\.\d+\s*/\s*\d|\d\s*/\s*\d+\.\d+\s*mmHg|\d+\.\d+ mmHg")


def fixture_cards():
    engine = build_engine(Settings())
    catalog = ServiceCatalog(engine.services())
    for name in names():
        request, expected = load(name)
        if expected.get("fhir_data_from"):
            continue
        _, response = handle(catalog.get(expected["service"]), request, None, "http://cds.test")
        yield name, response.to_json()["cards"]


@pytest.fixture(scope="module")
def every_fixtures_cards():
    return list(fixture_cards())


def test_every_summary_fits_under_140_characters_without_being_cut(every_fixtures_cards):
    for name, cards in every_fixtures_cards:
        for card in cards:
            assert len(card["summary"]) < 140 and not card["summary"].endswith("…"), name


def test_no_ucum_annotation_undated_fact_or_fractional_blood_pressure(every_fixtures_cards):
    for name, cards in every_fixtures_cards:
        for card in cards:
            for text in (card["summary"], card["detail"]):
                assert not ANNOTATION.search(text), (name, ANNOTATION.search(text))
                assert "date not recorded" not in text, name
                assert "in the window" not in text, name  # "none recorded in the last N days"
                assert not DECIMAL_BP.search(text), (name, DECIMAL_BP.search(text))


def test_every_suggestion_appears_once_per_response(every_fixtures_cards):
    for name, cards in every_fixtures_cards:
        actions = [
            (
                a["type"],
                a.get("resourceId"),
                (a.get("resource") or {}).get("code", {}).get("coding", [{}])[0].get("code"),
                str((a.get("resource") or {}).get("dosageInstruction")),
            )
            for card in cards
            for s in card.get("suggestions", ())
            for a in s["actions"]
        ]
        assert len(actions) == len(set(actions)), name


def test_the_rule_catalogue_shows_each_rules_override_reasons_and_the_snooze():
    client = create_app(Settings(registry=False, auth="off")).test_client()
    data = client.get("/rules.json").get_json()
    r20 = next(r for r in data["rules"] if r["id"] == "R20")
    assert [r["code"] for r in r20["override_reasons"]] == [
        c.code for c in override_catalogue().for_rule("R20")
    ]
    assert [(s["code"], s["months"]) for s in data["snooze_reasons"]] == [
        ("snooze-1-month", 1),
        ("snooze-3-months", 3),
    ]
    html = client.get("/rules").get_data(as_text=True)
    assert "Co-medication reviewed and adjusted" in html and "Snooze for 3 months" in html
