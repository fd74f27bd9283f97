"""The terminology matcher (ketamine-rules.md §3a): codes from the FHIR ValueSets, ICD-10-CM
exact after normalising, NDC by product, text where codes do not reach (negation-aware,
whole words), a site folder that replaces or adds sets, and the text-twin property: a record
whose codes are all replaced by their text-only twins fires the same rules."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks.service import ServiceCatalog, handle
from service.config import Settings
from service.engine.terminology import (
    MatchedOn,
    ValueSetError,
    affirmed,
    find_affirmed,
    load_terminology,
    ndc_product,
    pattern_heads,
    word_starts,
)
from service.tools.fixtures import card_rules, load, names
from service.web.app import build_engine

SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
ATC = "http://www.whocc.no/atc"
LOCAL = "urn:oid:1.2.3.4.5"

TERMS = load_terminology()


def coded(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": text} if text else {})}


def match(concept: dict, name: str):
    return TERMS.member(concept, name)


# -- codes ---------------------------------------------------------------------------------


def test_icd10cm_is_exact_after_normalising_case_and_dots():
    for code in ("I67.1", "i67.1", "I671"):  # a header the set lists
        m = match(coded(ICD, code), "aneurysm")
        assert m and m.how is MatchedOn.CODE and m.coding.code == code
    # a leaf the set does not list is not a member by prefix: the sets enumerate leaves
    assert match(coded(ICD, "I67.1ZZ"), "aneurysm") is None
    assert match(coded(ICD, "I7"), "aneurysm") is None  # no prefix semantics


def test_icd10cm_codes_decide_a_deliberate_exclusion_stays_excluded():
    # F17 nicotine is outside substance_use_disorder on purpose; its text does not bring it in
    nicotine = coded(ICD, "F17.210", "Nicotine dependence, cigarettes, uncomplicated")
    assert match(nicotine, "substance_use_disorder") is None
    # an ICD code of another chapter with a matching text is not matched on that text either
    assert match(coded(ICD, "Z86.79", text="history of aneurysm"), "aneurysm") is None


def test_snomed_in_the_set_counts_on_the_code_alone():
    m = match(coded(SNOMED, "274100004"), "intracerebral_haemorrhage")
    assert m and m.how is MatchedOn.CODE and m.source == "intracerebral_haemorrhage"
    assert m.display  # the set's display, for the card


def test_snomed_outside_the_set_matches_on_its_text():
    # 127295002 is Synthea's "Traumatic brain injury": in no source (SOURCES.md), so text
    tbi = coded(SNOMED, "127295002", "Traumatic brain injury (disorder)")
    m = match(tbi, "traumatic_brain_injury")
    assert m and m.on_text and m.coding is None
    assert m.words == "Traumatic brain injury" and m.text == "Traumatic brain injury (disorder)"
    assert m.describe().startswith("matched on text: ‘Traumatic brain injury (disorder)’")


def test_rxnorm_code_alone_finds_the_drug_class_and_names_the_ingredient():
    benzo = next(
        m for m in TERMS.valuesets["benzodiazepines"].members if "alprazolam" in m.display.lower()
    )
    concept = coded(RXNORM, benzo.code)  # no display, no text: the code alone
    ings = TERMS.ingredients(concept)
    assert ("alprazolam", "benzodiazepines", MatchedOn.CODE) in [
        (i.name, i.drug_class, i.how) for i in ings
    ]
    assert "cns_depressants" in {i.drug_class for i in ings}  # the alias R20 reads


def test_drug_name_is_the_fallback_for_uncoded_or_local_medications():
    ings = TERMS.ingredients(coded(LOCAL, "X1", "Lorazepam 1 mg tab"))
    assert [(i.name, i.drug_class, i.how) for i in ings if i.drug_class == "benzodiazepines"] == [
        ("lorazepam", "benzodiazepines", MatchedOn.TEXT)
    ]
    assert TERMS.ingredients({"text": "paracetamol 500 mg"}) == ()


def test_ketamine_and_esketamine_are_told_apart():
    spravato = coded(NDC, "50458-028-02")
    assert match(spravato, "esketamine_drug").how is MatchedOn.CODE
    assert match(spravato, "ketamine_drug") is None
    assert match(coded(NDC, "50458-028"), "esketamine_drug")  # product level (spec §2)
    assert match(coded(NDC, "50458002803"), "esketamine_drug")  # 11 digits, no hyphens
    assert match(coded(ATC, "N01AX03"), "ketamine_drug").how is MatchedOn.CODE
    assert match({"text": "S-ketamine 25 mg IV"}, "esketamine_drug").on_text
    assert match({"text": "esketamine"}, "ketamine_drug") is None  # whole word


def test_flagged_codes_count_only_with_matching_text():
    # 238082: display-not-retrieved in ketamine_esketamine
    assert match(coded(RXNORM, "238082"), "ketamine_drug") is None
    m = match(coded(RXNORM, "238082", "ketamine HCl 50 MG/ML Injectable Solution"), "ketamine_drug")
    assert m and m.how is MatchedOn.CODE_AND_TEXT


def test_allergy_to_ketamine_by_rxnorm_ingredient_alone():
    assert match(coded(RXNORM, "6130"), "ketamine_allergy").how is MatchedOn.CODE


def test_ndc_product_forms():
    assert ndc_product("50458-028-02") == ndc_product("50458-0028") == "50458-0028"
    assert ndc_product("0409-2051-05") == "00409-2051"
    assert ndc_product("5045802802") is None  # 10 digits without hyphens: ambiguous


# -- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("h/o AVM", "arteriovenous_malformation"),
        ("History of cerebral aneurysm, clipped 2015", "aneurysm"),
        ("Schizoaffective disorder", "psychosis"),
        ("Glaucoma, primary open angle", "glaucoma"),
        ("thyroid storm 2019", "thyroid_storm"),
        ("Non-ST elevation (NSTEMI) myocardial infarction", "acute_mi"),
    ],
)
def test_text_only_entries_match(text, name):
    m = match({"text": text}, name)
    assert m and m.on_text and m.coding is None


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("no history of aneurysm", "aneurysm"),
        ("denies AVM", "arteriovenous_malformation"),
        ("Family history of stroke", "stroke_tia"),
        ("Major depressive disorder, severe without psychotic features", "psychosis"),
        ("Thyrotoxicosis without thyrotoxic crisis or storm", "thyroid_storm"),
        ("Intracranial haemorrhage ruled out", "intracerebral_haemorrhage"),
        ("CADASIL", "ischaemic_heart_disease"),
        ("nonpregnant", "pregnancy"),
        ("Miscarriage in first trimester", "pregnancy_obstetric"),
        ("Heat stroke", "stroke_tia"),
        ("Non-ischemic cardiomyopathy", "ischaemic_heart_disease"),
        ("Psychogenic non-epileptic seizures", "seizure_disorder"),
    ],
)
def test_negated_or_partial_words_do_not_match(text, name):
    assert match({"text": text}, name) is None


def test_negation_is_read_in_the_clause_only():
    text = "No diabetes; aneurysm of abdominal aorta"
    start = text.index("aneurysm")
    assert affirmed(text, start, start + 8)
    assert not affirmed("no known aneurysm", 9, 17)
    assert find_affirmed(TERMS.concepts["aneurysm"].text, "aneurysm excluded") is None


def test_the_pre_test_never_skips_a_concept_whose_patterns_match():
    """A concept is skipped when no word of the text starts as its matches would; over every
    display of every set (and the displays' lower/upper case), that never hides a match."""
    texts = {m.display for vs in TERMS.valuesets.values() for m in vs.members if m.display}
    texts |= {t.upper() for t in list(texts)[:2000]} | {"h/o AVM", "S-ketamine", "(pre)eclampsia"}
    read = [c for c in TERMS.concepts.values() if c.text is not None and c.heads is not None]
    assert len(read) > 40  # the pre-test applies to nearly every concept
    for text in texts:
        starts = word_starts(text)
        for c in read:
            if c.heads.isdisjoint(starts):
                assert not c.text.search(text), (c.name, text)


def test_pattern_heads():
    assert pattern_heads(r"\baneurysm") == {"aneu"}
    assert pattern_heads(r"\b(pre-?)?eclampsia\b") == {"pre", "pre-", "ecla"}
    assert pattern_heads(r"(?<!heat )\bstroke\b") == {"stro"}
    assert pattern_heads(r"\bAVMs?\b") == {"avm", "avms"}
    assert pattern_heads(r"aneurysm") is None  # no leading \b: always tried
    assert pattern_heads(r"\b\w+ disease") is None


def test_every_concept_a_rule_names_with_text_has_patterns_that_compile():
    for name, concept in TERMS.concepts.items():
        if concept.valuesets and not name.startswith("obs_"):
            assert concept.text is not None or not concept.valuesets, name


# -- sites -------------------------------------------------------------------------------------


def site_set(key: str, concepts: list[dict], **extra: Any) -> dict:
    return {
        "resourceType": "ValueSet",
        "id": key,
        "url": f"http://hospital.example/ValueSet/{key}",
        "status": "active",
        "compose": {"include": [{"system": SNOMED, "concept": concepts}]},
        **extra,
    }


LOCAL_AVM = {"code": "1234567890", "display": "Local AVM concept"}


def test_site_policy_drugs_under_an_old_class_name_go_to_its_catch_all():
    terms = load_terminology(extra_drugs={"cns_depressants": ["lorazepamum"]})
    classes = {i.drug_class for i in terms.ingredients({"text": "Lorazepamum 1 mg"})}
    assert classes == {"cns_depressants_other", "cns_depressants"}  # not benzodiazepines


def test_a_site_folder_replaces_a_set_with_the_same_id(tmp_path):
    (tmp_path / "avm.json").write_text(
        json.dumps(site_set("arteriovenous-malformation", [LOCAL_AVM])), "utf-8"
    )
    terms = load_terminology(tmp_path)
    vs = terms.valuesets["arteriovenous_malformation"]
    assert vs.origin.endswith("avm.json") and [m.code for m in vs.members] == ["1234567890"]
    assert terms.member(coded(SNOMED, "1234567890"), "avm").how is MatchedOn.CODE
    # the shipped codes are gone: Q28.2 now counts only by its display text
    assert terms.member(coded(ICD, "Q28.2"), "avm") is None


def test_a_site_set_can_extend_the_shipped_one_by_including_it(tmp_path):
    doc = site_set("arteriovenous-malformation", [LOCAL_AVM])
    doc["compose"]["include"].append(
        {"valueSet": ["urn:ketamine-cds:ValueSet:arteriovenous_malformation"]}
    )
    (tmp_path / "avm.json").write_text(json.dumps(doc), "utf-8")
    terms = load_terminology(tmp_path)
    assert terms.member(coded(SNOMED, "1234567890"), "avm")
    assert terms.member(coded(ICD, "Q28.2"), "avm").how is MatchedOn.CODE


def test_a_site_set_of_local_codes_matches_them_in_their_own_system(tmp_path):
    doc = {
        "resourceType": "ValueSet",
        "id": "aneurysm",
        "compose": {
            "include": [
                {"system": LOCAL, "concept": [{"code": "AN-7", "display": "Aneurysm (local)"}]},
                {"valueSet": ["urn:ketamine-cds:ValueSet:aneurysm"]},
            ]
        },
    }
    (tmp_path / "aneurysm.json").write_text(json.dumps(doc), "utf-8")
    terms = load_terminology(tmp_path)
    m = terms.member(coded(LOCAL, "AN-7"), "aneurysm")
    assert m and m.how is MatchedOn.CODE and m.coding.system == LOCAL


def test_a_site_set_that_drops_a_loinc_code_the_rules_read_fails_at_start(tmp_path):
    doc = {
        "resourceType": "ValueSet",
        "id": "obs-blood-pressure",
        "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": "8480-6"}]}]},
    }
    (tmp_path / "bp.json").write_text(json.dumps(doc), "utf-8")
    with pytest.raises(ValueSetError, match=r"loinc\.bp_panel: 85354-9 is in no loaded"):
        load_terminology(tmp_path)


