"""The ketamine registry, on a real SQLite file and a real PostgreSQL database: what an
evaluation and a feedback item leave behind, the summary, the exports, the purge, the admin
endpoint, the start-up checks and the migrations."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import multiprocessing
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url

from cds_hooks.service import HookRequest
from service import __version__
from service.config import ConfigError, Settings
from service.engine.summary import CardSummary, EvaluationSummary, FindingSummary, OrderSummary
from service.registry import Registry, governance, schema, store
from service.registry.journal import GATHER, Journal, JournalError, Shipper, Unrecorded
from service.registry.schema import RegistryError
from service.registry.store import Unavailable, open_store
from service.registry.writer import LINGER, Writer
from service.tools.cli import main
from service.tools.fixtures import load
from service.web.app import create_app
from tests.conftest import CONFORMANCE, journal_for, writes_held

KEY = "registry-test-pseudonym-key-0123456789"
TOKEN = "registry-test-admin-token-0123456789ab"
SIGN = "/cds-services/ketamine-order-sign"
#: today (the fixtures are dated to today), at a known time
NOW = datetime.now(UTC).replace(hour=9, minute=30, second=0, microsecond=0)


class Clock:
    """A settable clock, so what is recorded carries known times."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_app(url: str, tmp: Path, clock: Clock | None = None, **settings):
    settings = {
        "auth": "off",
        "database_url": url,
        "journal": journal_for(url, tmp),
        "pseudonym_key": KEY,
        **settings,
    }
    return create_app(Settings(**settings), clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(database_url, clock, tmp_path):
    app = make_app(database_url, tmp_path, clock, admin_token=TOKEN)
    yield app
    app.extensions["ketamine-cds.registry"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def registry_of(app) -> Registry:
    return app.extensions["ketamine-cds.registry"]


def evaluate(client) -> dict:
    request, _ = load("clean-iv-ketamine-sign")
    request["hookInstance"] = str(uuid.uuid4())
    r = client.post(SIGN, json=request)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def feedback(client, *items, status=200) -> dict:
    """Post feedback; once acknowledged, wait until it is in the registry database."""
    r = client.post(SIGN + "/feedback", json={"feedback": list(items)})
    assert r.status_code == status, r.get_json()
    registry = client.application.extensions["ketamine-cds.registry"]
    if registry is not None:
        assert registry.flush()
    return r.get_json()


def registry_for(database_url: str, key: bytes, clock=None) -> Registry:
    """A registry on ``database_url`` with a journal of its own beside the test's files."""
    journal = Journal(Path(make_url(database_url).database or "x").parent / f"{uuid.uuid4()}.db")
    if not database_url.startswith("sqlite"):
        journal = Journal(Path(tempfile.mkdtemp()) / "journal.db")
    journal.open()
    return Registry(open_store(database_url), key, journal, clock=clock)


def accepted(card: dict, at: str = "2026-03-02T09:31:00Z") -> dict:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": at,
    }


def overridden(card_uuid: str, code: str | None = None, comment: str | None = None) -> dict:
    item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:32:00Z"}
    if code or comment:
        item["overrideReason"] = {}
        if code:
            item["overrideReason"]["reason"] = {"system": "urn:test:reasons", "code": code}
        if comment:
            item["overrideReason"]["userComment"] = comment
    return item


def exported(app) -> list[dict]:
    registry = registry_of(app)
    assert registry.flush()
    return list(governance.export(registry.store))


def table_text(app) -> str:
    """Everything the registry holds, as one string: what a privacy check searches."""
    out = []
    with registry_of(app).store.reading() as conn:
        for table in schema.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in conn.execute(select(table))]
    return "\n".join(out)


# -- what is recorded ---------------------------------------------------------------------


