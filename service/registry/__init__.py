"""The ketamine registry: every evaluation and every piece of feedback, pseudonymised.

Per evaluation it keeps exactly what ``ketamine-rules.md`` §9 lists: time, service, hook,
hookInstance, a keyed hash of the patient id, each ketamine order's drug, route, dose and
mg/kg, the rules fired with their severities, the card uuids with the rules each card
carries, and the policy and service versions. Per feedback item: the card, the outcome and
its time, the accepted suggestion uuids and the coded override reason (the clinician's
comment only with ``KCDS_STORE_COMMENTS=true``). No names, no free text from the chart, no
tokens; the raw patient id never leaves the request.

The durability guarantee: every evaluation answered and every feedback item acknowledged
is on the instance's local disk (the journal, see ``journal``) before the answer leaves,
and reaches the registry database once it answers; only the loss of that disk loses it.

- An evaluation is appended to the journal before its hook response is sent (about 0.1 ms);
  a shipper thread moves it to the registry database in batches, so the hook response never
  waits for the database and a registry outage only delays recording.
- A feedback item is acknowledged (200) once journaled, whatever the database's state.
- When the journal does not take a write (disk full, volume gone read-only) the cards keep
  flowing: evaluations go to an in-memory queue written straight to the database (the
  pre-journal path, :mod:`writer`), feedback is written straight to the database (503 when
  that fails too). An evaluation that neither could record is counted
  (``kcds_evaluations_unrecorded_total``) and logged, once per interval with the count.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, Table, select
from sqlalchemy.engine import make_url

from cds_hooks import ids
from cds_hooks.errors import CDSHooksError, bad_request
from cds_hooks.service import HookRequest
from service import __version__
from service.config import ConfigError, Settings
from service.engine.summary import EvaluationSummary

from . import schema
from .journal import REPORT_EVERY, Entry, Journal, JournalError, Shipper, Unrecorded
from .store import Store, Unavailable, store_at
from .writer import Writer

log = logging.getLogger("service.registry")

#: evaluations a process may hold in memory (about 1 kB each) while the journal does not
#: take writes, before it counts new ones as unrecorded
QUEUE_CAPACITY = 10_000
#: seconds one attempt to write a batch to the registry database may take
BATCH_WITHIN = 5.0
#: seconds a feedback POST may wait for the database when the journal did not take it
FEEDBACK_WITHIN = 5.0
#: seconds a feedback POST waits for the database to say which items and cards it already
#: has; without an answer the items are acknowledged all the same (they are journaled)
LOOKUP_WITHIN = 1.0
#: seconds a stopping process ships what is journaled, while the database takes it
DRAIN_WITHIN = 2.0
#: seconds a stopping process writes its in-memory queue (only filled while the journal fails)
SHUTDOWN_WITHIN = 2.0
#: seconds the start may wait for the registry database (then it starts without it)
START_WITHIN = 5.0

Rows = dict[Table, list[dict[str, Any]]]
Clock = Callable[[], datetime]
#: the columns holding a time, per table: what a journaled row reads back as a datetime
_TIMES = {
    table.name: [c.name for c in table.columns if isinstance(c.type, schema.UTCDateTime)]
    for table in schema.metadata.sorted_tables
}


class RegistryObserver(Protocol):
    """What the registry reports, for metrics (``service.web.metrics``)."""

    def registry_failed(self, kind: str) -> None:
        """A write that failed: ``journal`` (the journal did not take an entry),
        ``evaluations`` (a direct batch, tried again), ``feedback`` (a POST answered 503),
        ``queue_full``."""

    def evaluations_unrecorded(self, count: int) -> None:
        """Evaluations answered that nothing could record."""

    def registry_state(self, up: bool, backlog: int) -> None:
        """The registry database answered (or not); journal entries waiting (-1: unknown)."""


class _Silent:
    def registry_failed(self, kind: str) -> None:
        pass

    def evaluations_unrecorded(self, count: int) -> None:
        pass

    def registry_state(self, up: bool, backlog: int) -> None:
        pass


def journal_path(settings: Settings) -> Path:
    """``KCDS_JOURNAL``, else a file beside the SQLite registry, else (PostgreSQL) one in the
    working directory named after the database, so two services on one host that record to
    different databases never share a journal."""
    if settings.journal:
        return Path(settings.journal)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        database = Path(url.database)
        return database.with_name(database.stem + ".journal.db")
    where = f"{url.host}:{url.port}/{url.database}".encode()
    return Path(f"kcds-journal-{hashlib.sha256(where).hexdigest()[:12]}.db")


class Registry:
    """Records evaluations (through :meth:`record`) and feedback (through :meth:`feedback`)
    in the journal; its shipper moves them to the registry database."""

    def __init__(
        self,
        store: Store,
        pseudonym_key: bytes,
        journal: Journal,
        store_comments: bool = False,
        clock: Clock | None = None,
        migrated: bool = True,
    ):
        self.store = store
        self.journal = journal
        self._key = pseudonym_key
        self._store_comments = store_comments
        self._clock = clock or (lambda: datetime.now(UTC))  # the service's clock: see hooks
        self._migrated = migrated
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._shipper: Shipper | None = None
        self._writer: Writer[Rows] | None = None  # only while the journal fails
        self._lookups: ThreadPoolExecutor | None = None
        self._journal_failed_at = -REPORT_EVERY
        self._journal_full = False
        self.observer: RegistryObserver = _Silent()  # set by the app (service.web.metrics)
        self.unrecorded = Unrecorded(lambda n: self.observer.evaluations_unrecorded(n))

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Registry | None:
        """The registry the settings describe; None when it is off.

        Refuses to start (a ConfigError naming the cause, within :data:`START_WITHIN`) when
        the journal or a SQLite registry cannot be written, or without
        ``KCDS_PSEUDONYM_KEY`` outside the development run (``KCDS_AUTH=off``, which draws a
        random key: its patient keys then match within one start of the service only). A
        registry database that does not answer is no reason to refuse: the service starts,
        journals, and migrates and ships once it answers.
        """
        if not settings.registry:
            return None
        key = settings.pseudonym_key
        if why := settings.missing_pseudonym_key():
            raise ConfigError(why)
        if key is None:
            log.warning(
                "KCDS_PSEUDONYM_KEY is not set: development run, registry patient keys use "
                "a random key and will not match across restarts"
            )
            key = secrets.token_urlsafe(32)
        store = store_at(settings.database_url)
        journal = Journal(journal_path(settings), settings.journal_sync.upper())
        try:
            journal.open()
        except JournalError as exc:
            raise ConfigError(f"KCDS_JOURNAL {journal.path} cannot be written ({exc})") from None
        migrated = True
        try:
            store.migrate(within=START_WITHIN)
        except Unavailable as exc:
            if exc.permanent:
                raise ConfigError(
                    f"KCDS_DATABASE_URL: the registry database cannot be written ({exc.permanent})"
                ) from None
            log.error(
                "registry database unavailable at start: recording to the journal until it answers",
                extra={"error_type": type(exc.__cause__).__name__},
            )
            migrated = False
        store.engine.dispose()  # no connection across gunicorn's fork
        return cls(store, key.encode(), journal, settings.store_comments, clock, migrated)

    def pseudonym(self, patient_id: str) -> str:
        """The patient's registry key: HMAC-SHA256 of the id under the site's secret key, so
        one patient's evaluations link up, yet the id cannot be recovered or guessed from it
        without the key."""
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    # -- evaluations ----------------------------------------------------------------------

    def record(self, req: HookRequest, summary: EvaluationSummary) -> None:
        """The recorder ``KetamineCDS`` calls once per evaluation; only queues the rows."""
        eid = ids.uuid4().hex
        rows: Rows = {
            schema.evaluation: [
                {
                    "id": eid,
                    "recorded_at": self._clock(),
                    "service_id": req.service_id,
                    "hook": req.hook,
                    "hook_instance": req.hook_instance,
                    "patient_key": self.pseudonym(req.context["patientId"]),
                    "policy_version": summary.policy_version,
                    "service_version": __version__,
                }
            ],
            schema.order: [
                {
                    "evaluation_id": eid,
                    "position": i,
                    "drug": o.drug,
                    "route": o.route,
                    "dose_mg": o.dose_mg,
                    "dose_mg_per_kg": o.dose_mg_per_kg,
                }
                for i, o in enumerate(summary.orders)
            ],
            schema.finding: [
                {"evaluation_id": eid, "position": i, "rule_id": f.rule_id, "severity": f.severity}
                for i, f in enumerate(summary.findings)
            ],
            schema.card: [
                {
                    "card_uuid": card.uuid,
                    "evaluation_id": eid,
                    "position": i,
                    "indicator": card.indicator,
                    "drug": card.drug,
                }
                for i, card in enumerate(summary.cards)
            ],
            schema.card_rule: [
                {"card_uuid": card.uuid, "position": i, "rule_id": rule_id}
                for card in summary.cards
                for i, rule_id in enumerate(card.rules)
            ],
        }
        self._journal_evaluation(rows)

    def _journal_evaluation(self, rows: Rows) -> None:
        self.start()
        try:
            cards = [row["card_uuid"] for row in rows[schema.card]]
            self.journal.append_evaluation(_dumps(rows), cards)
            return
        except JournalError as exc:
            self._journal_failed(exc)
        writer = self._fallback_writer()
        if not writer.put(rows):
            self.observer.registry_failed("queue_full")
            self.unrecorded.add(1, "journal unwritable and the in-memory queue full")

    def _journal_failed(self, exc: JournalError) -> None:
        """Counted each time; logged at most once per interval."""
        self.observer.registry_failed("journal")
        now = time.monotonic()
        if now - self._journal_failed_at >= REPORT_EVERY:
            self._journal_failed_at = now
            log.error(
                "journal write failed: recording straight to the registry database",
                extra={"fields": {"reason": str(exc)}},
            )

    def _write_evaluations(self, batch: list[Rows]) -> None:
        """The in-memory queue's writer (while the journal fails)."""

        def work(conn: Connection) -> None:
            self._insert_evaluations(conn, batch)

        try:
            self._write(work)
        except Exception:
            self.observer.registry_failed("evaluations")
            raise

    def _insert_evaluations(self, conn: Connection, batch: list[Rows]) -> None:
        for table in schema.EVALUATION_TABLES:
            rows = [row for item in batch for row in item[table]]
            if rows:
                conn.execute(self.store.insert_ignore(table), rows)

    def _write(self, work: Callable[[Connection], Any], within: float = BATCH_WITHIN) -> Any:
        """``store.write``, once the database was migrated (it may not have answered at
        start)."""
        if not self._migrated:
            self.store.migrate(within=within)
            self._migrated = True
        return self.store.write(work, within=within)

    def _ship(self, entries: list[Entry]) -> None:
        """The shipper's batch: every entry's rows in one transaction. An entry that fails
        for a reason other than the database's availability (a bug) would block every later
        one: it is logged, counted and set aside, the others shipped."""
        try:
            self._write(lambda conn: self._insert_entries(conn, entries))
        except Unavailable:
            raise
        except Exception:
            if len(entries) == 1:
                log.exception("journal entry not shippable: set aside")
                if entries[0].kind == "evaluation":
                    self.unrecorded.add(1, "journal entry not shippable")
                return
            for entry in entries:
                self._ship([entry])

    def _insert_entries(self, conn: Connection, entries: list[Entry]) -> None:
        evaluations: list[Rows] = []
        feedback: list[dict[str, Any]] = []
        for entry in entries:
            payload = orjson.loads(entry.payload)
            if entry.kind == "evaluation":
                tables = schema.EVALUATION_TABLES
                evaluations.append({t: _rows(t, payload.get(t.name, [])) for t in tables})
            else:
                feedback.extend(_rows(schema.feedback, [payload]))
        self._insert_evaluations(conn, evaluations)
        if feedback:
            conn.execute(self.store.insert_ignore(schema.feedback), feedback)

    def start(self) -> None:
        """This process's shipper, started once per process: gunicorn forks its workers
        after the app (and this registry) was built, and neither a thread nor a pooled
        connection survives a fork. ``post_worker_init`` calls it, so a worker ships what
        a crashed one left before its first request; any use calls it too."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            self.store.engine.dispose(close=False)  # leave the parent's connections be
            self._writer = None
            self._lookups = None
            self._shipper = Shipper(
                self.journal,
                self._ship,
                self.ping,
                Unavailable,
                self.observer.registry_state,
                self.unrecorded,
            )
            self._pid = pid
            atexit.register(self.close)

    def _fallback_writer(self) -> Writer[Rows]:
        with self._lock:
            if self._writer is None:
                self._writer = Writer(self._write_evaluations, QUEUE_CAPACITY, self._lost)
            return self._writer

    def _lost(self, n: int) -> None:
        self.unrecorded.add(n, "not written to the registry database before the stop")

    def ping(self) -> None:
        """Raises when the database does not answer a query."""
        with self.store.reading() as conn:
            conn.execute(select(1))

    def check_journal(self) -> None:
        """Readiness: raises :class:`JournalError` when the journal does not take a write.
        A full disk does not raise (recording then goes straight to the database); it shows
        in :meth:`recording`."""
        try:
            self.journal.probe()
            self._journal_full = False
        except JournalError as exc:
            if not exc.full:
                raise
            self._journal_full = True

    def recording(self) -> dict[str, Any]:
        """The recording's state, a degradation readiness reports: the registry database as
        the shipping process last saw it (``up``, ``down``, ``unknown``: not tried yet), the
        journal (``ok`` or ``full``) and its backlog. Local reads only: readiness never waits
        on the database."""
        up = self.journal.registry_state().up
        registry = "unknown" if up is None else ("up" if up else "down")
        journal = "full" if self._journal_full else "ok"
        return {
            "state": "ok" if (registry, journal) == ("up", "ok") else "degraded",
            "registry": registry,
            "journal": journal,
            "journal_backlog": self.journal.backlog(),
        }

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what this process journaled (or queued) is in the registry database;
        False if ``timeout`` ran out. For tests and tools: nothing in the service waits."""
        self.start()
        deadline = time.monotonic() + timeout
        while self.journal.backlog():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        writer = self._writer
        return writer is None or writer.flush(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop this process's shipper (it ships what waits for up to :data:`DRAIN_WITHIN` s
        while the database takes it; the rest stays journaled) and release the database.
        Runs at exit; calling it again (a test closing early) does no harm."""
        shipper, self._shipper = self._shipper, None
        writer, self._writer = self._writer, None
        if self._pid == os.getpid():
            if shipper is not None:
                shipper.stop(DRAIN_WITHIN)
            if writer is not None:
                writer.close(SHUTDOWN_WITHIN)
        self._pid = None
        self.store.engine.dispose()

    # -- feedback -------------------------------------------------------------------------

    def feedback(self, service_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The feedback sink: journal the (schema-valid) items, then answer 200.

        ``stored`` counts the items acknowledged now, ``repeated`` those acknowledged before
        (by this instance in the last hour, or by the registry database when it answers
        within :data:`LOOKUP_WITHIN`). ``unknownCards`` names the cards that neither this
        instance issued in the last hour nor the registry database knows; when the database
        does not answer in time, no card is named. An item is stored and
        linked to its card's rules all the same: the link is a join when read.
        """
        now = self._clock()
        rows = [self._feedback_row(service_id, i, item, now) for i, item in enumerate(items)]
        cards = {row["card_uuid"] for row in rows}
        keyed = {_feedback_key(row): row for row in rows}
        self.start()
        # the database first, then the journal: an item or card of this instance that the
        # shipper moves in between is still remembered by the journal (journal.REMEMBER)
        answer = self._lookup(cards, set(keyed))
        try:
            new, known = self.journal.append_feedback(
                [(key, _dumps(row)) for key, row in keyed.items()], cards
            )
        except JournalError as exc:
            self._journal_failed(exc)
            return self._store_feedback(rows, cards)
        if answer is None:
            unknown: set[str] = set()
        else:
            stored_before, known_there = answer
            new -= stored_before
            unknown = cards - known - known_there
        return {
            "stored": len(new),
            "repeated": len(rows) - len(new),
            "unknownCards": sorted(unknown),
        }

    def _lookup(self, cards: set[str], keys: set[str]) -> tuple[set[str], set[str]] | None:
        """(the feedback ``keys`` the registry database already has, the ``cards`` it
        knows), or None when it did not answer within :data:`LOOKUP_WITHIN` (or is known
        to be down)."""
        if not cards and not keys:
            return set(), set()
        try:
            if self.journal.registry_state().up is False:
                return None
        except JournalError:
            pass  # the journal's own failure shows when the items are appended
        card_uuids = cards | {key.split("\x1f")[1] for key in keys}

        def query() -> tuple[set[str], set[str]]:
            fb = schema.feedback
            with self.store.reading() as conn:
                known = set(
                    conn.scalars(
                        select(schema.card.c.card_uuid).where(schema.card.c.card_uuid.in_(cards))
                    )
                )
                present = conn.execute(
                    select(fb.c.service_id, fb.c.card_uuid, fb.c.outcome, fb.c.outcome_time).where(
                        fb.c.card_uuid.in_(card_uuids)
                    )
                ).all()
            stored = {_feedback_key(dict(row._mapping)) for row in present}
            return stored & keys, known

        with self._lock:
            if self._lookups is None:
                self._lookups = ThreadPoolExecutor(2, "kcds-lookup")
            lookups = self._lookups
        future = lookups.submit(query)
        try:
            return future.result(timeout=LOOKUP_WITHIN)
        except FutureTimeout:
            future.cancel()
            return None
        except Exception:
            return None

    def _store_feedback(self, rows: list[dict[str, Any]], cards: set[str]) -> dict[str, Any]:
        """Feedback straight to the database (while the journal does not take writes),
        committed before the 200; a 503 the EHR can retry when the database does not take it
        within :data:`FEEDBACK_WITHIN` either."""

        def work(conn: Connection) -> tuple[int, set[str]]:
            known = set(
                conn.scalars(
                    select(schema.card.c.card_uuid).where(schema.card.c.card_uuid.in_(cards))
                )
            )
            # RETURNING names the rows actually inserted, on both databases (a rowcount is
            # not reliable across drivers for INSERT … ON CONFLICT DO NOTHING)
            insert = self.store.insert_ignore(schema.feedback).returning(schema.feedback.c.id)
            stored = sum(len(conn.execute(insert.values(**row)).all()) for row in rows)
            return stored, cards - known

        try:
            stored, unknown = self._write(work, within=FEEDBACK_WITHIN)
        except Unavailable:
            self.observer.registry_failed("feedback")
            raise CDSHooksError(
                503, "registry_unavailable", "the feedback could not be stored; send it again"
            ) from None
        return {"stored": stored, "repeated": len(rows) - stored, "unknownCards": sorted(unknown)}

    def _feedback_row(
        self, service_id: str, index: int, item: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        where = f"feedback[{index}].outcomeTimestamp"
        try:
            outcome_time = datetime.fromisoformat(item["outcomeTimestamp"])
        except ValueError:
            raise bad_request(f"{where} is not a valid date and time", field=where) from None
        override = item.get("overrideReason") or {}
        reason = override.get("reason") or {}
        comment = override.get("userComment") or None
        suggestions = [s["id"] for s in item.get("acceptedSuggestions") or ()]
        return {
            "received_at": now,
            "service_id": service_id,
            "card_uuid": item["card"],
            "outcome": item["outcome"],
            "outcome_time": outcome_time,
            "accepted_suggestions": orjson.dumps(suggestions).decode() if suggestions else None,
            "reason_system": reason.get("system"),
            "reason_code": reason.get("code"),
            "user_comment": comment if self._store_comments else None,
        }


def _dumps(rows: Rows | dict[str, Any]) -> bytes:
    """Registry rows as journal JSON: evaluation rows by table name."""
    if rows and isinstance(next(iter(rows)), Table):
        return orjson.dumps({str(table.name): table_rows for table, table_rows in rows.items()})
    return orjson.dumps(rows)


def _rows(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Journaled rows of ``table`` as the database takes them: times back to datetimes."""
    times = _TIMES[table.name]
    for row in rows:
        for name in times:
            if row.get(name) is not None:
                row[name] = datetime.fromisoformat(row[name])
    return rows


def _feedback_key(row: dict[str, Any]) -> str:
    """The registry's unique key of a feedback item (service, card, outcome, outcome time),
    as one string."""
    when = row["outcome_time"].astimezone(UTC).replace(tzinfo=None).isoformat()
    return "\x1f".join((row["service_id"], row["card_uuid"], row["outcome"], when))
