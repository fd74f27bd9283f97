"""Registry access for governance: the summary, the exports and the retention purge.

Feedback reaches its rules through the card it answers (``kcds_card_rule``); a card carrying
several rules counts for each of them. Counts of accepted and overridden cards are of
distinct cards, since the spec lets a client report the same card more than once.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from sqlalchemy import Connection, delete, func, select

from . import schema
from .store import Store

#: override reasons listed per rule in the summary
TOP_REASONS = 5
#: evaluations read, or purged, per round trip
CHUNK = 1000
#: the columns of the CSV export: both record types side by side; lists are JSON cells
CSV_COLUMNS = (
    "record",
    "time",
    "service",
    "hook",
    "hook_instance",
    "patient_key",
    "orders",
    "findings",
    "cards",
    "policy_version",
    "service_version",
    "card",
    "rules",
    "outcome",
    "outcome_time",
    "accepted_suggestions",
    "reason_system",
    "reason_code",
    "comment",
)

# short names for the tables, so the queries read as SQL would
e, o, fi, c, cr, fb = (
    schema.evaluation,
    schema.order,
    schema.finding,
    schema.card,
    schema.card_rule,
    schema.feedback,
)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def parse_since(text: str) -> datetime:
    """``2025-06-01`` or an ISO 8601 date and time; without an offset it is UTC. Raises
    ValueError on anything else."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def summary(store: Store, since: datetime | None = None) -> dict[str, Any]:
    """Per rule: times fired, cards accepted and overridden, the top override reasons; per
    drug and route: orders evaluated. ``since`` limits it to evaluations recorded and
    feedback received from then on."""
    e_since = [e.c.recorded_at >= since] if since else []
    fb_since = [fb.c.received_at >= since] if since else []
    cards = func.count(fb.c.card_uuid.distinct())
    rules: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"fired": 0, "accepted": 0, "overridden": 0, "top_override_reasons": []}
    )
    with store.reading() as conn:
        fired = select(fi.c.rule_id, func.count()).join(e).where(*e_since).group_by(fi.c.rule_id)
        for rule_id, n in conn.execute(fired):
            rules[rule_id]["fired"] = n
        answered = fb.join(cr, cr.c.card_uuid == fb.c.card_uuid)
        outcomes = (
            select(cr.c.rule_id, fb.c.outcome, cards)
            .select_from(answered)
            .where(*fb_since)
            .group_by(cr.c.rule_id, fb.c.outcome)
        )
        for rule_id, outcome, n in conn.execute(outcomes):
            rules[rule_id][outcome] = n
        reasons = (
            select(cr.c.rule_id, fb.c.reason_system, fb.c.reason_code, cards.label("n"))
            .select_from(answered)
            .where(fb.c.outcome == "overridden", fb.c.reason_code.is_not(None), *fb_since)
            .group_by(cr.c.rule_id, fb.c.reason_system, fb.c.reason_code)
            .order_by(cr.c.rule_id, cards.desc(), fb.c.reason_code)
        )
        for rule_id, system, code, n in conn.execute(reasons):
            top = rules[rule_id]["top_override_reasons"]
            if len(top) < TOP_REASONS:
                top.append({"system": system, "code": code, "count": n})
        orders = (
            select(o.c.drug, o.c.route, func.count())
            .join(e)
            .where(*e_since)
            .group_by(o.c.drug, o.c.route)
            .order_by(o.c.drug, o.c.route.nulls_last())
        )
        orders_evaluated = [
            {"drug": drug, "route": route, "count": n} for drug, route, n in conn.execute(orders)
        ]
        evaluations = conn.scalar(select(func.count()).select_from(e).where(*e_since))
        feedback = conn.scalar(select(func.count()).select_from(fb).where(*fb_since))
        unknown = conn.scalar(
            select(func.count())
            .select_from(fb.outerjoin(c, c.c.card_uuid == fb.c.card_uuid))
            .where(c.c.card_uuid.is_(None), *fb_since)
        )
    return {
        "since": _iso(since) if since else None,
        "evaluations": evaluations,
        "feedback": feedback,
        "feedback_on_unknown_cards": unknown,
        "rules": [{"rule": rule_id, **rules[rule_id]} for rule_id in sorted(rules)],
        "orders_evaluated": orders_evaluated,
    }