def test_an_evaluation_records_what_the_clinical_spec_lists_and_nothing_else(app, client):
    response = evaluate(client)
    [record] = exported(app)
    assert set(record) == {
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
    }
    expected_key = hmac.new(KEY.encode(), b"kcds-clean", hashlib.sha256).hexdigest()
    assert record["patient_key"] == expected_key
    assert record["time"] == NOW.strftime("%Y-%m-%dT09:30:00Z")
    assert (record["service"], record["hook"]) == ("ketamine-order-sign", "order-sign")
    assert record["orders"] == [
        {"drug": "ketamine", "route": "iv", "dose_mg": 40.0, "dose_mg_per_kg": 0.5}
    ]
    fired = {c["extension"]["ketamine-cds.rules"][0]: c["indicator"] for c in response["cards"]}
    assert {f["rule"]: f["severity"] for f in record["findings"]}.items() >= fired.items()
    assert "R38" in fired
    assert record["cards"] == [
        {"uuid": c["uuid"], "rules": c["extension"]["ketamine-cds.rules"]}
        for c in response["cards"]
    ]
    assert record["policy_version"] == app.extensions["ketamine-cds"].policy.version
    assert record["service_version"] == __version__
    stored = table_text(app)
    for secret in ("kcds-clean", "Rivera", "Alex", "fixture-access-token", "Body weight"):
        assert secret not in stored


def test_the_pseudonym_is_stable_per_key_and_differs_between_keys(database_url):
    one = registry_for(database_url, b"a" * 32)
    other = registry_for(database_url, b"b" * 32)
    assert one.pseudonym("p1") == one.pseudonym("p1") != one.pseudonym("p2")
    assert one.pseudonym("p1") != other.pseudonym("p1")


def test_spec_feedback_examples_are_stored_and_show_in_the_summary(app, client):
    for name in ("21", "22", "23"):
        body = json.loads(next(CONFORMANCE.glob(f"{name}-*.json")).read_text())
        r = client.post(SIGN + "/feedback", json=body)
        assert r.status_code == 200
        assert r.get_json()["unknownCards"] == [body["feedback"][0]["card"]]
    assert registry_of(app).flush()
    summary = governance.summary(registry_of(app).store)
    assert (summary["feedback"], summary["feedback_on_unknown_cards"]) == (3, 3)
    assert next(r for r in exported(app) if r["record"] == "feedback")["rules"] is None

    # the same examples, answering cards this service gave: linked to the rule R38
    cards = [evaluate(client)["cards"][0] for _ in range(3)]
    registry_of(app).flush()
    for card, name in zip(cards, ("21", "22", "23"), strict=True):
        body = json.loads(next(CONFORMANCE.glob(f"{name}-*.json")).read_text())
        body["feedback"][0]["card"] = card["uuid"]
        assert feedback(client, *body["feedback"])["unknownCards"] == []
    rules = governance.summary(registry_of(app).store)["rules"]
    r38 = next(r for r in rules if r["rule"] == "R38")
    assert r38 == {
        "rule": "R38",
        "fired": 3,
        "accepted": 1,
        "overridden": 2,
        "top_override_reasons": [
            {
                "system": "https://example.com/cds-hooks/override-reason-system",
                "code": "d7ecf885",
                "count": 1,
            }
        ],
    }


def test_feedback_is_idempotent_and_answers_what_it_stored(app, client):
    card = evaluate(client)["cards"][0]
    registry_of(app).flush()
    items = [accepted(card), overridden(card["uuid"], "d7ecf885")]
    assert feedback(client, *items) == {"stored": 2, "repeated": 0, "unknownCards": []}
    assert feedback(client, *items) == {"stored": 0, "repeated": 2, "unknownCards": []}
    # the same instant written differently is the same item
    assert feedback(client, accepted(card, "2026-03-02T10:31:00+01:00"))["repeated"] == 1
    # a later outcome for the same card is a new item
    assert feedback(client, accepted(card, "2026-03-02T09:40:00Z"))["stored"] == 1
    assert len([r for r in exported(app) if r["record"] == "feedback"]) == 3


def test_comments_are_stored_only_when_the_site_opts_in(database_url, tmp_path):
    for store_comments, expected in ((False, None), (True, "patient declined")):
        app = make_app(database_url, tmp_path, store_comments=store_comments)
        client = app.test_client()
        item = overridden(str(uuid.uuid4()), "x1", comment="patient declined")
        feedback(client, item)
        [record] = [r for r in exported(app) if r["card"] == item["card"]]
        assert record["comment"] == expected
        registry_of(app).close()


