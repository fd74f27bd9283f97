"""The registry side of snooze (spec §7 v2), on a real SQLite file and a real PostgreSQL
database: which overrides the lookup finds, the schema 2 migration it needs, and what an
outage or a slow database does to it (nothing but a skipped snooze, counted)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import insert, inspect, select, text

from service.engine.overrides import catalogue
from service.engine.snooze import SnoozeOverride
from service.registry import schema
from service.registry.snooze import SnoozeIndex, SnoozeUnavailable
from service.registry.store import open_store
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
