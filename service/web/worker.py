"""The gunicorn worker class of ``KCDS_THREADS`` > 1: gthread, taking a new connection only
while one of its threads is free.

gunicorn's gthread worker accepts every connection it can (up to ``worker_connections``,
1,000) and keeps it for as long as the client reuses it (keep-alive). Clients that open their
connections together (an EHR's connection pool, a proxy's upstream pool, a load test) can
therefore all land on whichever worker woke first: measured with wrk's 8 connections on two
workers, one worker did 94–100% of the work while the other core stayed idle, and every
request queued behind the busy worker's four threads.

This worker accepts while fewer requests are in its hands (running, or waiting for a thread)
than it has threads, as the sync worker accepts only when idle; a new connection it leaves in
the listen queue goes to a sibling with a free thread. When every worker is full, a connection
still waiting after :data:`OVERDUE` seconds is taken all the same, so no connection waits for
a moment when some thread happens to be free (measured with 32 connections on 2 × 4 threads:
the p99 was over a second without this fallback). Connections a worker holds stay with it
(keep-alive is kept); what changes is only who takes a new one.
"""

from __future__ import annotations

import select
import time

from gunicorn.workers import gthread

#: seconds a new connection waits, while this worker's threads are all busy, for a sibling
#: with a free thread to take it (a free sibling sits in epoll and takes it within about a
#: millisecond; this only bounds the wait when every worker is full)
OVERDUE = 0.005


class ThreadWorker(gthread.ThreadWorker):
    _waiting_since: float | None = None  # when a full worker first saw a connection waiting
    _listeners: select.poll | None = None  # the listening sockets, to see a waiting connection

    @property
    def worker_connections(self) -> int:
        """The connection count up to which the worker's loop accepts (read once per turn
        of the loop): gunicorn's ``worker_connections`` while a thread is free or a waiting
        connection is overdue; its open connections (take none) otherwise."""
        busy = self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)
        if busy < self.cfg.threads or self._overdue():
            return self._connection_cap
        return self.nr_conns

    @worker_connections.setter
    def worker_connections(self, cap: int) -> None:  # gunicorn sets its setting here
        self._connection_cap = cap

    def _overdue(self) -> bool:
        """Whether a connection has been waiting in the listen queue for :data:`OVERDUE`."""
        if self._listeners is None:  # poll, not select: no limit on descriptor numbers
            self._listeners = select.poll()
            for listener in self.sockets:
                self._listeners.register(listener, select.POLLIN)
        if not self._listeners.poll(0):
            self._waiting_since = None
            return False
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since >= OVERDUE