def test_a_site_folder_adds_a_set_with_a_new_id(tmp_path):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": site_set("local-ect", [{"code": "999999999", "display": "x"}])}],
    }
    (tmp_path / "vsac.json").write_text(json.dumps(bundle), "utf-8")
    terms = load_terminology(tmp_path)
    assert "local_ect" in terms.valuesets and len(terms.valuesets) == 48
    assert terms.codes("local_ect") == {"999999999"}
    assert "50458-028-02" in TERMS.codes("esketamine_drug", "ndc")
    assert "6130" not in TERMS.codes("esketamine_drug")  # the display filter applies
    assert TERMS.codes("hypertensive_encephalopathy") == {"I67.4"}  # a gap code
    assert TERMS.codes("obs_phq9", "http://loinc.org") == {"44261-6", "89204-2"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"resourceType": "Patient", "id": "x"}', "not a FHIR ValueSet"),
        ('{"resourceType": "ValueSet", "id": "x"}', "nothing to match"),
        (
            '{"resourceType": "ValueSet", "id": "x", "compose": {"include": '
            '[{"system": "http://snomed.info/sct", "filter": [{"property": "concept"}]}]}}',
            "needs a terminology server",
        ),
        (
            '{"resourceType": "ValueSet", "id": "x", "compose": {"include": '
            '[{"valueSet": ["http://nowhere/ValueSet/y"]}]}}',
            "is not a loaded value set",
        ),
    ],
)
def test_a_bad_site_file_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content, "utf-8")
    with pytest.raises(ValueSetError, match=message) as caught:
        load_terminology(tmp_path)
    assert "bad.json" in str(caught.value)


