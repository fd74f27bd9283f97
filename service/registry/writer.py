"""The in-memory writer: the fallback while the journal does not take writes.

Normally every evaluation is journaled (``journal``) and shipped from there. When the journal
fails (a full disk, a volume gone read-only), the request appends the evaluation to this
bounded in-memory queue instead (about 40 µs), and one thread per process writes what has
queued up straight to the registry database, lingering up to :data:`LINGER` for more so one
transaction carries many evaluations.

What it cannot write is counted, never silent (``on_lost``): the queue is written on a
normal stop for a bounded time; a hard kill or power loss loses what was still queued, and
when the queue is full (the database down for a long while too) further evaluations are
counted as unrecorded rather than slowing or failing the clinician's answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .store import Unavailable

log = logging.getLogger("service.registry")

T = TypeVar("T")

#: evaluations per transaction, at most
BATCH = 500
#: seconds the thread waits for more evaluations before it writes a batch
LINGER = 0.05


class Writer(Generic[T]):
    """A bounded queue drained by one daemon thread into ``write(batch)``.

    ``write`` raises :class:`Unavailable` when the database did not take the batch; the batch
    is then tried again, until :meth:`close` gives up on it.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        capacity: int,
        on_lost: Callable[[int], None] = lambda n: None,
    ):
        self._write = write
        self._on_lost = on_lost
        self._capacity = capacity
        self._pending: list[T] = []
        self._in_flight = 0
        self._closing_at: float | None = None  # monotonic deadline once close() was called
        self._cond = threading.Condition()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="kcds-registry", daemon=True)
        self._thread.start()

    def put(self, item: T) -> bool:
        """Queue ``item``; False (and counted in :attr:`dropped`) when the queue is full."""
        with self._cond:
            if len(self._pending) >= self._capacity or self._closing_at is not None:
                self.dropped += 1
                return False
            self._pending.append(item)
            self._cond.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._in_flight, timeout)

    def close(self, timeout: float) -> None:
        """Write what is queued, for up to ``timeout`` seconds, then stop the thread."""
        with self._cond:
            self._closing_at = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing_at is not None)
                if not self._pending:
                    return
                self._cond.wait_for(
                    lambda: len(self._pending) >= BATCH or self._closing_at is not None, LINGER
                )
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                self._in_flight = len(batch)
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _commit(self, batch: list[T]) -> None:
        while True:
            try:
                self._write(batch)
                return
            except Unavailable:
                closing_at = self._closing_at
                if closing_at is not None and time.monotonic() >= closing_at:
                    self._give_up(batch)
                    return
                time.sleep(0.5)
            except Exception:  # a bug, not the database: retrying would only repeat it
                log.exception("registry batch not recorded", extra={"fields": {"n": len(batch)}})
                return

    def _give_up(self, batch: list[T]) -> None:
        with self._cond:
            n = len(batch) + len(self._pending)
            self._pending.clear()
        self._on_lost(n)