def test_bad_feedback_is_a_specific_4xx_and_stores_nothing(app, client):
    bad_time = overridden("c1") | {"outcomeTimestamp": "2026-13-45T10:00:00Z"}
    body = feedback(client, overridden("c0"), bad_time, status=400)
    assert body["field"] == "feedback[1].outcomeTimestamp"
    no_suggestions = {
        "card": "c",
        "outcome": "accepted",
        "outcomeTimestamp": "2026-03-02T09:31:00Z",
    }
    assert "acceptedSuggestions" in feedback(client, no_suggestions, status=400)["message"]
    r = client.post(SIGN + "/feedback", data="{}", content_type="text/plain")
    assert r.status_code == 415
    r = client.post("/cds-services/nope/feedback", json={"feedback": [overridden("c")]})
    assert r.status_code == 404
    assert exported(app) == []


def test_feedback_is_acknowledged_once_journaled_and_a_503_only_when_nothing_takes_it(
    app, client, monkeypatch
):
    registry = registry_of(app)

    def down(work, within):
        raise Unavailable("down")

    def unwritable(*args):
        raise JournalError(OSError(30, "Read-only file system"))

    monkeypatch.setattr(registry.store, "write", down)
    item = overridden("c")
    r = client.post(SIGN + "/feedback", json={"feedback": [item]})
    assert r.status_code == 200 and r.get_json()["stored"] == 1  # journaled
    monkeypatch.setattr(registry.journal, "append_feedback", unwritable)
    r = client.post(SIGN + "/feedback", json={"feedback": [overridden("d")]})
    assert r.status_code == 503 and r.get_json()["error"] == "registry_unavailable"
    monkeypatch.undo()
    assert registry.flush()  # the database is back: the journaled item is shipped
    assert [r["card"] for r in exported(app) if r["record"] == "feedback"] == ["c"]


# -- summary, exports, purge --------------------------------------------------------------


def request_for(service_id: str, hook: str, patient: str) -> HookRequest:
    context = {"patientId": patient}
    return HookRequest(service_id, hook, str(uuid.uuid4()), context, {}, None, "http://x")


def record(registry: Registry, orders, findings, card_rules) -> list[str]:
    cards = [str(uuid.uuid4()) for _ in card_rules]
    summary = EvaluationSummary(
        policy_version="test-1",
        orders=tuple(OrderSummary(d, r, 40.0, None) for d, r in orders),
        findings=tuple(FindingSummary(*f) for f in findings),
        cards=tuple(
            CardSummary(c, tuple(rules), "warning", "ketamine")
            for c, rules in zip(cards, card_rules, strict=True)
        ),
    )
    registry.record(request_for("ketamine-order-sign", "order-sign", "p"), summary)
    return cards


