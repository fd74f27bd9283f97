"""The rule catalogue: every rule of the specification implemented, with fixtures that fire
it and twins that do not, cards that follow spec §7, and policy that changes behaviour."""

import re
from pathlib import Path

import pytest

from cds_hooks.service import ServiceCatalog, handle
from cds_hooks.validation import validator
from service.config import Settings
from service.engine import policy as policy_module
from service.engine.rules import RULES
from service.tools.fixtures import card_rules, compare, load, names
from service.web.app import build_engine, create_app

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "clinical" / "ketamine-rules.md").read_text("utf-8")
SPEC_IDS = sorted(set(re.findall(r"^\| ([RP]\d\d) \|", SPEC, re.M)))
CONTRAINDICATIONS = {"R01", "R02", "R03", "R04", "R09", "R16"}


def run(name, engine=None):
    engine = engine or ENGINE
    request, expected = load(name)
    catalog = ServiceCatalog(engine.services())
    _, response = handle(catalog.get(expected["service"]), request, None, "http://cds.test")
    return response.to_json(), expected


ENGINE = build_engine(Settings())
FIXTURES = [n for n in names() if not load(n)[1].get("fhir_data_from")]


def test_the_specification_v2_lists_50_rules():
    assert len(SPEC_IDS) == 50 and SPEC_IDS[0] == "P01" and SPEC_IDS[-1] == "R44"


def test_every_rule_of_the_specification_is_implemented():
    assert sorted(set(SPEC_IDS) - set(RULES)) == []
    for r in RULES.values():
        assert r.title and r.source and r.reads and r.trigger, r.id


def test_every_rule_has_a_firing_and_a_quiet_fixture():
    fires, quiet = set(), set()
    for name in names():
        expected = load(name)[1]
        fires.update(expected.get("must", ()), expected.get("rules", ()))
        quiet.update(expected.get("must_not", ()))
    for rule_id in RULES:
        assert rule_id in fires, f"{rule_id} has no fixture that fires it"
        assert rule_id in quiet, f"{rule_id} has no fixture that stays silent"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture(name):
    response, expected = run(name)
    assert compare(response, expected) == []
    assert not list(validator("response.json").iter_errors(response))
    for card in response["cards"]:
        rule_id = card["source"]["topic"]["code"]
        assert card["source"]["url"] == f"http://cds.test/rules/{rule_id}"
        assert card["extension"]["ketamine-cds.rules"][0] == rule_id
        assert card["extension"]["ketamine-cds.policy"] == ENGINE.policy.version
        assert "could not be checked" not in card["summary"]  # no rule crashed
        assert "**Source:**" in card["detail"]
        assert re.search(r"ketamine|esketamine|spravato", card["summary"], re.I), card["summary"]
        serious = card["indicator"] != "info"
        assert bool(card.get("overrideReasons")) == serious
        recheck = rule_id == "R09" and card["indicator"] == "warning"  # an older reading
        if (
            rule_id in CONTRAINDICATIONS
            and "birthDate missing" not in card["detail"]
            and not recheck
        ):
            actions = [a for s in card["suggestions"] for a in s["actions"]]
            assert actions[0]["type"] == "delete"
            assert actions[0]["resourceId"].startswith("MedicationRequest/")


def test_cards_are_ordered_by_severity():
    response, _ = run("r09-bp-185-fires")
    ranks = [{"critical": 0, "warning": 1, "info": 2}[c["indicator"]] for c in response["cards"]]
    assert ranks == sorted(ranks)


def test_warning_cards_name_the_triggering_data():
    response, _ = run("r08-bp-150-fires")
    card = next(c for c in response["cards"] if c["source"]["topic"]["code"] == "R08")
    assert "150/85 mmHg" in card["summary"]
    assert "`Observation/" in card["detail"] and "loinc 85354-9" in card["detail"]


def test_dose_card_suggests_the_corrected_dose_as_an_update():
    response, _ = run("r25-dose-0.75-fires")
    card = next(c for c in response["cards"] if c["source"]["topic"]["code"] == "R25")
    assert card["indicator"] == "warning" and "0.75 mg/kg" in card["summary"]
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "update"
    assert action["resource"]["id"] == "draft-ketamine-1"
    dose = action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose == {
        "value": 40.0,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }


def test_plan_card_folds_info_findings_and_their_orders():
    response, _ = run("r36-no-baseline-rating-fires")
    plan = response["cards"][-1]
    assert plan["extension"]["ketamine-cds.rules"][:2] == ["R38", "R36"]
    assert "**Also note**" in plan["detail"]
    codes = [
        a["resource"]["code"]["coding"][0]["code"]
        for s in plan["suggestions"]
        for a in s["actions"]
    ]
    assert codes == ["85354-9", "59408-5", "8867-4", "44261-6"]
    assert plan["selectionBehavior"] == "any"


def test_missing_weight_suggests_a_weight_order_once_on_its_card():
    """Spec §7 v2: a suggestion appears once per response, on the first card offering it."""
    response, _ = run("r34-no-weight-fires")
    codes = [
        (c["source"]["topic"]["code"], a["resource"]["code"]["coding"][0]["code"])
        for c in response["cards"]
        for s in c["suggestions"]
        for a in s["actions"]
        if a["type"] == "create"
    ]
    assert [rule for rule, code in codes if code == "29463-7"] == ["R34"]


def policy_file(tmp_path, text):
    path = tmp_path / "site-policy.yaml"
    path.write_text(text)
    return str(path)