def test_a_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueSetError, match="not a folder"):
        load_terminology(tmp_path / "missing")


def test_the_app_refuses_a_bad_folder_as_a_configuration_error(tmp_path):
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="not a folder"):
        build_engine(Settings(valuesets_dir=str(tmp_path / "missing")))


# -- the text-twin property -----------------------------------------------------------------

ENGINE = build_engine(Settings())
CATALOG = ServiceCatalog(ENGINE.services())
FIXTURES = [n for n in names() if not load(n)[1].get("fhir_data_from")]
#: where a resource keeps the CodeableConcept matched against the value sets (observations
#: are read by their LOINC codes, which have no text fallback: §3a)
CONCEPT_FIELDS = {
    "Condition": "code",
    "AllergyIntolerance": "code",
    "Procedure": "code",
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
    "Medication": "code",
}
DISPLAYS = {
    (vs.url, m.system, m.code): m.display
    for vs in TERMS.valuesets.values()
    for m in vs.members
    if m.display
}
BY_CODE = {(system, code): d for (_, system, code), d in DISPLAYS.items()}


def twin(concept: dict) -> dict:
    """The text-only twin of a CodeableConcept: the set's display of its code (else the
    coding's own display, else its text), and no coding."""
    texts = []
    for c in concept.get("coding") or ():
        if isinstance(c, dict):
            texts.append(BY_CODE.get((c.get("system"), c.get("code"))) or c.get("display"))
    text = next((t for t in texts if t), None) or concept.get("text")
    return {"text": text} if text else {}


