"""The registry side of snooze (ketamine-rules.md §7, v2): the snooze overrides of one
patient's warning cards, by pseudonymous patient key and drug.

What counts is read, never copied: a card's feedback is joined to the card, its evaluation
(patient key, time), its own rule (``kcds_card_rule`` position 0) and the drug and indicator
recorded with it, so an override reaching the registry before its evaluation (another
instance, a journal not yet shipped) snoozes as soon as both are there. The read starts from
the ``(patient_key, recorded_at)`` index (schema 2) and touches only the patient's
evaluations of the longest snooze period: its cost does not grow with the registry.

A hook never waits long for it: the lookup runs on a small per-process pool and the hook
waits for its answer for at most :data:`LOOKUP_WITHIN` seconds. Every lookup's outcome is
counted (``kcds_snooze_lookups_total``); one that fails or is late means the cards go out
without snooze, and lookups rest for :data:`REST_AFTER_FAILURE` seconds, so a registry outage
costs the following requests nothing at all.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime

from sqlalchemy import and_, bindparam, select

from service.engine.snooze import SnoozeOverride

from . import schema
from .store import Store

#: seconds a hook waits for the snooze lookup before answering without it
LOOKUP_WITHIN = 0.5
#: seconds no lookup is tried after one failed or was late
REST_AFTER_FAILURE = 30.0
#: lookups one process runs at once (more wait their turn, within LOOKUP_WITHIN)
POOL_SIZE = 4

e, c, cr, fb = schema.evaluation, schema.card, schema.card_rule, schema.feedback


class SnoozeUnavailable(RuntimeError):
    """The registry did not say, in time, which warnings are snoozed."""


#: the snooze overrides of one patient's warning cards about some drugs, from evaluations
#: since a time: rule id, drug, reason code, the override's outcome and arrival times. Built
#: once with bound parameters, so a lookup only binds them (building it costs more than
#: running it)
OVERRIDES = (
    select(cr.c.rule_id, c.c.drug, fb.c.reason_code, fb.c.outcome_time, fb.c.received_at)
    .select_from(
        e.join(c, c.c.evaluation_id == e.c.id)
        .join(cr, and_(cr.c.card_uuid == c.c.card_uuid, cr.c.position == 0))
        .join(fb, fb.c.card_uuid == c.c.card_uuid)
    )
    .where(
        e.c.patient_key == bindparam("patient_key"),
        e.c.recorded_at >= bindparam("since", type_=schema.UTCDateTime),
        c.c.indicator == "warning",
        c.c.drug.in_(bindparam("drugs", expanding=True)),
        fb.c.outcome == "overridden",
        fb.c.reason_system == bindparam("system"),
        fb.c.reason_code.in_(bindparam("codes", expanding=True)),
    )
)


class SnoozeIndex:
    """A :class:`service.engine.snooze.SnoozeSource` over the registry database."""

    def __init__(
        self,
        store: Store,
        pseudonym: Callable[[str], str],
        start: Callable[[], None] = lambda: None,
        within: float | None = None,
        rest: float | None = None,
    ):
        self.store = store
        self._pseudonym = pseudonym
        self._start = start  # the registry's per-process start (its own connections)
        #: told each lookup's outcome (ok, late, failed, resting); set by the app (metrics)
        self.observe: Callable[[str], None] = lambda outcome: None
        self._within = LOOKUP_WITHIN if within is None else within
        self._rest = REST_AFTER_FAILURE if rest is None else rest
        self._resting_until = 0.0
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None

    def overrides(
        self,
        patient_id: str,
        drugs: Collection[str],
        system: str,
        codes: Collection[str],
        since: datetime,
    ) -> list[SnoozeOverride]:
        if time.monotonic() < self._resting_until:
            self.observe("resting")
            raise SnoozeUnavailable("snooze lookups rest after a failure")
        params = {
            "patient_key": self._pseudonym(patient_id),
            "drugs": list(drugs),
            "system": system,
            "codes": list(codes),
            "since": since,
        }
        future = self._process_pool().submit(self._read, params)
        try:
            found = future.result(timeout=self._within)
        except Exception as exc:  # late, refused, not migrated yet: no snooze this time
            self._resting_until = time.monotonic() + self._rest
            late = isinstance(exc, FutureTimeout)
            self.observe("late" if late else "failed")
            raise SnoozeUnavailable(f"snooze lookup failed ({type(exc).__name__})") from exc
        self.observe("ok")
        return found

    def _read(self, params: dict[str, object]) -> list[SnoozeOverride]:
        with self.store.engine.connect() as conn:  # one statement: consistent on its own
            rows = conn.execute(OVERRIDES, params).all()
        # when the clinician overrode: the time the EHR sent, but never later than its
        # arrival, so a client clock running ahead cannot lengthen a snooze
        return [
            SnoozeOverride(rule, drug, code, min(outcome, received))
            for rule, drug, code, outcome, received in rows
        ]

    def _process_pool(self) -> ThreadPoolExecutor:
        """This process's pool: gunicorn forks after the app was built, and threads do not
        survive a fork."""
        pid = os.getpid()
        if self._pid != pid or self._pool is None:
            self._start()
            with self._lock:
                if self._pid != pid or self._pool is None:
                    self._pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="kcds-snooze")
                    self._pid = pid
        return self._pool

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