def test_a_threshold_in_a_policy_file_changes_behaviour(tmp_path):
    assert "R08" in card_rules(run("r08-bp-150-fires")[0])
    site = build_engine(
        Settings(
            policy_file=policy_file(
                tmp_path, "version: site-7\nthresholds:\n  bp_caution_systolic: 155\n"
            )
        )
    )
    response, _ = run("r08-bp-150-fires", site)
    assert "R08" not in card_rules(response)
    assert response["cards"][0]["extension"]["ketamine-cds.policy"] == "site-7"


def test_policy_disables_and_re_grades_rules(tmp_path):
    site = build_engine(
        Settings(
            policy_file=policy_file(
                tmp_path,
                "version: site-8\nthresholds: {}\nrules:\n  R08: {enabled: false}\n"
                "  R20: {severity: critical}\n",
            )
        )
    )
    assert "R08" not in card_rules(run("r08-bp-150-fires", site)[0])
    assert card_rules(run("r20-lorazepam-fires", site)[0])["R20"] == "critical"


def test_policy_extra_local_codes_and_drugs(tmp_path):
    site = build_engine(
        Settings(
            policy_file=policy_file(
                tmp_path,
                """
version: site-9
thresholds: {}
extra_drugs:
  cns_depressants: [lorazepamum]
""",
            )
        )
    )
    assert "lorazepamum" in [i.name for i in site.terminology.ingredients({"text": "Lorazepamum"})]


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "version: x\nthresholds:\n  bp_caution_systolic: high\n",
            "thresholds.bp_caution_systolic",
        ),
        ("version: x\nthresholds:\n  no_such_threshold: 1\n", "thresholds"),
        ("version: x\nthresholds: {}\nrules:\n  R99x: {enabled: false}\n", "rules"),
        ("version: x\nthresholds: {}\nrules:\n  R08: {severity: loud}\n", "rules.R08.severity"),
    ],
)
def test_invalid_policy_is_a_start_up_error_naming_the_key(tmp_path, text, key):
    with pytest.raises(policy_module.PolicyError) as error:
        policy_module.load(policy_file(tmp_path, text))
    assert key in str(error.value)


def test_rule_pages_list_every_rule_with_live_thresholds(tmp_path):
    app = create_app(
        Settings(
            registry=False,
            auth="off",
            policy_file=policy_file(
                tmp_path, "version: site-10\nthresholds:\n  bp_hazard_systolic: 175\n"
            ),
        )
    )
    client = app.test_client()
    page = client.get("/rules")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for rule_id in RULES:
        assert f'id="{rule_id}"' in html
    assert "site-10" in html and ">175 mmHg<" in html
    data = client.get("/rules.json").get_json()
    r09 = next(r for r in data["rules"] if r["id"] == "R09")
    assert {"name": "bp_hazard_systolic", "value": 175}.items() <= next(
        t for t in r09["thresholds"] if t["name"] == "bp_hazard_systolic"
    ).items()
    assert any(s["status"].startswith("verified") for s in r09["sources"])
    assert client.get("/rules/R09").headers["Location"].endswith("/rules#R09")
    assert client.get("/rules/R99").status_code == 404


# -- specification v2: what the cards say ---------------------------------------------------


def card_of(response, rule_id):
    return next(c for c in response["cards"] if rule_id in c["extension"]["ketamine-cds.rules"])


def test_v2_an_older_hazardous_reading_asks_for_a_recheck_not_removal():
    card = card_of(run("r09-old-hazard-reading-recheck-fires")[0], "R09")
    assert card["indicator"] == "warning" and "recheck" in card["summary"]
    actions = [a for s in card.get("suggestions", ()) for a in s["actions"]]
    assert all(a["type"] != "delete" for a in actions)


def test_v2_split_bp_is_one_reading_in_whole_mmhg():
    card = card_of(run("r09-split-bp-paired-fires")[0], "R09")
    assert "188/96 mmHg" in card["summary"] and "?" not in card["summary"]


def test_v2_remission_and_alcohol_are_named():
    remission = card_of(run("r07-remission-fires")[0], "R07")
    assert "in remission" in remission["summary"]
    alcohol = card_of(run("r20-alcohol-use-disorder-quiet")[0], "R07")
    assert "alcohol use disorder also adds to the sedation" in alcohol["detail"]


def test_v2_a_recent_mi_is_named_recent():
    card = card_of(run("r10-mi-resolved-2-months-fires")[0], "R10")
    assert card["summary"].startswith("Recent MI/ACS")


def test_v2_under_18_wording_by_drug():
    ketamine = card_of(run("r16-ketamine-age-17-fires")[0], "R16")["summary"]
    esketamine = card_of(run("r16-esketamine-age-16-fires")[0], "R16")["summary"]
    assert "not studied for depression under 18" in ketamine
    assert "not approved under 18" in esketamine


def test_v2_an_invalid_but_readable_order_is_named_on_the_plan_card():
    plan = card_of(run("d03-invalid-but-readable-order-fires")[0], "D03")
    assert plan["indicator"] == "info"
    assert "context.draftOrders.entry[0].resource.category" in plan["detail"]


def test_v2_stale_medication_is_listed_not_alerted():
    plan = card_of(run("r20-stale-active-lorazepam-info-fires")[0], "R20")
    assert plan["indicator"] == "info" and "possibly outdated" in plan["detail"].lower()
