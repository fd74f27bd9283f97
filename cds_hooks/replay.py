"""JWT replay caches: the ``jti`` of every accepted token, remembered until it expires.

:class:`ReplayCache` is what :class:`cds_hooks.auth.JwtAuthenticator` needs;
:func:`open_replay_cache` gives the one a ``KCDS_REPLAY_CACHE`` URL names:

- :class:`MemoryReplayCache`, in-process: catches a token replayed against the same process
  only;
- :class:`RedisReplayCache`: ``SET key 1 NX EXAT expiry``, one round trip, atomic;
- :class:`SqlReplayCache`, on PostgreSQL (several hosts) or SQLite (one host's workers):
  ``INSERT … ON CONFLICT … DO UPDATE … WHERE expired RETURNING``, atomic under concurrent
  inserts of the same ``jti``, with a periodic purge of expired rows.

The last two are shared: several service instances refuse each other's replays. Their keys
are a SHA-256 of the issuer and the ``jti``: no token content is stored.

When a shared store cannot be reached, ``outage`` decides (``KCDS_REPLAY_OUTAGE``):

- ``memory`` (the default, :class:`OutageFallback`): the call goes on, checked against an
  in-process cache that every accepted ``jti`` is also written to; a replay against the
  same process is still refused, one against another process or instance is not, for the
  outage's duration. Logged (once per interval, with the count) and counted. Decision
  support goes on through a database outage;
- ``refuse``: the call is refused with a 503 (fail closed, and retryable), never let through
  with less than the shared check.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import ClassVar, Protocol, runtime_checkable

from .errors import CDSHooksError
from .sqltable import TIMEOUT, SharedTable

log = logging.getLogger("cds_hooks.replay")

#: least seconds between purges of expired rows (PostgreSQL), per process
PURGE_EVERY = 300.0
TABLE = "kcds_jwt_replay"

Clock = Callable[[], float]


class ReplayCacheUnavailable(CDSHooksError):
    """The shared replay cache did not answer: the call cannot be checked, so it is refused,
    with a 503 the caller may retry."""

    def __init__(self) -> None:
        super().__init__(
            503, "replay_cache_unavailable", "the service cannot check the token now; retry"
        )


@runtime_checkable
class ReplayCache(Protocol):
    """Remembers the ``jti`` of accepted tokens."""

    #: True when other processes see the same entries (a shared store, which readiness checks)
    shared: ClassVar[bool]

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record (issuer, jti) until ``expires_at`` (epoch seconds), atomically: True the
        first time, False when it is already recorded and not yet expired (a replay)."""
        ...

    def ping(self) -> None:
        """Raises when the store does not answer (readiness)."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...


class MemoryReplayCache:
    """The in-process :class:`ReplayCache`: a dict with expiry times and a heap to drop
    expired entries. Each process has its own; thread-safe."""

    shared = False

    def __init__(self, clock: Clock = time.time):
        self._clock = clock
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        key = (issuer, jti)
        now = self._clock()
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                when, old = heapq.heappop(self._heap)
                if self._expiry.get(old) == when:
                    del self._expiry[old]
            if self._expiry.get(key, -math.inf) > now:
                return False
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def ping(self) -> None:
        """Never raises: the cache is this process's memory."""

    def close(self) -> None:
        """Nothing to release."""


def cache_key(issuer: str, jti: str) -> str:
    """A fixed-length key for (issuer, jti): SHA-256 of both, each length-prefixed so that
    no two pairs share a key; nothing of the token is stored as it was."""
    raw = f"{len(issuer)}:{issuer}{len(jti)}:{jti}".encode()
    return hashlib.sha256(raw).hexdigest()


class RedisReplayCache:
    """A :class:`ReplayCache` in Redis (``redis://`` or ``rediss://`` URL)."""

    shared = True

    def __init__(self, url: str, prefix: str = "kcds:jti:", clock: Clock = time.time):
        try:
            import redis  # an extra of the package: only needed when configured
        except ImportError:
            raise ImportError(
                "a redis:// replay cache needs pip install 'ketamine-cds[redis]'"
            ) from None

        self._redis = redis
        self._client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, health_check_interval=30
        )
        self._prefix = prefix
        self._clock = clock

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        ttl = max(1, math.ceil(expires_at - self._clock()))
        try:
            return bool(self._client.set(self._prefix + cache_key(issuer, jti), 1, nx=True, ex=ttl))
        except self._redis.RedisError as exc:
            log.error("replay cache unavailable", extra={"error_type": type(exc).__name__})
            raise ReplayCacheUnavailable() from None

    def ping(self) -> None:
        """Raises when Redis does not answer (readiness)."""
        self._client.ping()

    def close(self) -> None:
        self._client.close()