def concepts(request: dict) -> list[tuple[dict, str]]:
    """(resource, field) of every coded concept in the request's prefetch and draft orders."""
    out = []
    resources = [
        e.get("resource", e)
        for value in (request.get("prefetch") or {}).values()
        if isinstance(value, dict)
        for e in (value.get("entry") or [value])
    ]
    resources += list((request.get("context", {}).get("draftOrders") or {}).get("entry") or ())
    for r in resources:
        r = r.get("resource", r)
        field = CONCEPT_FIELDS.get(r.get("resourceType"))
        if field and isinstance(r.get(field), dict) and r[field].get("coding"):
            out.append((r, field))
    return out


def fired(request: dict, service: str) -> dict[str, str]:
    _, response = handle(CATALOG.get(service), request, None, "http://cds.test")
    return card_rules(response.to_json())


def twinned(request: dict, chosen: set[int] | None = None) -> dict:
    request = copy.deepcopy(request)
    for i, (resource, field) in enumerate(concepts(request)):
        if chosen is None or i in chosen:
            resource[field] = twin(resource[field])
    return request


@pytest.mark.parametrize("name", FIXTURES)
def test_a_record_of_text_twins_fires_the_same_rules(name):
    request, expected = load(name)
    assert sorted(fired(twinned(request), expected["service"])) == sorted(
        fired(request, expected["service"])
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.data())
def test_any_mix_of_codes_and_text_twins_fires_the_same_rules(name, data):
    request, expected = load(name)
    n = len(concepts(request))
    chosen = data.draw(st.sets(st.integers(0, max(n - 1, 0)))) if n else set()
    assert sorted(fired(twinned(request, chosen), expected["service"])) == sorted(
        fired(request, expected["service"])
    )