def test_summary_counts_rules_outcomes_reasons_and_orders(database_url, clock):
    registry = registry_for(database_url, KEY.encode(), clock)
    clock.now = NOW - timedelta(days=10)
    [old] = record(registry, [("ketamine", "iv")], [("R10", "warning")], [["R10"]])
    clock.now = NOW
    [both] = record(
        registry,
        [("ketamine", "iv"), ("esketamine", "nasal")],
        [("R10", "warning"), ("R12", "critical")],
        [["R10", "R12"]],
    )
    [plan] = record(registry, [("ketamine", None)], [("R38", "info")], [["R38"]])
    registry.flush()
    items = [
        overridden(old, "a"),
        overridden(both, "b"),
        overridden(both, "b") | {"outcomeTimestamp": "2026-03-02T09:33:00Z"},
        {"card": plan, "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}]}
        | {"outcomeTimestamp": "2026-03-02T09:31:00Z"},
    ]
    registry.feedback("ketamine-order-sign", items)
    assert registry.flush()
    summary = governance.summary(registry.store)
    rules = {r["rule"]: r for r in summary["rules"]}
    assert {k: (v["fired"], v["accepted"], v["overridden"]) for k, v in rules.items()} == {
        "R10": (2, 0, 2),
        "R12": (1, 0, 1),  # a card carrying two rules counts for both
        "R38": (1, 1, 0),
    }
    assert rules["R10"]["top_override_reasons"] == [
        {"system": "urn:test:reasons", "code": "a", "count": 1},
        {"system": "urn:test:reasons", "code": "b", "count": 1},
    ]
    assert summary["orders_evaluated"] == [
        {"drug": "esketamine", "route": "nasal", "count": 1},
        {"drug": "ketamine", "route": "iv", "count": 2},
        {"drug": "ketamine", "route": None, "count": 1},
    ]
    recent = governance.summary(registry.store, since=NOW - timedelta(days=1))
    assert recent["evaluations"] == 2 and recent["feedback"] == 4  # feedback received today
    assert {r["rule"]: r["fired"] for r in recent["rules"]}["R10"] == 1
    registry.close()


def cli(database_url: str, *args: str, **env: str):
    env = {"KCDS_DATABASE_URL": database_url, **env}
    return CliRunner().invoke(main, ["registry", *args], env=env, catch_exceptions=False)


def test_exports_round_trip_in_both_formats(app, client, clock, database_url, tmp_path):
    clock.now = NOW - timedelta(days=3)
    old = evaluate(client)["cards"][0]
    clock.now = NOW
    new = evaluate(client)["cards"][0]
    registry_of(app).flush()
    feedback(client, accepted(old), overridden(new["uuid"], "r1"), overridden("unknown", "r2"))
    records = exported(app)
    assert [r["record"] for r in records] == ["evaluation"] * 2 + ["feedback"] * 3

    result = cli(database_url, "export", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line) for line in result.stdout.splitlines()] == records

    out = tmp_path / "registry.csv"
    assert cli(database_url, "export", "--format", "csv", "-o", str(out)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text("utf-8"))))
    lists = {"orders", "findings", "cards", "rules", "accepted_suggestions"}
    read_back = [
        {k: (orjson.loads(v) if k in lists else v) for k, v in row.items() if v != ""}
        for row in rows
    ]
    assert read_back == [{k: v for k, v in r.items() if v is not None} for r in records]

    since = cli(database_url, "export", "--since", (NOW - timedelta(days=1)).date().isoformat())
    assert [orjson.loads(line)["record"] for line in since.stdout.splitlines()] == [
        "evaluation",
        "feedback",
        "feedback",
        "feedback",
    ]
    assert cli(database_url, "export", "--since", "last week").exit_code == 2


def test_summary_from_the_command_line(app, client, database_url):
    card = evaluate(client)["cards"][0]
    registry_of(app).flush()
    feedback(client, accepted(card))
    result = cli(database_url, "summary")
    assert result.exit_code == 0, result.output
    assert "1 evaluations, 1 feedback items" in result.stdout
    assert any(line.split()[:4] == ["R38", "1", "1", "0"] for line in result.stdout.splitlines())
    as_json = orjson.loads(cli(database_url, "summary", "--format", "json").stdout)
    assert as_json == governance.summary(registry_of(app).store)


def test_purge_keeps_only_the_retention_period(app, client, clock, database_url):
    clock.now = datetime.now(UTC) - timedelta(days=40)
    old = evaluate(client)["cards"][0]
    clock.now = datetime.now(UTC)
    new = evaluate(client)["cards"][0]
    registry_of(app).flush()
    feedback(client, accepted(old), accepted(new))  # received now, about an old card
    clock.now = datetime.now(UTC) - timedelta(days=35)
    feedback(client, overridden("long-gone"))

    assert "KCDS_RETENTION_DAYS is not set" in cli(database_url, "purge").output
    result = cli(database_url, "purge", KCDS_RETENTION_DAYS="30")
    assert result.exit_code == 0, result.output
    assert "purged 1 evaluations and 2 feedback items" in result.stdout
    records = exported(app)
    assert [r["cards"][0]["uuid"] for r in records if r["record"] == "evaluation"] == [new["uuid"]]
    assert [r["card"] for r in records if r["record"] == "feedback"] == [new["uuid"]]


# -- the admin endpoint -------------------------------------------------------------------


