"""The integration engineers' commands (service.tools.cli) through click's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from service.engine.rulebook import catalogue
from service.engine.rules import RULES
from service.tools.cli import main
from service.tools.fixtures import ROOT, load, names

SAMPLES = ROOT / "synthea"  # Synthea patients copied with their attribution


def run(*args: str, input: bytes | str | None = None, **env: str):
    return CliRunner().invoke(main, list(args), input=input, env=env or None)


def bundle_of(request: dict) -> dict:
    entries = [{"fullUrl": "urn:uuid:p1", "resource": request["prefetch"]["patient"]}]
    for key, value in request["prefetch"].items():
        if key != "patient":
            entries += [{"resource": e["resource"]} for e in value.get("entry") or ()]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture
def patient_file(tmp_path) -> Path:
    request, _ = load("r09-bp-185-fires")
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(bundle_of(request)))
    return path


# -- help and exit codes -------------------------------------------------------------------


def test_every_command_has_help_and_the_exit_codes_are_documented():
    top = run("--help")
    assert top.exit_code == 0 and "Exit codes:" in top.output
    for code in ("0  success", "1  a check", "2  bad usage", "3  configuration"):
        assert code in top.output
    commands = [
        ["evaluate"], ["request"], ["request", "build"], ["fixtures"], ["fixtures", "list"],
        ["fixtures", "check"], ["fixtures", "render"], ["rules"], ["policy"],
        ["policy", "validate"],
    ]  # fmt: skip
    for command in commands:
        result = run(*command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert "Usage: " in result.output


def test_usage_errors_exit_2():
    assert run("rules", "--nope").exit_code == 2
    assert run("fixtures", "render").exit_code == 2


# -- evaluate --------------------------------------------------------------------------------


def test_evaluate_json_is_the_response_unchanged():
    path = str(ROOT / "clean-iv-ketamine-sign" / "request.json")
    explicit, default = run("evaluate", "--json", path), run("evaluate", path)
    assert explicit.exit_code == 0 and default.exit_code == 0
    body = orjson.loads(explicit.output)
    assert [c["extension"]["ketamine-cds.rules"] for c in body["cards"]] == [["R38"]]
    assert explicit.output.startswith('{\n  "cards": [')  # indented, as before
    assert orjson.loads(default.output).keys() == body.keys()  # piped: JSON, as before


def test_evaluate_shows_cards_as_an_ehr_does():
    result = run(
        "evaluate", "--cards", "--resources", str(ROOT / "r09-bp-185-fires" / "request.json")
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ketamine-order-sign answered 2 cards (1 critical, 1 info)" in out
    assert re.search(r"evaluated in \d+\.\d ms", out)
    assert "CRITICAL" in out and "INFO" in out
    assert "Blood pressure 185/95 mmHg" in out
    assert "Found in the record" in out and "**" not in out  # markdown formatted
    assert "[ Remove this draft order ]" in out
    assert "delete MedicationRequest/draft-ketamine-1" in out
    assert "create ServiceRequest" in out and '"resourceType": "ServiceRequest"' in out
    assert "Rule R09 in the ketamine-cds catalogue →" in out
    assert "https://ketamine-cds.invalid/rules/R09" in out
    assert "Links point at https://ketamine-cds.invalid, a placeholder" in result.stderr
    assert "If overridden" in out and "Blood pressure rechecked and acceptable" in out


def test_evaluate_reads_stdin_and_reports_refusals_with_exit_2():
    raw = (ROOT / "r09-bp-185-fires" / "request.json").read_bytes()
    assert run("evaluate", "--cards", "-", input=raw).exit_code == 0
    refused = run("evaluate", "--json", "-", input=b'{"hook": "order-sign"}')
    assert refused.exit_code == 2
    assert orjson.loads(refused.stderr)["field"] == "hookInstance"
    cards = run("evaluate", "--cards", "-", input=b'{"hook": "order-sign"}')
    assert cards.exit_code == 2 and "refused (400 invalid_request)" in cards.stderr
    assert run("evaluate", "-", input=b"{not json").exit_code == 2
    assert run("evaluate", "-", "--service", "nope", input=raw).exit_code == 2


def test_evaluate_links_point_at_the_public_url():
    path = str(ROOT / "r09-bp-185-fires" / "request.json")
    for args, env in (
        (["--base-url", "https://cds.hospital.example/"], {}),
        ([], {"KCDS_PUBLIC_URL": "https://cds.hospital.example"}),
    ):
        result = run("evaluate", "--cards", *args, path, **env)
        assert "https://cds.hospital.example/rules/R09" in result.output
        assert "placeholder" not in result.stderr


def test_evaluate_says_what_a_request_is_when_given_something_else():
    result = run("evaluate", "-", input=b"{}")
    assert result.exit_code == 2
    assert 'not a CDS Hooks request: it has no "hook"' in result.stderr
    assert "request build" in result.stderr
    result = run("evaluate", "-", input=b'{"hook": "encounter-start"}')
    assert "no service answers hook 'encounter-start' (this service answers" in result.stderr


def test_evaluate_without_cards_says_so():
    path = str(ROOT / "non-ketamine-order" / "request.json")
    result = run("evaluate", "--cards", path)
    assert result.exit_code == 0 and "No cards" in result.output


# -- request build -------------------------------------------------------------------------


def test_request_build_makes_a_request_that_gives_the_fixtures_cards(patient_file, tmp_path):
    out = tmp_path / "request.json"
    built = run(
        "request", "build", "--patient", str(patient_file), "--ketamine", "35", "-o", str(out)
    )
    assert built.exit_code == 0, built.output
    assert "POST it to /cds-services/ketamine-order-sign" in built.stderr
    body = orjson.loads(out.read_bytes())
    assert body["hook"] == "order-sign" and len(body["prefetch"]) == 8
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 35
    result = run("evaluate", "--json", str(out))
    cards = orjson.loads(result.output)["cards"]
    assert "R09" in [r for c in cards for r in c["extension"]["ketamine-cds.rules"]]


def test_request_build_reads_ndjson_exports(patient_file, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    resources = [e["resource"] for e in orjson.loads(patient_file.read_bytes())["entry"]]
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for kind, items in by_type.items():
        (export / f"{kind}.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in items))
    result = run(
        "request", "build", "--patient", str(export), "--esketamine", "56", "--hook", "order-select"
    )
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)
    assert body["hook"] == "order-select" and body["context"]["selections"]
    assert "SPRAVATO" in orjson.dumps(body["context"]["draftOrders"]).decode()


def test_request_build_checks_its_options(patient_file):
    p = str(patient_file)
    assert run("request", "build", "--patient", p).exit_code == 2  # no drug
    both = run("request", "build", "--patient", p, "--ketamine", "35", "--esketamine", "56")
    assert both.exit_code == 2 and "exactly one" in both.output
    assert (
        run("request", "build", "--patient", p, "--esketamine", "56", "--route", "im").exit_code
        == 2
    )
    assert (
        run("request", "build", "--patient", p, "--ketamine", "35", "--route", "rectal").exit_code
        == 2
    )
    view = run("request", "build", "--patient", p, "--hook", "patient-view")
    assert view.exit_code == 0 and "draftOrders" not in view.stdout


def test_request_build_refuses_data_without_a_patient(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
    result = run("request", "build", "--patient", str(path), "--ketamine", "35")
    assert result.exit_code == 2 and "no Patient" in result.output


def test_request_build_from_a_synthea_sample():
    sample = sorted(SAMPLES.glob("*.json"))[0]
    built = run("request", "build", "--patient", str(sample), "--ketamine", "35")
    assert built.exit_code == 0, built.output
    shown = run("evaluate", "--cards", "-", input=built.stdout)
    assert shown.exit_code == 0 and "ketamine-order-sign answered" in shown.output


# -- fixtures --------------------------------------------------------------------------------


def test_fixtures_list():
    listed = run("fixtures", "list", "--names")
    assert listed.exit_code == 0 and listed.output.split() == names()
    as_json = orjson.loads(run("fixtures", "list", "--json").output)
    assert {f["name"] for f in as_json} == set(names())
    assert "r09-bp-185-fires" in run("fixtures", "list").output


def test_fixtures_check_passes_on_every_fixture():
    result = run("fixtures", "check")
    assert result.exit_code == 0, result.output
    assert f"{len(names())} fixtures checked: {len(names())} passed, 0 failed" in result.output


def test_fixtures_check_fails_on_a_difference(tmp_path):
    for name in ("r09-bp-185-fires", "r08-bp-150-fires"):
        (tmp_path / name).mkdir()
        for part in ("request.json", "expected.json"):
            (tmp_path / name / part).write_bytes((ROOT / name / part).read_bytes())
    expected = tmp_path / "r09-bp-185-fires" / "expected.json"
    expected.write_bytes(orjson.dumps({**orjson.loads(expected.read_bytes()), "must": ["R01"]}))
    result = run("fixtures", "check", "-v", KCDS_FIXTURES_DIR=str(tmp_path))
    assert result.exit_code == 1
    assert "FAIL r09-bp-185-fires: R01 did not fire" in result.output
    assert "ok   r08-bp-150-fires" in result.output
    assert "2 fixtures checked: 1 passed, 1 failed" in result.output


def test_fixtures_check_takes_patterns_and_a_date():
    result = run("fixtures", "check", "r09-*", "--now", "2026-01-10")
    assert result.exit_code == 0 and "6 fixtures checked" in result.output
    assert run("fixtures", "check", "zz-*").exit_code == 2
    assert run("fixtures", "check", "--now", "yesterday").exit_code == 2


def test_fixtures_render_dates_the_request():
    result = run("fixtures", "render", "r09-bp-185-fires", "--now", "2026-01-10T10:00:00Z")
    assert result.exit_code == 0
    body = orjson.loads(result.output)
    assert body["hook"] == "order-sign"
    assert body["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"].startswith(
        "2026-01-10"
    )
    compact = run("fixtures", "render", "r09-bp-185-fires", "--compact")
    assert compact.output.count("\n") == 1
    missing = run("fixtures", "render", "r09-bp-185-fire")
    assert missing.exit_code == 2 and "did you mean r09-bp-185-fires" in missing.output


# -- rules and policy --------------------------------------------------------------------------


def test_rules_lists_every_rule_with_live_thresholds():
    result = run("rules", COLUMNS="200")
    assert result.exit_code == 0
    for rule_id in RULES:
        assert rule_id in result.output
    assert "bp_hazard_systolic = 180 mmHg" in result.output


def test_rules_for_one_rule_and_as_json(tmp_path):
    one = run("rules", "--id", "r09")
    assert one.exit_code == 0 and "Hazardous blood pressure" in one.output
    assert run("rules", "--id", "R99").exit_code == 2
    site = tmp_path / "site.yaml"
    site.write_text("version: site-1\nthresholds:\n  bp_hazard_systolic: 170\n")
    data = orjson.loads(run("rules", "--id", "R09", "--json", "--policy", str(site)).output)
    assert {t["name"]: t["value"] for t in data["thresholds"]}["bp_hazard_systolic"] == 170
    from service.engine import policy

    full = orjson.loads(run("rules", "--json").output)
    assert full == orjson.loads(orjson.dumps(catalogue(policy.load())))


def test_a_bad_policy_file_is_a_configuration_error(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("thresholds: {bp_hazard_systolic: high}\n")
    result = run("rules", KCDS_POLICY_FILE=str(site))
    assert result.exit_code == 3 and "bp_hazard_systolic" in result.output


def test_policy_validate(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("version: site-2\nthresholds:\n  bp_hazard_systolic: 170\n")
    result = run("policy", "validate", str(good))
    assert result.exit_code == 0 and result.output.startswith("OK: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "thresholds:\n  bp_hazard_systolic: high\n  nope: 1\n"
        "rules:\n  R09: {severity: fatal}\n  R99: {enabled: false}\n"
        "extra_codes:\n  aneurysmm: [{system: snomed, code: '1'}]\n"
    )
    result = run("policy", "validate", str(bad))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "problem  thresholds.bp_hazard_systolic: 'high' is not of type 'number'" in lines
    assert any(line.startswith("problem  thresholds: Additional properties") for line in lines)
    assert any(line.startswith("problem  rules.R09.severity: ") for line in lines)
    assert any(line.startswith("warning  rules.R99: no rule") for line in lines)
    assert any(line.startswith("warning  extra_codes.aneurysmm: no value set") for line in lines)
    warned = tmp_path / "warned.yaml"
    warned.write_text("extra_drugs:\n  nonsense_class: [remimazolam]\n")
    assert run("policy", "validate", str(warned)).exit_code == 0
    assert run("policy", "validate", "--strict", str(warned)).exit_code == 1
    assert run("policy", "validate", str(tmp_path / "missing.yaml")).exit_code == 1
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "(top level)" in run("policy", "validate", str(tmp_path / "list.yaml")).output


# -- docs/integration.md stays true ------------------------------------------------------------

DOC = ROOT.resolve().parent / "docs" / "integration.md"  # ROOT: the package's link to fixtures/


def test_the_integration_guide_rule_table_is_the_catalogue():
    doc = DOC.read_text("utf-8")
    table = run("rules", "--markdown", KCDS_POLICY_FILE="").output
    begin, end = "<!-- rules:begin -->\n", "<!-- rules:end -->"
    written = doc.split(begin, 1)[1].split(end, 1)[0]
    assert written == table, (
        "docs/integration.md's rule table is stale: run "
        "`ketamine-cds rules --markdown --into docs/integration.md`"
    )
    for rule_id in RULES:
        assert f"| **{rule_id}** " in doc


def test_the_integration_guide_shows_the_live_prefetch_templates():
    from cds_hooks.service import ServiceCatalog
    from service.config import Settings
    from service.web.app import build_engine

    doc = DOC.read_text("utf-8")
    discovery = ServiceCatalog(build_engine(Settings()).services()).discovery()
    for service in discovery["services"]:
        assert f"`{service['id']}`" in doc
        for key, template in service["prefetch"].items():
            assert f'"{key}": "{template}"' in doc, f"{key} template differs from discovery"


def test_rules_markdown_into_needs_the_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    result = run("rules", "--markdown", "--into", str(doc))
    assert result.exit_code == 2 and "rules:begin" in result.output
    doc.write_text("before\n<!-- rules:begin -->\nold\n<!-- rules:end -->\nafter\n")
    assert run("rules", "--markdown", "--into", str(doc)).exit_code == 0
    text = doc.read_text()
    assert text.startswith("before\n<!-- rules:begin -->\nGenerated by") and "\nold\n" not in text
    assert text.endswith("<!-- rules:end -->\nafter\n") and "| **R09** " in text
