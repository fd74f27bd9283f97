"""docs/integration.md quotes code, configuration and payloads: each quote (between
``<!-- guide:NAME -->`` and ``<!-- guide:end -->``) is checked against the service, so the
guide cannot drift from what the service does."""

import json
import re
import subprocess
import sys

import orjson
import pytest

from cds_hooks.auth import ALGORITHMS, REQUIRED_CLAIMS, JwtAuthenticator, parse_trusted_issuers
from service.config import Settings
from service.engine.prefetch import PREFETCH
from service.tools.fixtures import load
from service.web.app import create_app
from tests.conftest import ROOT

GUIDE = (ROOT / "docs" / "integration.md").read_text()
VALUESET = json.loads((ROOT / "service/engine/data/valuesets/ketamine_esketamine.json").read_text())
SYSTEMS = {
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ATC": "http://www.whocc.no/atc",
    "NDC": "http://hl7.org/fhir/sid/ndc",
}


def quote(name: str) -> str:
    """The text of the guide between the markers of ``name``, without code fences."""
    found = re.findall(rf"<!-- guide:{name} -->(.*?)<!-- guide:end -->", GUIDE, re.S)
    assert len(found) == 1, f"the guide quotes {name!r} {len(found)} times"
    return re.sub(r"^\s*```\w*\s*$", "", found[0], flags=re.M).strip()


@pytest.fixture(scope="module")
def terminology():
    from service.tools.cli.common import engine

    return engine().terminology


def test_the_drug_codes_quoted_are_in_the_value_set():
    quoted = re.findall(r"(RxNorm|ATC|NDC) `([^`]+)`", quote("drug-codes"))
    assert len(quoted) >= 5
    listed = {(c["system"], c["code"]) for c in VALUESET["expansion"]["contains"]}
    assert {(SYSTEMS[system], code) for system, code in quoted} <= listed


def test_the_drug_words_quoted_are_recognised(terminology):
    from service.engine.record import ketamine_kind

    text = quote("drug-words")
    ketamine, esketamine = text.split("(ketamine);")
    for words, drug in ((ketamine, "ketamine"), (esketamine, "esketamine")):
        for word in re.findall(r"`([^`]+)`", words):
            assert ketamine_kind(terminology, {"text": f"{word} 50 mg"}) == drug, word


def test_the_example_order_is_read_as_the_guide_says(terminology):
    from service.engine.orders import ketamine_orders

    order = json.loads(quote("order-example"))
    bundle = {"resourceType": "Bundle", "entry": [{"resource": order}]}
    (read,) = ketamine_orders(terminology, bundle, None)
    assert (read.drug, read.route, read.dose_mg, read.minutes) == ("ketamine", "iv", 35, 40)


def test_the_route_codes_quoted_are_read_as_stated():
    from service.engine.orders import ROUTE_CODES, SNOMED, V3_ROUTE

    snomed, v3 = quote("route-codes").split("HL7 v3")
    for part, system in ((snomed, SNOMED), (v3, V3_ROUTE)):
        pairs = re.findall(r"`([^`]+)` \((\w+)\)", part)
        assert len(pairs) == 5
        assert all(ROUTE_CODES[(system, code)] == name for code, name in pairs), pairs


@pytest.fixture(scope="module")
def client():
    return create_app(Settings.from_env({"KCDS_AUTH": "off", "KCDS_REGISTRY": "off"})).test_client()