class SqlReplayCache:
    """A :class:`ReplayCache` in a table of PostgreSQL (several hosts) or
    SQLite (the workers and instances of one host), created when missing.

    One row per accepted ``jti`` with its expiry (epoch seconds). Inserting a key that exists
    and has expired takes it over (first use again); one that exists and has not expired
    returns no row: a replay. Concurrent inserts of one key serialise on its unique index
    (SQLite: on the database's write lock), so exactly one of them wins. Expired rows are
    deleted every :data:`PURGE_EVERY` seconds.
    """

    shared = True

    def __init__(self, url: str, clock: Clock = time.time, purge_every: float = PURGE_EVERY):
        self._table = SharedTable(
            url,
            (
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " key text PRIMARY KEY, expires_at double precision NOT NULL)",
                f"CREATE INDEX IF NOT EXISTS {TABLE}_expiry ON {TABLE} (expires_at)",
            ),
            name="replay cache",
            log=log,
            unavailable=ReplayCacheUnavailable,
        )
        self._clock = clock
        self._purge_every = purge_every
        self._purged_at = -math.inf

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        self._table.ensure()
        now = self._clock()
        if now - self._purged_at >= self._purge_every:
            self._purged_at = now
            self.purge(now)
        rows = self._table.run(
            f"INSERT INTO {TABLE} (key, expires_at) VALUES (:key, :expires_at) "
            f"ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
            f"WHERE {TABLE}.expires_at <= :now RETURNING 1",
            {"key": cache_key(issuer, jti), "expires_at": expires_at, "now": now},
        )
        return bool(rows)

    def purge(self, now: float | None = None) -> None:
        """Delete the rows that have expired."""
        now = self._clock() if now is None else now
        self._table.run(f"DELETE FROM {TABLE} WHERE expires_at <= :now", {"now": now})

    def ping(self) -> None:
        """Raises when the database does not answer (readiness)."""
        self._table.run("SELECT 1")

    def close(self) -> None:
        self._table.dispose()


PostgresReplayCache = SqlReplayCache


#: seconds a shared store that failed is left alone (calls use the in-process fallback)
RETRY_AFTER = 2.0
#: seconds a call waits for the shared store before the fallback checks it (a healthy one
#: answers in a millisecond or two; a slow one must not hold every request thread)
FALLBACK_AFTER = 0.5
#: seconds between two log lines about calls checked by the fallback (each with the count)
REPORT_EVERY = 10.0


class OutageFallback:
    """A shared :class:`ReplayCache` with an in-process stand-in for its outages.

    Every ``jti`` the shared store accepts is also remembered in memory, so a token accepted
    before an outage is still refused here during it. A store that fails, or does not answer
    within :data:`FALLBACK_AFTER`, is left alone for :data:`RETRY_AFTER` seconds (one that
    hangs would otherwise cost each call its timeout, and hold every request thread).
    ``on_fallback`` (a metric) is called for each call the fallback checked.
    """

    shared = True

    def __init__(self, store: ReplayCache, clock: Clock = time.time):
        self.store = store
        self.memory = MemoryReplayCache(clock)
        self.on_fallback: Callable[[], None] = lambda: None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._unreported = 0
        self._reported_at = -REPORT_EVERY
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None

    def _calls(self) -> ThreadPoolExecutor:
        """This process's threads for store calls (no thread survives gunicorn's fork)."""
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(8, thread_name_prefix="kcds-replay")
                self._pool_pid = os.getpid()
            return self._pool

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        if time.monotonic() >= self._retry_at:
            call = self._calls().submit(self.store.first_use, issuer, jti, expires_at)
            try:
                first = call.result(timeout=FALLBACK_AFTER)
            except (ReplayCacheUnavailable, FutureTimeout):
                call.cancel()
                self._retry_at = time.monotonic() + RETRY_AFTER
            else:
                return self.memory.first_use(issuer, jti, expires_at) and first
        self._fell_back()
        return self.memory.first_use(issuer, jti, expires_at)

    def _fell_back(self) -> None:
        self.on_fallback()
        with self._lock:
            self._unreported += 1
            now = time.monotonic()
            if now - self._reported_at < REPORT_EVERY:
                return
            n, self._unreported, self._reported_at = self._unreported, 0, now
        log.warning(
            "replay cache unavailable: tokens checked against this process only",
            extra={"fields": {"calls": n}},
        )

    def ping(self) -> None:
        """Raises when the shared store does not answer."""
        self.store.ping()

    def close(self) -> None:
        self.store.close()


def open_replay_cache(url: str, clock: Clock = time.time, outage: str = "refuse") -> ReplayCache:
    """The replay cache a ``KCDS_REPLAY_CACHE`` URL names; ValueError for anything else.
    ``memory`` is the in-process one (no sharing). ``outage``: what a shared one does while
    its store is down, ``refuse`` (a 503) or ``memory`` (:class:`OutageFallback`)."""
    scheme = url.split(":", 1)[0].lower()
    if url == "memory":
        return MemoryReplayCache(clock)
    if scheme in ("redis", "rediss", "unix"):
        shared: ReplayCache = RedisReplayCache(url, clock=clock)
    elif scheme.split("+", 1)[0] in ("postgresql", "postgres", "sqlite"):
        shared = SqlReplayCache(url, clock=clock)
    else:
        raise ValueError(
            f"must be memory, redis://…, postgresql://… or sqlite:///…, not {scheme}:…"
        )
    if outage not in ("refuse", "memory"):
        raise ValueError(f"outage must be refuse or memory, not {outage}")
    return OutageFallback(shared, clock) if outage == "memory" else shared
