"""The shipped FHIR ValueSets: loaded as R4 JSON, with their provenance, well-formed codes
(check digits included), and the reader's handling of expansion vs compose."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from service.engine import valuesets
from service.engine.terminology import load_terminology, load_yaml
from service.engine.valuesets import (
    ATC,
    ICD10CM,
    LOINC,
    NDC,
    RXNORM,
    SNOMED,
    ValueSetError,
    code_problem,
    key_of,
    mod10_ok,
    parse,
    verhoeff_ok,
)

SHIPPED = valuesets.load()


def test_the_47_shipped_sets_load_with_their_provenance():
    assert len(SHIPPED) == 47
    for key, vs in SHIPPED.items():
        assert vs.url == f"urn:ketamine-cds:ValueSet:{key}" and key_of(vs.id) == key
        assert vs.members and vs.sources, key
        assert vs.origin == "shipped"
    data = resources.files("service.engine") / "data" / "valuesets"
    assert (data / "SOURCES.md").is_file()  # shipped beside the sets (package data)


def test_flagged_codes_need_text():
    ket = {m.code: m for m in SHIPPED["ketamine_esketamine"].members}
    assert (
        ket["238082"].needs_text and ket["2201623"].needs_text
    )  # display-not-retrieved, secondary
    assert not ket["6130"].needs_text and not ket["50458-028-02"].needs_text
    preg = {m.code: m for m in SHIPPED["obs_pregnancy_tests"].members}
    assert preg["82810-3"].needs_text and not preg["2106-3"].needs_text


def test_the_shipped_sets_pass_the_check():
    terms = load_terminology()
    used = {key for concept in terms.concepts.values() for key in concept.valuesets}
    loaded, found = valuesets.problems(wanted=used)
    assert found == [] and len(loaded) == 47


@pytest.mark.parametrize("code", ["274100004", "22298006", "16025471000119107", "38341003"])
def test_snomed_ids_from_the_sets_pass_verhoeff(code):
    assert verhoeff_ok(code) and code_problem(SNOMED, code) is None


@pytest.mark.parametrize(
    ("system", "code", "why"),
    [
        (SNOMED, "274100005", "Verhoeff"),  # last digit changed
        (SNOMED, "0274100004", "6-18 digits"),
        (SNOMED, "274100014", "partition"),  # a description id's partition
        (LOINC, "8480-7", "mod-10"),
        (LOINC, "84806", "digits, '-', check digit"),
        (ICD10CM, "I71-4", "ICD-10-CM"),
        (ICD10CM, "171.4", "ICD-10-CM"),
        (RXNORM, "06130", "RxNorm"),
        (RXNORM, "61a0", "RxNorm"),
        (ATC, "N01AX0", "ATC"),
        (ATC, "X01AX03", "ATC"),
        (NDC, "50458-28", "NDC"),
    ],
)
def test_malformed_codes_are_named(system, code, why):
    problem = code_problem(system, code)
    assert problem and why in problem


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (LOINC, "8480-6"),
        (LOINC, "85354-9"),
        (LOINC, "LA15173-0"),  # an answer code: shape only
        (ICD10CM, "I67.1"),
        (ICD10CM, "F10-F19"),  # a tabular-list block, as the sets list headers
        (ICD10CM, "Z3A.01"),
        (ATC, "N"),
        (ATC, "N06AX27"),
        (NDC, "50458-028-02"),
        (NDC, "71872-7296-1"),
        (NDC, "0409-2051"),
        (RXNORM, "6130"),
    ],
)
def test_well_formed_codes_pass(system, code):
    assert code_problem(system, code) is None


def test_mod10_is_luhn():
    assert mod10_ok("84806") and mod10_ok("442616") and not mod10_ok("442617")


def test_an_invalid_r4_valueset_is_reported(tmp_path):
    doc = {
        "resourceType": "ValueSet",
        "id": "local-x",
        "status": "active",
        "experimental": "maybe",  # a boolean in R4
        "compose": {"include": [{"system": SNOMED, "concept": [{"code": "274100004"}]}]},
    }
    (tmp_path / "x.json").write_text(json.dumps(doc), "utf-8")
    _, found = valuesets.problems(tmp_path)
    assert len(found) == 1 and "x.json" in found[0] and "experimental" in found[0]


def test_a_name_the_rules_use_but_no_set_holds_is_reported():
    _, found = valuesets.problems(wanted=["aneurysm", "no_such_set"])
    assert found == ["no_such_set: named by the rules but not loaded"]


def test_expansion_wins_over_compose_and_nested_contains_are_read():
    doc = {
        "resourceType": "ValueSet",
        "id": "Nested-Set",
        "compose": {"include": [{"system": SNOMED, "concept": [{"code": "1"}]}]},
        "expansion": {
            "contains": [
                {
                    "system": SNOMED,
                    "code": "38341003",
                    "display": "Hypertension",
                    "contains": [
                        {"system": SNOMED, "code": "59621000", "display": "Essential hypertension"}
                    ],
                }
            ]
        },
    }
    parsed = parse(doc, "test").valueset
    assert parsed.key == "nested_set"
    assert [m.code for m in parsed.members] == ["38341003", "59621000"]


def test_compose_excludes_and_self_inclusion_cycles(tmp_path):
    a = {
        "resourceType": "ValueSet",
        "id": "a",
        "compose": {"include": [{"valueSet": ["http://x/ValueSet/b"]}]},
    }
    b = {
        "resourceType": "ValueSet",
        "id": "b",
        "compose": {"include": [{"valueSet": ["http://x/ValueSet/a"]}]},
    }
    (tmp_path / "a.json").write_text(json.dumps(a), "utf-8")
    (tmp_path / "b.json").write_text(json.dumps(b), "utf-8")
    with pytest.raises(ValueSetError, match="includes itself"):
        valuesets.load(tmp_path)


def test_two_site_files_with_one_id_are_refused(tmp_path):
    doc = {
        "resourceType": "ValueSet",
        "id": "dup",
        "compose": {"include": [{"system": SNOMED, "concept": [{"code": "38341003"}]}]},
    }
    for name in ("one.json", "two.json"):
        (tmp_path / name).write_text(json.dumps(doc), "utf-8")
    with pytest.raises(ValueSetError, match="also defined by"):
        valuesets.load(tmp_path)


def test_every_alias_of_the_old_names_resolves_to_shipped_sets():
    data = load_yaml("valuesets.yaml")
    terms = load_terminology()
    for alias, targets in data["aliases"].items():
        for target in targets if isinstance(targets, list) else [targets]:
            assert terms.concepts[target].valuesets, (alias, target)


def test_gap_codes_in_the_yaml_are_well_formed_and_in_no_shipped_set():
    data = load_yaml("valuesets.yaml")
    uris = data["systems"]
    shipped = {(m.system, m.code) for vs in SHIPPED.values() for m in vs.members}
    for name, spec in data["concepts"].items():
        for c in (spec or {}).get("codes") or ():
            uri = uris[c["system"]]
            if c.get("match") != "prefix":
                assert code_problem(uri, c["code"]) is None, (name, c)
            assert (uri, c["code"]) not in shipped, f"{name}: {c['code']} is shipped: drop it"


def test_every_listed_loinc_code_is_in_a_set_or_confirmed_by_text():
    terms = load_terminology()
    filters = terms.loinc_filters()  # raises for a code in no set without text
    assert filters["8480-6"] is None and filters["44261-6"] is None
    assert filters["82810-3"] is not None  # secondary-source: needs text
    assert filters["55284-4"] is not None  # Synthea's panel code: in no set