def test_order_select_checks_only_the_selected_orders(client):
    body = load("r09-bp-185-fires")[0]
    body["hook"] = "order-select"
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    body["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
    r = client.post("/cds-services/ketamine-order-select", json=body)
    assert r.status_code == 200 and r.get_json()["cards"]
    body["context"]["selections"] = ["MedicationRequest/another-draft"]
    r = client.post("/cds-services/ketamine-order-select", json=body)
    assert r.get_json() == {"cards": []}
    del body["context"]["selections"]
    r = client.post("/cds-services/ketamine-order-select", json=body)
    assert r.status_code == 400 and r.get_json()["field"] == "context.selections"


def test_a_readable_invalid_order_is_checked_and_the_problem_named(client):
    assert "rule D03" in quote("invalid-orders")
    body = load("r09-bp-185-fires")[0]
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["category"] = {"text": "inpatient"}  # one object where R4 has a list
    del draft["intent"]
    r = client.post("/cds-services/ketamine-order-sign", json=body)
    assert r.status_code == 200, r.get_json()
    rules = {rule for c in r.get_json()["cards"] for rule in c["extension"]["ketamine-cds.rules"]}
    assert {"R09", "D03"} <= rules, rules


def test_the_routes_listed_are_the_apps(tmp_path):
    settings = Settings.from_env(
        {
            "KCDS_AUTH": "off",  # the preview is on
            "KCDS_ADMIN_TOKEN": "a" * 40,
            "KCDS_METRICS_TOKEN": "m" * 40,
            "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
        }
    )
    app = create_app(settings)
    served = {
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if not rule.rule.endswith("/<path:filename>")  # the pages' own assets
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    listed = set(re.findall(r"`(GET|POST) ([^`]+)`", quote("routes")))
    aliases = {"{service_id}": "{id}", "{rule_id}": "{id}"}
    for old, new in aliases.items():
        served = {(m, r.replace(old, new)) for m, r in served}
    assert listed == served


def test_the_scopes_are_the_prefetch_resource_types():
    scopes = quote("scopes").split()
    assert scopes == [f"user/{kind}.read" for kind, _ in PREFETCH.values()]


def test_both_issuer_forms_quoted_parse():
    forms = re.findall(r"KCDS_TRUSTED_ISSUERS='([^']+)'", quote("issuers"))
    assert len(forms) == 2
    plain, full = (parse_trusted_issuers(form)[0] for form in forms)
    assert plain.jwks_file == full.jwks_file and full.tenants and full.jku


def test_the_jwt_quoted_has_what_the_service_checks():
    header, claims = (json.loads(line) for line in quote("jwt").splitlines())
    assert header["alg"] in ALGORITHMS and header["typ"] == "JWT" and header["kid"]
    assert sorted(claims) == sorted(REQUIRED_CLAIMS)
    assert claims["exp"] - claims["iat"] == 300


def test_the_development_token_recipe_gives_a_token_the_service_accepts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "mint.py"
    script.write_text(quote("mint"))
    token = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    issuers = parse_trusted_issuers(json.dumps({"https://dev.example.org": "dev-jwks.json"}))
    caller = JwtAuthenticator(issuers).verify(token, "http://127.0.0.1:8080/cds-services")
    assert caller.issuer == "https://dev.example.org"
    assert (tmp_path / "dev-key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_the_fhir_timeout_quoted_is_the_default():
    assert quote("fhir-timeout") == f"{Settings().fhir_timeout:g} s"


def test_the_feedback_example_is_accepted(tmp_path):
    settings = Settings.from_env(
        {
            "KCDS_AUTH": "off",
            "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
            "KCDS_REPLAY_CACHE": "memory",
        }
    )
    client = create_app(settings).test_client()
    example = json.loads(quote("feedback"))
    r = client.post(
        "/cds-services/ketamine-order-sign/feedback",
        data=orjson.dumps(example),
        content_type="application/json",
    )
    assert r.status_code == 200, r.get_json()
    assert set(r.get_json()) == {"stored", "repeated", "unknownCards"}
    # the reason is written as the service's own cards offer it
    reason = example["feedback"][1]["overrideReason"]["reason"]
    answer = client.post("/cds-services/ketamine-order-sign", json=load("r09-bp-185-fires")[0])
    offered = [
        {"system": o["system"], "code": o["code"]}
        for card in answer.get_json()["cards"]
        for o in card.get("overrideReasons", ())
    ]
    assert reason in offered, offered


def test_the_override_reasons_quoted_exist():
    import yaml

    overrides = yaml.safe_load((ROOT / "service/engine/data/overrides.yaml").read_text())
    quoted = re.findall(r"`([^`]+)`", quote("override-reasons"))
    assert quoted and set(quoted) <= set(overrides["reasons"])
    assert {"snooze-1-month", "snooze-3-months"} <= set(overrides["snooze"])
    assert overrides["system"] in GUIDE


def test_every_setting_and_command_the_guide_names_exists():
    from dataclasses import fields

    from service.tools.cli import COMMANDS

    variables = {f.metadata["var"].name for f in fields(Settings)}
    named = set(re.findall(r"\bKCDS_[A-Z_]+[A-Z]\b", GUIDE))
    assert named <= variables, named - variables
    commands = set(re.findall(r"ketamine-cds ([a-z]+)", GUIDE))
    assert commands <= set(COMMANDS), commands - set(COMMANDS)


@pytest.mark.parametrize("separator", [",", " "])
def test_cors_origins_take_either_separator(separator):
    origins = separator.join(["https://sandbox.cds-hooks.org", "https://ehr.example.org"])
    settings = Settings.from_env({"KCDS_CORS_ORIGINS": origins})
    assert settings.cors_origins == ("https://sandbox.cds-hooks.org", "https://ehr.example.org")