def test_registry_summary_endpoint_needs_the_admin_token(app, client):
    evaluate(client)
    registry_of(app).flush()
    r = client.get("/registry/summary")
    assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.get("/registry/summary", headers={"Authorization": "Bearer " + "x" * 38})
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.get("/registry/summary", headers=auth)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    assert r.get_json() == governance.summary(registry_of(app).store)
    assert r.get_json()["evaluations"] == 1
    tomorrow = (NOW + timedelta(days=1)).date().isoformat()
    r = client.get(f"/registry/summary?since={tomorrow}", headers=auth)
    assert r.get_json()["evaluations"] == 0
    r = client.get("/registry/summary?since=yesterday", headers=auth)
    assert r.status_code == 400 and r.get_json()["field"] == "since"


def test_without_an_admin_token_there_is_no_summary_endpoint(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    r = app.test_client().get("/registry/summary", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
    registry_of(app).close()


# -- start-up -----------------------------------------------------------------------------


def test_the_registry_refuses_to_start_without_a_key_outside_development(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    with pytest.raises(ConfigError, match="KCDS_PSEUDONYM_KEY"):
        Registry.open(Settings(auth="jwt", database_url=url))
    development = Registry.open(Settings(auth="off", database_url=url))
    assert development is not None
    development.close()
    with pytest.raises(ConfigError, match="KCDS_PSEUDONYM_KEY must be at least 32"):
        Settings.from_env({"KCDS_PSEUDONYM_KEY": "short"})
    with pytest.raises(ConfigError, match="KCDS_ADMIN_TOKEN must be at least 32"):
        Settings.from_env({"KCDS_ADMIN_TOKEN": "short"})
    with pytest.raises(ConfigError, match="KCDS_DATABASE_URL"):
        Registry.open(Settings(auth="off", database_url="mysql://x/y"))
    result = cli("mysql://x/y", "summary")
    assert result.exit_code == 1 and "KCDS_DATABASE_URL must be" in result.output


def test_settings_of_the_registry_from_the_environment():
    settings = Settings.from_env(
        {
            "KCDS_PSEUDONYM_KEY": KEY,
            "KCDS_ADMIN_TOKEN": TOKEN,
            "KCDS_STORE_COMMENTS": "true",
            "KCDS_RETENTION_DAYS": "365",
        }
    )
    assert (settings.registry, settings.store_comments, settings.retention_days) == (
        True,
        True,
        365,
    )
    assert KEY not in repr(settings) and TOKEN not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.store_comments, defaults.retention_days, defaults.admin_token) == (
        False,
        None,
        None,
    )


def test_with_the_registry_off_nothing_is_written(tmp_path):
    url = f"sqlite:///{tmp_path}/off.db"
    app = make_app(url, tmp_path, registry=False, pseudonym_key=None)
    client = app.test_client()
    evaluate(client)
    assert feedback(client, overridden("c")) == {}
    assert not (tmp_path / "off.db").exists()


# -- migrations ---------------------------------------------------------------------------


def test_a_fresh_database_is_created_and_stamped_and_reopening_changes_nothing(database_url):
    for _ in range(2):
        registry_store = open_store(database_url)
        with registry_store.reading() as conn:
            versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
            assert versions == [schema.LATEST]
            tables = set(inspect(conn).get_table_names())
        assert {t.name for t in schema.metadata.sorted_tables} <= tables


def test_instances_starting_together_migrate_once(database_url):
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: open_store(database_url), range(6)))
    with stores[0].reading() as conn:
        assert conn.scalar(select(func.count()).select_from(schema.schema_version)) == 1


def test_an_older_schema_is_migrated_and_a_newer_one_refused(database_url, monkeypatch):
    open_store(database_url)

    def add_site(conn):
        conn.execute(text("ALTER TABLE kcds_evaluation ADD COLUMN site TEXT"))

    latest = schema.LATEST
    monkeypatch.setattr(schema, "LATEST", latest + 1)
    monkeypatch.setattr(schema, "MIGRATIONS", {latest + 1: add_site})
    migrated = open_store(database_url)
    with migrated.reading() as conn:
        versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
        assert versions == [latest, latest + 1]
        assert "site" in {c["name"] for c in inspect(conn).get_columns("kcds_evaluation")}
    monkeypatch.setattr(schema, "LATEST", latest)
    with pytest.raises(RegistryError, match=f"schema version {latest + 1}, newer"):
        open_store(database_url)


