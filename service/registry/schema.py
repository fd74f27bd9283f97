"""The registry's tables and their versioned, automatic migration.

What is stored is exactly what ``ketamine-rules.md`` §9 lists: no names, no free text from the
chart, no tokens. Evaluations are normalised into orders, findings, cards and the rules each
card carries, so the governance summary is plain SQL aggregates on either database.

Feedback is linked to its card (and so to the card's rules) when it is *read*, by joining on
the card uuid, never copied at write time: an evaluation is written by a background writer
(see ``writer``) and its feedback may reach another worker or instance first, so a link made
at write time could be missed for good; a join is always current.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    insert,
    select,
    text,
)


class RegistryError(RuntimeError):
    """The registry cannot be used as configured; the message says why."""


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime stored as a naive UTC timestamp: SQLite has no time zones and
    PostgreSQL's ``timestamp`` then compares the same way, so one query works on both."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()

schema_version = Table(
    "kcds_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

#: one row per evaluation; ``id`` is drawn when the evaluation is recorded, so a retried
#: write of the same batch inserts nothing twice
evaluation = Table(
    "kcds_evaluation",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("recorded_at", UTCDateTime, nullable=False, index=True),
    Column("service_id", Text, nullable=False),
    Column("hook", Text, nullable=False),
    Column("hook_instance", Text, nullable=False, index=True),
    Column("patient_key", String(64), nullable=False, index=True),
    Column("policy_version", Text, nullable=False),
    Column("service_version", Text, nullable=False),
    #: the snooze lookup (``snooze``): one patient's recent evaluations, newest last
    Index("ix_kcds_evaluation_patient_time", "patient_key", "recorded_at"),
)

order = Table(
    "kcds_order",
    metadata,
    Column("evaluation_id", ForeignKey(evaluation.c.id), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("drug", Text, nullable=False),
    Column("route", Text),
    Column("dose_mg", Float),
    Column("dose_mg_per_kg", Float),
)

finding = Table(
    "kcds_finding",
    metadata,
    Column("evaluation_id", ForeignKey(evaluation.c.id), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("rule_id", Text, nullable=False, index=True),
    Column("severity", Text, nullable=False),
)

card = Table(
    "kcds_card",
    metadata,
    Column("card_uuid", Text, primary_key=True),
    Column("evaluation_id", ForeignKey(evaluation.c.id), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # the card's place in the response
    Column("indicator", String(16)),  # since schema 2: a snooze holds for warning cards only
    Column("drug", Text),  # since schema 2: the drug of the order (or course) it is about
)

card_rule = Table(
    "kcds_card_rule",
    metadata,
    Column("card_uuid", ForeignKey(card.c.card_uuid), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("rule_id", Text, nullable=False, index=True),
)

#: one row per distinct feedback item; a repeated item (same service, card, outcome and
#: outcome time) meets the unique constraint and is not stored again
feedback = Table(
    "kcds_feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    Column("service_id", Text, nullable=False),
    Column("card_uuid", Text, nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("outcome_time", UTCDateTime, nullable=False),
    Column("accepted_suggestions", Text),  # JSON array of suggestion uuids
    Column("reason_system", Text),
    Column("reason_code", Text),
    Column("user_comment", Text),  # only with KCDS_STORE_COMMENTS=true
    UniqueConstraint("service_id", "card_uuid", "outcome", "outcome_time"),
)

#: the tables of one evaluation, parents first (the order they are written in)
EVALUATION_TABLES = (evaluation, order, finding, card, card_rule)

#: the schema version these definitions describe
LATEST = 2


def _v2_snooze(conn: Connection) -> None:
    """Schema 2 (spec §7 v2, snooze): each card's indicator and drug, and an index on an
    evaluation's patient key and time, so a hook can find the patient's snoozed warnings
    for a drug in one indexed range read (``service.registry.snooze``). Cards recorded
    before it have neither column set and so never snooze anything."""
    conn.execute(text("ALTER TABLE kcds_card ADD COLUMN indicator VARCHAR(16)"))
    conn.execute(text("ALTER TABLE kcds_card ADD COLUMN drug TEXT"))
    conn.execute(
        text(
            "CREATE INDEX ix_kcds_evaluation_patient_time "
            "ON kcds_evaluation (patient_key, recorded_at)"
        )
    )


#: version → the step that brings a database from the version before it. Each step is
#: written against the schema of its predecessor, never against the definitions above,
#: which only ever create a fresh database.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _v2_snooze}


def migrate(conn: Connection) -> int:
    """Bring the schema to :data:`LATEST` inside the caller's write transaction.

    The caller holds the database's write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL
    advisory lock), so instances starting together migrate one after the other. Returns the
    version the database now has.
    """
    schema_version.create(conn, checkfirst=True)
    current = conn.scalar(select(func.max(schema_version.c.version)))
    if current is not None and current > LATEST:
        raise RegistryError(
            f"the registry database has schema version {current}, newer than this service "
            f"knows ({LATEST}); upgrade the service or point KCDS_DATABASE_URL elsewhere"
        )
    if current is None:
        metadata.create_all(conn)
        steps = [LATEST]
    else:
        steps = list(range(current + 1, LATEST + 1))
        for version in steps:
            MIGRATIONS[version](conn)
    now = datetime.now(UTC)
    for version in steps:
        conn.execute(insert(schema_version).values(version=version, applied_at=now))
    return LATEST
