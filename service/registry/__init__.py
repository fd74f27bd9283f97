"""The ketamine registry: every evaluation and every piece of feedback, pseudonymised.

Per evaluation it keeps exactly what ``ketamine-rules.md`` §9 lists: time, service, hook,
hookInstance, a keyed hash of the patient id, each ketamine order's drug, route, dose and
mg/kg, the rules fired with their severities, the card uuids with the rules each card
carries, and the policy and service versions. Per feedback item: the card, the outcome and
its time, the accepted suggestion uuids and the coded override reason (the clinician's
comment only with ``KCDS_STORE_COMMENTS=true``). No names, no free text from the chart, no
tokens; the raw patient id never leaves the request.

What is acknowledged:
- an evaluation when the background writer has committed it (milliseconds after the
  response; flushed on a graceful stop; see ``writer``), so the hook response never waits
  for the database;
- a feedback item when its POST answers 200: it is committed before the response, and a
  database that cannot take it yields a 503 the EHR can retry.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Table, select

from cds_hooks.errors import CDSHooksError, bad_request
from cds_hooks.service import HookRequest
from service import __version__
from service.config import ConfigError, Settings
from service.engine.summary import EvaluationSummary

from . import schema
from .store import Store, Unavailable, open_store
from .writer import Writer

log = logging.getLogger("service.registry")

#: evaluations a process may hold unwritten (about 1 kB each) before it drops new ones
QUEUE_CAPACITY = 10_000
#: seconds one attempt to write a batch of evaluations may take (then it is tried again)
BATCH_WITHIN = 5.0
#: seconds a feedback POST may wait for the database before answering 503
FEEDBACK_WITHIN = 10.0
#: seconds a stopping process spends writing its queue; under gunicorn's graceful timeout
SHUTDOWN_WITHIN = 10.0

Rows = dict[Table, list[dict[str, Any]]]
Clock = Callable[[], datetime]
#: kind of write that failed ("evaluations", "feedback", "queue_full") → None; for metrics
FailureHook = Callable[[str], None]


class Registry:
    """Records evaluations (through :meth:`record`) and feedback (through :meth:`feedback`)."""

    def __init__(
        self,
        store: Store,
        pseudonym_key: bytes,
        store_comments: bool = False,
        clock: Clock | None = None,
    ):
        self.store = store
        self._key = pseudonym_key
        self._store_comments = store_comments
        self._clock = clock or (lambda: datetime.now(UTC))  # the service's clock: see hooks
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._writer: Writer[Rows] | None = None
        self.on_failure: FailureHook = lambda kind: None  # set by the app (service.web.metrics)

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Registry | None:
        """The registry the settings describe, its database migrated; None when it is off.

        Refuses to start without ``KCDS_PSEUDONYM_KEY`` unless this is the development run
        (``KCDS_AUTH=off``), which draws a random key: its patient keys then match within one
        start of the service only.
        """
        if not settings.registry:
            return None
        key = settings.pseudonym_key
        if key is None:
            if settings.auth != "off":
                raise ConfigError(
                    "KCDS_PSEUDONYM_KEY is required while the registry is on "
                    "(set it, or set KCDS_REGISTRY=off)"
                )
            log.warning(
                "KCDS_PSEUDONYM_KEY is not set: development run, registry patient keys use "
                "a random key and will not match across restarts"
            )
            key = secrets.token_urlsafe(32)
        store = open_store(settings.database_url)
        return cls(store, key.encode(), settings.store_comments, clock)

    def pseudonym(self, patient_id: str) -> str:
        """The patient's registry key: HMAC-SHA256 of the id under the site's secret key, so
        one patient's evaluations link up, yet the id cannot be recovered or guessed from it
        without the key."""
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    # -- evaluations ----------------------------------------------------------------------

    def record(self, req: HookRequest, summary: EvaluationSummary) -> None:
        """The recorder ``KetamineCDS`` calls once per evaluation; only queues the rows."""
        eid = uuid.uuid4().hex
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
                {"card_uuid": card.uuid, "evaluation_id": eid, "position": i}
                for i, card in enumerate(summary.cards)
            ],
            schema.card_rule: [
                {"card_uuid": card.uuid, "position": i, "rule_id": rule_id}
                for card in summary.cards
                for i, rule_id in enumerate(card.rules)
            ],
        }
        writer = self._process_writer()
        if not writer.put(rows):
            self.on_failure("queue_full")
            log.error(
                "registry queue full: evaluation not recorded",
                extra={"fields": {"dropped": writer.dropped}},
            )

    def _write_evaluations(self, batch: list[Rows]) -> None:
        def work(conn: Connection) -> None:
            for table in schema.EVALUATION_TABLES:
                rows = [row for item in batch for row in item[table]]
                if rows:
                    conn.execute(self.store.insert_ignore(table), rows)

        try:
            self.store.write(work, within=BATCH_WITHIN)
        except Exception:
            self.on_failure("evaluations")
            raise

    def _process_writer(self) -> Writer[Rows]:
        """This process's writer, started on first use. gunicorn forks its workers after the
        app (and this registry) was built; neither a thread nor a pooled connection survives
        a fork, so each process starts its own and flushes it when it exits."""
        pid = os.getpid()
        if self._pid != pid or self._writer is None:
            with self._lock:
                if self._pid != pid or self._writer is None:
                    self.store.engine.dispose(close=False)  # leave the parent's connections be
                    self._writer = Writer(self._write_evaluations, QUEUE_CAPACITY)
                    self._pid = pid
                    atexit.register(self.close)
        return self._writer

    def ping(self) -> None:
        """Raises when the database does not answer a query (readiness)."""
        self._process_writer()  # this process's connections, not its parent's
        with self.store.reading() as conn:
            conn.execute(select(1))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until this process's queued evaluations are written."""
        return self._writer is None or self._writer.flush(timeout)

    def close(self) -> None:
        """Write what is queued (for up to :data:`SHUTDOWN_WITHIN` s) and release the database.
        Runs at exit; calling it again (a test closing early) does no harm."""
        writer, self._writer = self._writer, None
        if writer is not None and self._pid == os.getpid():
            writer.close(SHUTDOWN_WITHIN)
        self.store.engine.dispose()

    # -- feedback -------------------------------------------------------------------------

    def feedback(self, service_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The feedback sink: store the (schema-valid) items, committed before the 200.

        A repeated item is not stored twice. A card this registry has no record of is stored
        all the same and named in ``unknownCards``: it may come from another instance whose
        evaluation is still being written, and is linked to its rules once it is.
        """
        now = self._clock()
        rows = [self._feedback_row(service_id, i, item, now) for i, item in enumerate(items)]
        cards = {row["card_uuid"] for row in rows}
        self._process_writer()  # connections of this process, not of the one it forked from

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
            stored, unknown = self.store.write(work, within=FEEDBACK_WITHIN)
        except Unavailable:
            self.on_failure("feedback")
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