# -- the hook never waits for the database ------------------------------------------------


def test_feedback_the_moment_the_hook_answered_resolves_its_card_from_the_journal(
    database_url, monkeypatch, tmp_path
):
    """Issue 13.5: feedback sent right after the hook answer (the same millisecond) finds
    its card, though the evaluation cannot be in the database yet: its writes are held.
    The hook answers and the feedback is acknowledged while the database is locked; both
    are in it, linked, once the lock is gone."""
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.2)  # the shipper retries under the lock
    app = make_app(database_url, tmp_path)
    client = app.test_client()
    evaluate(client)
    assert registry_of(app).flush()
    with writes_held(database_url) as conn:
        card = evaluate(client)["cards"][0]
        r = client.post(SIGN + "/feedback", json={"feedback": [accepted(card)]})
        assert r.status_code == 200
        assert r.get_json() == {"stored": 1, "repeated": 0, "unknownCards": []}
        in_database = f"SELECT count(*) FROM kcds_card WHERE card_uuid = '{card['uuid']}'"
        assert conn.execute(in_database).fetchone()[0] == 0
        assert registry_of(app).recording()["journal_backlog"] == 2
    assert registry_of(app).flush()
    [record] = [r for r in exported(app) if r["record"] == "feedback"]
    assert (record["card"], record["rules"]) == (card["uuid"], ["R38"])
    registry_of(app).close()


#: the journal as the service created it before issue 15 (layout 0, no user_version)
JOURNAL_V0 = """
CREATE TABLE entry (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE card (card_uuid TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX card_at ON card (at);
CREATE TABLE feedback_key (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX feedback_key_at ON feedback_key (at);
CREATE TABLE status (
    id INTEGER PRIMARY KEY CHECK (id = 1), registry_up INTEGER, checked_at REAL, probed_at REAL
);
"""


def test_a_journal_left_by_the_previous_version_is_rebuilt_and_its_entries_ship(
    database_url, monkeypatch, tmp_path
):
    """A crashed instance's journal, in the layout of the version before (issue 15): the
    new version rebuilds it when it opens it, keeps its entries (and their seqs) and its
    card index, and ships the entries."""
    journaled: list[tuple[bytes, list[str]]] = []
    earlier = registry_for(database_url, KEY.encode())
    monkeypatch.setattr(
        earlier.journal,
        "append_evaluation",
        lambda payload, cards: journaled.append((payload, cards)),
    )
    [card] = record(earlier, [("ketamine", "iv")], [("R38", "info")], [["R38"]])
    earlier.close()
    [(payload, cards)] = journaled
    path = tmp_path / "crashed.journal.db"
    with sqlite3.connect(path) as old:
        old.executescript(JOURNAL_V0)
        old.execute(
            "INSERT INTO entry (seq, kind, payload) VALUES (7, 'evaluation', ?)", (payload,)
        )
        old.execute("INSERT INTO card (card_uuid, at) VALUES (?, ?)", (card, time.time()))
    old.close()

    journal = Journal(path)
    journal.open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    conn.close()
    assert "AUTOINCREMENT" not in tables["entry"] and "WITHOUT ROWID" in tables["card"]
    assert [(e.seq, e.payload) for e in journal.pending()] == [(7, payload)]
    assert journal.append_feedback([], cards) == (set(), {card})  # the index is kept
    journal.append_evaluation(b"{}", [])
    assert [e.seq for e in journal.pending()] == [7, 8]
    registry = Registry(open_store(database_url), KEY.encode(), journal)
    assert registry.flush()
    with registry.store.reading() as conn:
        stored = conn.scalars(select(schema.card.c.card_uuid)).all()
    registry.close()
    assert card in stored