def export(store: Store, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every evaluation, then every feedback item, as plain records, oldest first.

    Read in chunks on one snapshot, so an export of any size runs in bounded memory and is
    consistent even while the service keeps writing.
    """
    with store.reading() as conn:
        query = select(e).order_by(e.c.recorded_at, e.c.id)
        if since:
            query = query.where(e.c.recorded_at >= since)
        for part in conn.execute(query.execution_options(yield_per=CHUNK)).partitions():
            yield from _evaluations(conn, part)
        query = select(fb).order_by(fb.c.received_at, fb.c.id)
        if since:
            query = query.where(fb.c.received_at >= since)
        for part in conn.execute(query.execution_options(yield_per=CHUNK)).partitions():
            rules = _card_rules(conn, {row.card_uuid for row in part})
            for row in part:
                yield {
                    "record": "feedback",
                    "time": _iso(row.received_at),
                    "service": row.service_id,
                    "card": row.card_uuid,
                    "rules": rules.get(row.card_uuid),  # None: a card the registry never saw
                    "outcome": row.outcome,
                    "outcome_time": _iso(row.outcome_time),
                    "accepted_suggestions": orjson.loads(row.accepted_suggestions)
                    if row.accepted_suggestions
                    else None,
                    "reason_system": row.reason_system,
                    "reason_code": row.reason_code,
                    "comment": row.user_comment,
                }


def _evaluations(conn: Connection, part: list) -> Iterator[dict[str, Any]]:
    ids = [row.id for row in part]
    orders = defaultdict(list)
    for row in conn.execute(
        select(o).where(o.c.evaluation_id.in_(ids)).order_by(o.c.evaluation_id, o.c.position)
    ):
        orders[row.evaluation_id].append(
            {
                "drug": row.drug,
                "route": row.route,
                "dose_mg": row.dose_mg,
                "dose_mg_per_kg": row.dose_mg_per_kg,
            }
        )
    findings = defaultdict(list)
    for row in conn.execute(
        select(fi).where(fi.c.evaluation_id.in_(ids)).order_by(fi.c.evaluation_id, fi.c.position)
    ):
        findings[row.evaluation_id].append({"rule": row.rule_id, "severity": row.severity})
    cards = defaultdict(list)
    card_rows = conn.execute(
        select(c).where(c.c.evaluation_id.in_(ids)).order_by(c.c.evaluation_id, c.c.position)
    ).all()
    rules = _card_rules(conn, {row.card_uuid for row in card_rows})
    for row in card_rows:
        cards[row.evaluation_id].append(
            {"uuid": row.card_uuid, "rules": rules.get(row.card_uuid, [])}
        )
    for row in part:
        yield {
            "record": "evaluation",
            "time": _iso(row.recorded_at),
            "service": row.service_id,
            "hook": row.hook,
            "hook_instance": row.hook_instance,
            "patient_key": row.patient_key,
            "orders": orders[row.id],
            "findings": findings[row.id],
            "cards": cards[row.id],
            "policy_version": row.policy_version,
            "service_version": row.service_version,
        }


def _card_rules(conn: Connection, uuids: set[str]) -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    query = (
        select(cr.c.card_uuid, cr.c.rule_id)
        .where(cr.c.card_uuid.in_(uuids))
        .order_by(cr.c.card_uuid, cr.c.position)
    )
    for card_uuid, rule_id in conn.execute(query):
        rules.setdefault(card_uuid, []).append(rule_id)
    return rules


def write_ndjson(records: Iterable[dict[str, Any]], out: IO[bytes]) -> int:
    n = 0
    for record in records:
        out.write(orjson.dumps(record) + b"\n")
        n += 1
    return n


def write_csv(records: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """The records as CSV: one header, a row per record; a list is a JSON cell and a missing
    value an empty one, so the file reads back to the same records."""
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    n = 0
    for record in records:
        writer.writerow(
            {
                key: orjson.dumps(value).decode() if isinstance(value, list) else value
                for key, value in record.items()
            }
        )
        n += 1
    return n


def purge(store: Store, before: datetime) -> dict[str, int]:
    """Delete evaluations recorded before ``before`` with their cards and the feedback on those
    cards, then any other feedback received before it. Chunked, so the database's write lock
    is never held for long."""

    def chunk(conn: Connection) -> tuple[int, int]:
        ids = list(conn.scalars(select(e.c.id).where(e.c.recorded_at < before).limit(CHUNK)))
        if not ids:
            return 0, 0
        cards = select(c.c.card_uuid).where(c.c.evaluation_id.in_(ids))
        feedback = conn.execute(delete(fb).where(fb.c.card_uuid.in_(cards))).rowcount
        conn.execute(delete(cr).where(cr.c.card_uuid.in_(cards)))
        for table in (c, o, fi):
            conn.execute(delete(table).where(table.c.evaluation_id.in_(ids)))
        conn.execute(delete(e).where(e.c.id.in_(ids)))
        return len(ids), feedback

    removed = {"evaluations": 0, "feedback": 0}
    while True:
        evaluations, feedback = store.write(chunk, within=60)
        if not evaluations:
            break
        removed["evaluations"] += evaluations
        removed["feedback"] += feedback
    removed["feedback"] += store.write(
        lambda conn: conn.execute(delete(fb).where(fb.c.received_at < before)).rowcount, within=60
    )
    return removed
