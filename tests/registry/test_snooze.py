"""Snooze (spec §7 v2) on a real SQLite file and a real PostgreSQL database: which overrides
the registry's lookup finds, the schema 2 migration it needs, what an outage or a slow
database does to it (nothing but a skipped snooze, counted), and, through the service, a
snoozed warning hidden until the snooze ends, for its patient and drug only."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, inspect, select, text

from service.config import Settings
from service.engine.overrides import catalogue
from service.engine.snooze import SnoozeOverride, add_months
from service.registry import schema
from service.registry.snooze import SnoozeIndex, SnoozeUnavailable
from service.registry.store import open_store
from service.tools.convert import esketamine_order
from service.tools.fixtures import load
from service.web.app import create_app
from tests.conftest import journal_for
from tests.ops.test_ops import refusing_connections

NOW = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
SYSTEM = catalogue().system
SNOOZE_CODES = [s.coding.code for s in catalogue().snooze]
SINCE = NOW - timedelta(days=100)


def key(patient_id: str) -> str:
    return f"key-{patient_id}"


class Outcomes(list):
    def __call__(self, outcome: str) -> None:
        self.append(outcome)


def shown(
    store,
    patient: str,
    rule: str,
    *,
    drug: str = "esketamine",
    indicator: str = "warning",
    days_ago: float = 1,
    reason: str | None = "snooze-1-month",
    system: str = SYSTEM,
    outcome: str = "overridden",
    outcome_delay: timedelta = timedelta(minutes=2),
) -> str:
    """One evaluation with one card of ``rule``, and (``reason``) its feedback."""
    when = NOW - timedelta(days=days_ago)
    eid, card = uuid.uuid4().hex, str(uuid.uuid4())

    def work(conn):
        conn.execute(
            insert(schema.evaluation).values(
                id=eid,
                recorded_at=when,
                service_id="ketamine-order-sign",
                hook="order-sign",
                hook_instance=str(uuid.uuid4()),
                patient_key=key(patient),
                policy_version="test",
                service_version="test",
            )
        )
        conn.execute(
            insert(schema.card).values(
                card_uuid=card, evaluation_id=eid, position=0, indicator=indicator, drug=drug
            )
        )
        conn.execute(insert(schema.card_rule).values(card_uuid=card, position=0, rule_id=rule))
        conn.execute(insert(schema.card_rule).values(card_uuid=card, position=1, rule_id="R99"))
        if reason is not None:
            conn.execute(
                insert(schema.feedback).values(
                    received_at=when + timedelta(minutes=3),
                    service_id="ketamine-order-sign",
                    card_uuid=card,
                    outcome=outcome,
                    outcome_time=when + outcome_delay,
                    reason_system=system,
                    reason_code=reason,
                )
            )

    store.write(work, within=10)
    return card


def index(store, observe=None, **kw) -> SnoozeIndex:
    snoozes = SnoozeIndex(store, key, **kw)
    if observe is not None:
        snoozes.observe = observe
    return snoozes


def lookup(snoozes: SnoozeIndex, patient: str, drugs=("esketamine",)) -> list[SnoozeOverride]:
    return snoozes.overrides(patient, drugs, SYSTEM, SNOOZE_CODES, SINCE)


def test_finds_the_snooze_overrides_of_this_patients_warnings_for_this_drug(database_url):
    store = open_store(database_url)
    shown(store, "p1", "R20")
    shown(store, "p1", "R05", reason="snooze-3-months", days_ago=40)
    # none of these snoozes anything for p1 and esketamine:
    shown(store, "p2", "R21")  # another patient
    shown(store, "p1", "R22", drug="ketamine")  # another drug
    shown(store, "p1", "R01", indicator="critical")  # critical cards cannot be snoozed
    shown(store, "p1", "R38", indicator="info")
    shown(store, "p1", "R07", reason="benefit-outweighs-risk")  # not a snooze reason
    shown(store, "p1", "R08", system="urn:other:reasons")  # another code system
    shown(store, "p1", "R10", outcome="accepted", reason=None)
    shown(store, "p1", "R11", reason=None)  # no feedback
    shown(store, "p1", "R17", days_ago=120)  # before the longest snooze could reach
    found = sorted(lookup(index(store), "p1"), key=lambda o: o.rule_id)
    assert [(o.rule_id, o.drug, o.code) for o in found] == [
        ("R05", "esketamine", "snooze-3-months"),
        ("R20", "esketamine", "snooze-1-month"),
    ]
    assert found[1].at == NOW - timedelta(days=1) + timedelta(minutes=2)
    assert [o.rule_id for o in lookup(index(store), "p1", ("ketamine",))] == ["R22"]
    assert lookup(index(store), "p3") == []


def test_an_outcome_time_ahead_of_its_arrival_counts_from_the_arrival(database_url):
    store = open_store(database_url)
    shown(store, "p1", "R20", outcome_delay=timedelta(days=30))  # the EHR's clock runs ahead
    (found,) = lookup(index(store), "p1")
    assert found.at == NOW - timedelta(days=1) + timedelta(minutes=3)


def test_the_lookup_reads_through_the_patient_and_time_index(database_url):
    store = open_store(database_url)
    shown(store, "p1", "R20")
    query = (
        select(schema.evaluation.c.id)
        .where(schema.evaluation.c.patient_key == key("p1"))
        .where(schema.evaluation.c.recorded_at >= SINCE)
    )
    with store.reading() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        if store.dialect == "sqlite":
            plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
            assert "ix_kcds_evaluation_patient_time" in plan
        indexes = {
            i["name"]: i["column_names"] for i in inspect(conn).get_indexes("kcds_evaluation")
        }
    assert indexes["ix_kcds_evaluation_patient_time"] == ["patient_key", "recorded_at"]


def test_a_schema_1_registry_is_migrated_to_2(database_url):
    store = open_store(database_url)

    def back_to_1(conn):  # the schema 1 shape: no card indicator or drug, no index
        conn.execute(text("DROP INDEX ix_kcds_evaluation_patient_time"))
        conn.execute(text("ALTER TABLE kcds_card DROP COLUMN indicator"))
        conn.execute(text("ALTER TABLE kcds_card DROP COLUMN drug"))
        conn.execute(text("DELETE FROM kcds_schema"))
        conn.execute(insert(schema.schema_version).values(version=1, applied_at=NOW))

    store.write(back_to_1, within=10)
    store.engine.dispose()
    migrated = open_store(database_url)
    with migrated.reading() as conn:
        assert conn.scalars(select(schema.schema_version.c.version)).all() == [1, 2]
        assert {"indicator", "drug"} <= {c["name"] for c in inspect(conn).get_columns("kcds_card")}
    shown(migrated, "p1", "R20")
    assert [o.rule_id for o in lookup(index(migrated), "p1")] == ["R20"]


def test_a_registry_that_refuses_connections_means_no_snooze_counted_then_a_rest(
    postgres_url,
):
    store = open_store(postgres_url)
    shown(store, "p1", "R20")
    outcomes = Outcomes()
    snoozes = index(store, observe=outcomes, rest=60)
    assert [o.rule_id for o in lookup(snoozes, "p1")] == ["R20"]
    with refusing_connections(postgres_url):
        with pytest.raises(SnoozeUnavailable):
            lookup(snoozes, "p1")
        with pytest.raises(SnoozeUnavailable, match="rest"):
            lookup(snoozes, "p1")  # resting: not even tried
    assert outcomes == ["ok", "failed", "resting"]


def test_a_database_that_does_not_answer_in_time_means_no_snooze(postgres_url):
    store = open_store(postgres_url)
    shown(store, "p1", "R20")
    outcomes = Outcomes()
    snoozes = index(store, observe=outcomes, within=0.2, rest=0)
    lookup(snoozes, "p1")  # the pool and its connection exist
    with psycopg.connect(postgres_url) as holder:  # a migration or a backup holding a lock
        holder.execute("LOCK TABLE kcds_card IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SnoozeUnavailable):
            lookup(snoozes, "p1")  # the hook does not wait for the lock
        holder.rollback()
    assert outcomes == ["ok", "late"]
    assert [o.rule_id for o in lookup(snoozes, "p1")] == ["R20"]  # rest=0: tried again
    snoozes.close()


# -- through the service: evaluate, override with a snooze, evaluate again -----------------

SIGN = "/cds-services/ketamine-order-sign"
PSEUDONYM_KEY = "snooze-test-pseudonym-key-0123456789"
SNOOZE_SYSTEM = catalogue().system


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(database_url, clock, tmp_path):
    settings = Settings(
        auth="off",
        database_url=database_url,
        journal=journal_for(database_url, tmp_path),
        pseudonym_key=PSEUDONYM_KEY,
    )
    app = create_app(settings, clock=clock)
    yield app
    app.extensions["ketamine-cds.registry"].close()


def lorazepam_patient(patient_id: str = "kcds-r20-fires", drug: str = "ketamine") -> dict:
    """The R20 fixture (a current lorazepam prescription: a warning for either drug), as
    ``patient_id`` and ordering ``drug``."""
    request, _ = load("r20-lorazepam-fires")
    request = json.loads(json.dumps(request).replace("kcds-r20-fires", patient_id))
    if drug == "esketamine":
        order = esketamine_order(patient_id=patient_id)
        request["context"]["draftOrders"]["entry"] = [{"resource": order}]
    return request


def evaluate(app, request: dict) -> list[dict]:
    request = {**request, "hookInstance": str(uuid.uuid4())}
    response = app.test_client().post(SIGN, json=request)
    assert response.status_code == 200, response.get_json()
    assert app.extensions["ketamine-cds.registry"].flush()
    return response.get_json()["cards"]


def card(cards: list[dict], rule: str) -> dict | None:
    return next((c for c in cards if c["source"]["topic"]["code"] == rule), None)


def snooze(app, shown: dict, code: str, at: datetime) -> None:
    item = {
        "card": shown["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": at.isoformat(),
        "overrideReason": {"reason": {"system": SNOOZE_SYSTEM, "code": code}},
    }
    response = app.test_client().post(SIGN + "/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.get_json()
    assert app.extensions["ketamine-cds.registry"].flush()


def test_a_snoozed_warning_is_hidden_until_the_snooze_ends_then_shows_again(app, clock):
    start = clock.now
    r20 = card(evaluate(app, lorazepam_patient()), "R20")
    assert r20 is not None and r20["indicator"] == "warning"
    offered = [r["code"] for r in r20["overrideReasons"]]
    assert offered[-2:] == ["snooze-1-month", "snooze-3-months"]
    snooze(app, r20, "snooze-1-month", start)

    clock.now = start + timedelta(days=1)
    cards = evaluate(app, lorazepam_patient())
    assert card(cards, "R20") is None
    plan = cards[-1]
    assert "R20" in plan["extension"]["ketamine-cds.rules"]
    until = add_months(start, 1).date().isoformat()
    assert f"(R20). Snoozed until {until} by an earlier override." in plan["detail"]

    clock.now = add_months(start, 1) - timedelta(minutes=1)
    assert card(evaluate(app, lorazepam_patient()), "R20") is None
    clock.now = add_months(start, 1) + timedelta(minutes=1)
    assert card(evaluate(app, lorazepam_patient()), "R20") is not None  # expired


def test_a_three_month_snooze_outlasts_a_month(app, clock):
    start = clock.now
    snooze(app, card(evaluate(app, lorazepam_patient()), "R20"), "snooze-3-months", start)
    clock.now = start + timedelta(days=45)
    assert card(evaluate(app, lorazepam_patient()), "R20") is None
    clock.now = add_months(start, 3) + timedelta(minutes=1)
    assert card(evaluate(app, lorazepam_patient()), "R20") is not None


def test_a_snooze_holds_for_its_patient_and_drug_only(app, clock):
    snooze(app, card(evaluate(app, lorazepam_patient()), "R20"), "snooze-1-month", clock.now)
    assert card(evaluate(app, lorazepam_patient()), "R20") is None
    assert card(evaluate(app, lorazepam_patient(drug="esketamine")), "R20") is not None
    assert card(evaluate(app, lorazepam_patient("kcds-someone-else")), "R20") is not None


def test_an_override_that_is_not_a_snooze_snoozes_nothing(app, clock):
    r20 = card(evaluate(app, lorazepam_patient()), "R20")
    item_code = catalogue().for_rule("R20")[0].code
    snooze(app, r20, item_code, clock.now)
    assert card(evaluate(app, lorazepam_patient()), "R20") is not None


def test_critical_cards_offer_no_snooze(app):
    request, _ = load("r09-bp-185-fires")
    r09 = card(evaluate(app, request), "R09")
    assert r09["indicator"] == "critical"
    codes = [r["code"] for r in r09["overrideReasons"]]
    assert codes == [r.code for r in catalogue().for_rule("R09")]


def test_without_the_registry_no_snooze_is_offered():
    app = create_app(Settings(auth="off", registry=False))
    response = app.test_client().post(SIGN, json=lorazepam_patient())
    r20 = card(response.get_json()["cards"], "R20")
    assert [r["code"] for r in r20["overrideReasons"]] == [
        r.code for r in catalogue().for_rule("R20")
    ]


def lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("kcds_snooze_lookups_total", {"outcome": outcome}) or 0.0


def test_a_registry_outage_never_blocks_cards_snooze_is_skipped_and_counted(
    postgres_url, clock, tmp_path
):
    settings = Settings(
        auth="off",
        database_url=postgres_url,
        journal=str(tmp_path / "journal.db"),
        pseudonym_key=PSEUDONYM_KEY,
    )
    app = create_app(settings, clock=clock)
    try:
        snooze(app, card(evaluate(app, lorazepam_patient()), "R20"), "snooze-1-month", clock.now)
        assert card(evaluate(app, lorazepam_patient()), "R20") is None
        failed, resting = lookups("failed"), lookups("resting")
        with refusing_connections(postgres_url):
            for _ in range(2):  # refused, then resting: the cards come all the same
                request = {**lorazepam_patient(), "hookInstance": str(uuid.uuid4())}
                response = app.test_client().post(SIGN, json=request)
                assert response.status_code == 200
                assert card(response.get_json()["cards"], "R20") is not None
        assert lookups("failed") == failed + 1 and lookups("resting") == resting + 1
    finally:
        app.extensions["ketamine-cds.registry"].close()