def test_the_writer_batches_drops_when_full_retries_and_flushes_on_close():
    written: list[int] = []
    gate = threading.Event()
    failures = [Unavailable("down")] * 2

    def write(batch):
        gate.wait()
        if failures:
            raise failures.pop()
        written.extend(batch)

    writer = Writer(write, capacity=3)
    assert writer.put(0)
    time.sleep(LINGER + 0.15)  # 0 is in flight, waiting at the gate
    assert all(writer.put(i) for i in (1, 2, 3))
    assert not writer.put(4) and writer.dropped == 1
    gate.set()
    assert writer.flush(timeout=5)
    assert written == [0, 1, 2, 3]
    assert all(writer.put(i) for i in (5, 6, 7))
    writer.close(timeout=5)
    assert written == [0, 1, 2, 3, 5, 6, 7] and not writer.put(8)


def test_the_shipper_gathers_a_stream_into_few_rounds_and_reports_the_final_backlog(tmp_path):
    """Issue 15: entries arriving one by one are shipped tens to a round (a round's commit
    and journal writes are paid once for them), promptly, and the backlog the metrics last
    hear of is the final one."""
    journal = Journal(tmp_path / "journal.db")
    journal.open()
    batches: list[int] = []
    states: list[tuple[bool, int]] = []
    shipper = Shipper(
        journal,
        lambda entries: batches.append(len(entries)),
        lambda: None,
        Unavailable,
        lambda up, backlog: states.append((up, backlog)),
        Unrecorded(lambda n: None),
    )
    started = time.monotonic()
    for i in range(100):
        journal.append_evaluation(b"{}", [f"card-{i}"])
        time.sleep(0.002)
    deadline = time.monotonic() + 5
    while (journal.backlog() or states[-1:] != [(True, 0)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - started
    shipper.stop(2.0)
    assert sum(batches) == 100
    assert len(batches) <= took / GATHER + 2  # not a round per entry
    assert states[-1] == (True, 0)


def _append_from_a_process(path: str, n: int) -> None:
    journal = Journal(Path(path))
    for i in range(n):
        journal.append_evaluation(b"{}", [f"card-{os.getpid()}-{i}"])


def test_processes_appending_at_once_lose_nothing(tmp_path):
    """Two workers append to one journal at once: every entry and card is there."""
    journal = Journal(tmp_path / "journal.db")
    journal.open()
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_append_from_a_process, args=(str(journal.path), 300))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    journal.append_evaluation(b"{}", ["card-parent"])
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert journal.backlog() == 601
    assert len({entry.seq for entry in journal.pending(1000)}) == 601


def test_a_registry_database_outage_is_a_degradation_on_either_database(
    database_url, monkeypatch, tmp_path
):
    """SQLite or PostgreSQL alike: while the database does not take writes, hooks and
    feedback are answered, readiness is 200 and says the registry is down; once it takes them
    again, everything is stored."""
    monkeypatch.setattr("service.web.health.CACHE_SECONDS", 0.0)
    app = make_app(database_url, tmp_path)
    client = app.test_client()
    registry = registry_of(app)
    evaluate(client)
    assert registry.flush()
    write = registry.store.write

    def down(work, within):
        raise Unavailable("down")

    monkeypatch.setattr(registry.store, "write", down)
    card = evaluate(client)["cards"][0]
    r = client.post(SIGN + "/feedback", json={"feedback": [accepted(card)]})
    assert r.status_code == 200 and r.get_json()["unknownCards"] == []
    for _ in range(200):  # the shipper's next attempt finds the database down
        ready = client.get("/health/ready")
        if ready.get_json()["dependencies"]["registry"]["registry"] == "down":
            break
        time.sleep(0.02)
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert ready.get_json()["dependencies"]["registry"]["journal_backlog"] == 2
    monkeypatch.setattr(registry.store, "write", write)
    assert registry.flush(timeout=15)
    records = exported(app)
    assert [r["record"] for r in records].count("evaluation") == 2
    assert [r["card"] for r in records if r["record"] == "feedback"] == [card["uuid"]]
    assert client.get("/health/ready").get_json()["status"] == "ok"
    registry.close()
