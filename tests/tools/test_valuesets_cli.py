"""``ketamine-cds valuesets list|show|check``: the shipped sets and a site folder's, with the
exit codes of the other commands (0 OK, 1 problems, 2 bad input, 3 configuration)."""

from __future__ import annotations

import json

import orjson
import pytest
from click.testing import CliRunner

from service.tools.cli import main
from service.tools.cli.valuesets import rule_names

SNOMED = "http://snomed.info/sct"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["valuesets", *args], env=env)


def site_set(key: str, code: str = "274100004", **extra) -> dict:
    return {
        "resourceType": "ValueSet",
        "id": key,
        "status": "active",
        "compose": {"include": [{"system": SNOMED, "concept": [{"code": code}]}]},
        **extra,
    }


def test_check_passes_on_the_shipped_sets():
    result = run("check")
    assert result.exit_code == 0, result.output
    assert "47 value sets" in result.output and result.output.strip().endswith("OK")


def test_list_shows_every_set_with_its_codes():
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.output)
    assert len(rows) == 47
    aneurysm = next(r for r in rows if r["key"] == "aneurysm")
    assert aneurysm["codes"] == {"icd10cm": 53, "snomed": 18}
    assert aneurysm["origin"] == "shipped" and "aneurysm" in aneurysm["concepts"]
    text = run("list").output
    assert "substance_use_disorder" in text and "47 value sets" in text


def test_show_takes_the_id_or_the_file_name():
    for key in ("acute-coronary-syndrome", "acute_coronary_syndrome.json"):
        result = run("show", key)
        assert result.exit_code == 0, result.output
        assert "used by: acute_coronary_syndrome, unstable_angina" in result.output
        assert "VSAC OID" in result.output  # the provenance
    body = orjson.loads(run("show", "ketamine-esketamine", "--json").output)
    flagged = {m["code"] for m in body["members"] if m.get("needs_text")}
    assert "238082" in flagged and "6130" not in flagged


def test_show_an_unknown_set_is_bad_input():
    result = run("show", "aneurism")
    assert result.exit_code == 2
    assert "did you mean aneurysm" in result.output


def test_a_site_folder_from_the_setting_replaces_and_adds(tmp_path):
    (tmp_path / "avm.json").write_text(
        json.dumps(site_set("arteriovenous-malformation", "234142008")), "utf-8"
    )
    (tmp_path / "new.json").write_text(json.dumps(site_set("local-thing")), "utf-8")
    env = {"KCDS_VALUESETS_DIR": str(tmp_path)}
    rows = {r["key"]: r for r in orjson.loads(run("list", "--json", env=env).output)}
    assert len(rows) == 48 and rows["local_thing"]["origin"].endswith("new.json")
    assert rows["arteriovenous_malformation"]["codes"] == {"snomed": 1}
    result = run("check", env=env)
    assert result.exit_code == 0, result.output
    assert f"site folder {tmp_path}" in result.output


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (site_set("local-x", "274100005"), "Verhoeff check digit is wrong"),
        (site_set("local-y", experimental="maybe"), "not a valid R4 ValueSet at experimental"),
    ],
)
def test_check_reports_problems_with_exit_1(tmp_path, doc, problem):
    (tmp_path / "site.json").write_text(json.dumps(doc), "utf-8")
    result = run("check", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert problem in result.output and "1 problem(s)" in result.output


def test_a_concept_whose_set_a_site_emptied_of_its_filtered_codes_is_a_problem(tmp_path):
    # thyroid_storm takes the hyperthyroidism entries "with ... crisis or storm"; a site set
    # without them leaves the concept no code
    (tmp_path / "hyper.json").write_text(json.dumps(site_set("hyperthyroidism")), "utf-8")
    result = run("check", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "concept 'thyroid_storm' selects no code of ('hyperthyroidism',)" in result.output


def test_check_reports_every_unusable_file_with_exit_1(tmp_path):
    (tmp_path / "broken.json").write_text("{", "utf-8")
    (tmp_path / "patient.json").write_text('{"resourceType": "Patient"}', "utf-8")
    result = run("check", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "broken.json: not readable JSON" in result.output
    assert "patient.json: not a FHIR ValueSet" in result.output
    assert "2 problem(s)" in result.output


def test_a_missing_folder_is_bad_input_as_an_option_and_a_configuration_error_as_a_setting(
    tmp_path,
):
    result = run("check", "--dir", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "not a folder" in result.output
    result = run("check", env={"KCDS_VALUESETS_DIR": str(tmp_path / "missing")})
    assert result.exit_code == 3 and "not a folder" in result.output
    (tmp_path / "broken.json").write_text("{", "utf-8")
    result = run("list", env={"KCDS_VALUESETS_DIR": str(tmp_path)})
    assert result.exit_code == 3 and "broken.json" in result.output


def test_the_rule_scan_finds_the_names_the_rules_use():
    names = {name for _, name in rule_names()}
    assert {"aneurysm", "psychosis", "ketamine_drug", "esketamine_drug"} <= names
    assert len(names) > 30  # the scan still sees the rules (every R/P rule reads a concept)


def test_the_rule_scan_reads_helpers_tuples_and_loops():
    import ast

    from service.tools.cli.valuesets import _names_in

    source = """
def medications(ev, drug_class): ...
def f(ev):
    _interaction(ev, ("opioids", "maois"), "x y")
    for c in ("lamotrigine", "clonidine"):
        medications(ev, c)
    return [m for m in ms if m.valueset in ("glaucoma",)]
"""
    found = set(_names_in(ast.parse(source), {"medications", "_interaction"}))
    assert found == {"opioids", "maois", "lamotrigine", "clonidine", "glaucoma"}
