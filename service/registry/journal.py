"""The local journal: what this instance answered or acknowledged is on its own disk first.

Every evaluation (before its hook response leaves) and every feedback item (before its 200)
is appended to a SQLite file on the instance's volume, in WAL mode. ``synchronous=NORMAL``
(the default) keeps a commit through a crash of the process; ``KCDS_JOURNAL_SYNC=full``
through a power loss too, at the cost of an fsync per commit. SQLite was chosen over a
hand-written append-only file because its WAL already gives atomic, crash-safe appends from
several processes at once, and an index to look a card up by (feedback resolves a card of
this instance before its evaluation reaches the registry).

A :class:`Shipper` thread in each gunicorn worker moves the journal's rows to the registry
database in batches and deletes them once committed there. Only one process ships at a time
(an exclusive ``flock`` on ``<journal>.lock``, released by the kernel when its holder dies),
so a crashed worker's rows are shipped by a sibling, and a crashed instance's by its next
start. The registry's inserts are idempotent (their keys are drawn when the row is
journaled), so a batch shipped twice (a commit whose acknowledgement was lost) is stored
once.

The journal never holds a name, free text from the chart or a token: the same rows as the
registry (see ``service.registry``), waiting to be moved.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("service.registry")

#: seconds a journal write waits for another process's write (SQLite's busy timeout)
BUSY_TIMEOUT = 5.0
#: entries per shipped batch, at most
BATCH = 500
#: seconds the shipper waits before looking for new entries again when there were none
IDLE = 0.1
#: seconds the shipper gathers entries after a round that shipped less than a full batch.
#: Each round pays fixed costs (a read of the journal, a registry commit with its fsync, a
#: journal write): started at once, a round under load carried one or two entries and cost
#: more CPU than the requests themselves; after this pause it carries tens. An entry still
#: reaches the registry within about this (plus the commit) of being journaled.
GATHER = 0.05
#: seconds between two writes of the registry's state to the journal (and counts of the
#: backlog for the metrics) while the state stays the same: a change is written at once
STATE_EVERY = 1.0
#: seconds between two trims of the index of cards and feedback (what is older than
#: :data:`REMEMBER`): a trim per round would cost a write per round for rows an hour old
TRIM_EVERY = 5.0
#: seconds between two attempts to reach a registry database that did not answer (at most)
BACKOFF_MAX = 5.0
#: seconds between two registry probes while there is nothing to ship
PROBE_EVERY = 5.0
#: seconds between two log lines about unrecorded evaluations (each with the count)
REPORT_EVERY = 10.0
#: seconds the journal remembers the cards it issued and the feedback it acknowledged after
#: shipping them: feedback sent to this instance within that time is resolved and
#: de-duplicated here, without asking the registry database (and without racing the shipper)
REMEMBER = 3600.0

#: the journal's layout (SQLite's ``user_version``). 1: the entries' seq is a plain rowid
#: (AUTOINCREMENT wrote ``sqlite_sequence``, one more page per append; a plain rowid may start
#: over once every entry was shipped, which is harmless: only the shipper deletes, only up to
#: a seq it has read, and an entry appended meanwhile gets a higher one), and the card and
#: feedback index is WITHOUT ROWID (one b-tree fewer per append). A journal of an
#: earlier layout, left by an earlier version of the service, is rebuilt when first opened,
#: its rows kept with their seqs (a crashed instance's entries still ship after an upgrade)
VERSION = 1
#: the journal's tables at :data:`VERSION` (the columns of every earlier layout, in order)
TABLES = {
    "entry": "(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL)",
    "card": "(card_uuid TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID",
    "feedback_key": "(key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID",
    "status": "(id INTEGER PRIMARY KEY CHECK (id = 1), registry_up INTEGER, checked_at REAL, "
    "probed_at REAL)",
}
INDEXES = (
    "CREATE INDEX card_at ON card (at)",
    "CREATE INDEX feedback_key_at ON feedback_key (at)",
)


class JournalError(RuntimeError):
    """The journal did not take a write. ``full``: the disk (or the file's quota) is full,
    which the service rides out; anything else means the journal is unusable."""

    def __init__(self, cause: BaseException):
        name = getattr(cause, "sqlite_errorname", None) or type(cause).__name__
        self.full = name == "SQLITE_FULL"
        # SQLite's and the OS's messages name the failure, never the data
        super().__init__(f"{name}: {cause}")


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str  # "evaluation" or "feedback"
    payload: bytes  # the registry rows, JSON


@dataclass(frozen=True)
class RegistryState:
    """What the shipping process last saw of the registry database."""

    up: bool | None  # None: not tried yet
    checked_at: float | None  # epoch seconds


class Journal:
    """The journal file at ``path``; each thread of each process opens its own connection."""

    def __init__(self, path: Path, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous}")
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._append_lock = threading.Lock()  # one writer per process at a time: no busy waits

    def open(self) -> None:
        """Create the journal if needed and prove it takes a write; :class:`JournalError`
        with the cause otherwise. Leaves no connection open (gunicorn forks after this)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(exc) from None
        try:
            self.probe()
        finally:
            self._disconnect()

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # never a connection across a fork
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                if _version(conn) < VERSION:
                    _lay_out(conn)
            except BaseException:
                conn.close()
                raise
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def _disconnect(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.__dict__.clear()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock first); any SQLite or OS
        failure becomes :class:`JournalError`."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(exc) from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):  # a failed COMMIT may have ended it already
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error | OSError):
                raise JournalError(exc) from None
            raise

    def _read(self, query: str, params: Iterable = ()) -> list[tuple]:
        try:
            return self._connection().execute(query, tuple(params)).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(exc) from None

    # -- appending (the request threads) ------------------------------------------------

    def append_evaluation(self, payload: bytes, cards: Iterable[str]) -> None:
        """Journal one evaluation and index its cards; :class:`JournalError` when it did
        not take it."""
        now = time.time()
        with self._append_lock, self._transaction() as conn:
            conn.execute("INSERT INTO entry (kind, payload) VALUES ('evaluation', ?)", (payload,))
            conn.executemany(
                "INSERT OR IGNORE INTO card (card_uuid, at) VALUES (?, ?)",
                [(card, now) for card in cards],
            )

    def append_feedback(
        self, items: list[tuple[str, bytes]], cards: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """Journal the feedback items (key, payload) not journaled in the last
        :data:`REMEMBER` seconds; returns (the keys journaled now, those of ``cards`` this
        journal issued in that time)."""
        cards = list(cards)
        now = time.time()
        with self._append_lock, self._transaction() as conn:
            known = _matching(conn, "SELECT card_uuid FROM card WHERE card_uuid IN", cards)
            keys = [key for key, _ in items]
            seen = _matching(conn, "SELECT key FROM feedback_key WHERE key IN", keys)
            new: set[str] = set()
            for key, payload in items:
                if key in seen or key in new:
                    continue
                conn.execute("INSERT INTO entry (kind, payload) VALUES ('feedback', ?)", (payload,))
                conn.execute("INSERT INTO feedback_key (key, at) VALUES (?, ?)", (key, now))
                new.add(key)
        return new, known

    # -- shipping (the shipper thread) --------------------------------------------------

    def pending(self, limit: int = BATCH) -> list[Entry]:
        """The oldest entries not yet shipped."""
        rows = self._read("SELECT seq, kind, payload FROM entry ORDER BY seq LIMIT ?", (limit,))
        return [Entry(seq, kind, bytes(payload)) for seq, kind, payload in rows]

    def shipped(self, up_to: int) -> None:
        """Delete the entries up to ``up_to`` (committed in the registry)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM entry WHERE seq <= ?", (up_to,))

    def forget(self) -> None:
        """Delete what is older than :data:`REMEMBER` of the index of cards and feedback."""
        forget = time.time() - REMEMBER
        with self._transaction() as conn:
            conn.execute("DELETE FROM card WHERE at < ?", (forget,))
            conn.execute("DELETE FROM feedback_key WHERE at < ?", (forget,))

    def backlog(self) -> int:
        """Entries waiting to be shipped."""
        return self._read("SELECT count(*) FROM entry")[0][0]

    def set_registry_state(self, up: bool) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO status (id, registry_up, checked_at) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET registry_up = excluded.registry_up, "
                "checked_at = excluded.checked_at",
                (int(up), time.time()),
            )

    def registry_state(self) -> RegistryState:
        rows = self._read("SELECT registry_up, checked_at FROM status WHERE id = 1")
        if not rows or rows[0][0] is None:
            return RegistryState(None, None)
        return RegistryState(bool(rows[0][0]), rows[0][1])

    def probe(self) -> None:
        """A real write (a timestamp): raises :class:`JournalError` when the journal does not
        take one (readiness, start-up)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO status (id, probed_at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                (time.time(),),
            )


def _version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _lay_out(conn: sqlite3.Connection) -> None:
    """Create the journal's tables, or rebuild those of an earlier layout with their rows,
    in one transaction (a crash halfway leaves the earlier layout whole); a process that
    finds another one did it first leaves it be."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _version(conn) < VERSION:
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            existing = {name for (name,) in conn.execute(query)}
            for name, columns in TABLES.items():
                if name not in existing:
                    conn.execute(f"CREATE TABLE {name} {columns}")
                    continue
                conn.execute(f"CREATE TABLE {name}_v{VERSION} {columns}")
                conn.execute(f"INSERT INTO {name}_v{VERSION} SELECT * FROM {name}")
                conn.execute(f"DROP TABLE {name}")  # and its indexes
                conn.execute(f"ALTER TABLE {name}_v{VERSION} RENAME TO {name}")
            for index in INDEXES:
                conn.execute(index)
            conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):  # a failed COMMIT may have ended it already
            conn.execute("ROLLBACK")
        raise


def _matching(conn: sqlite3.Connection, select: str, values: list[str]) -> set[str]:
    if not values:
        return set()
    marks = ", ".join("?" * len(values))
    return {row[0] for row in conn.execute(f"{select} ({marks})", values)}


class Unrecorded:
    """Counts the evaluations nothing could record, and says so in the log at most once per
    :data:`REPORT_EVERY` seconds, with the count since the last line: never silent, never a
    line per request."""

    def __init__(self, on_count: Callable[[int], None]):
        self._on_count = on_count
        self._lock = threading.Lock()
        self._since_report = 0
        self._reported_at = 0.0

    def add(self, n: int, why: str) -> None:
        self._on_count(n)
        with self._lock:
            self._since_report += n
            self._why = why
        self.report()

    def report(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._since_report or (not force and now - self._reported_at < REPORT_EVERY):
                return
            n, self._since_report, self._reported_at = self._since_report, 0, now
        log.error(
            "evaluations not recorded",
            extra={"fields": {"count": n, "reason": self._why}},
        )


class Shipper:
    """The thread of one process that moves journal entries to the registry.

    ``ship(entries)`` commits the entries' rows to the registry database, raising
    ``unavailable`` when it did not answer; ``probe()`` raises when it does not answer a
    query. Every process runs one; the one holding the lock ships, the others only wait
    for it (and report unrecorded evaluations).
    """

    def __init__(
        self,
        journal: Journal,
        ship: Callable[[list[Entry]], None],
        probe: Callable[[], None],
        unavailable: type[Exception],
        on_state: Callable[[bool, int], None],
        unrecorded: Unrecorded,
    ):
        self.journal = journal
        self._ship = ship
        self._probe = probe
        self._unavailable = unavailable
        self._on_state = on_state  # (registry up, backlog) → None: the metrics
        self._unrecorded = unrecorded
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._lock_file: int | None = None
        self._reported: tuple[bool, float] | None = None  # (up, monotonic time) last reported
        self._unreported = False  # entries shipped since the backlog was last counted
        self._forgotten_at = -TRIM_EVERY
        self._thread = threading.Thread(target=self._run, name="kcds-shipper", daemon=True)
        self._thread.start()

    def stop(self, drain_within: float) -> None:
        """Stop. The process holding the lock first ships what is waiting, for at most
        ``drain_within`` seconds and only while the registry takes it; whatever is left stays
        in the journal for a sibling or the next start. Never waits on a database that is
        down."""
        self._drain_until = time.monotonic() + drain_within
        self._stop.set()
        self._thread.join(drain_within + 1.0)

    def _holds_lock(self) -> bool:
        if self._lock_file is None:
            self._lock_file = os.open(f"{self.journal.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self._holds_lock():
                self._unrecorded.report()
                self._stop.wait(1.0)
            backoff, probed_at = 0.0, -PROBE_EVERY
            while True:
                self._unrecorded.report()
                outcome = self._round(probed_at)
                if self._stop.is_set() and (
                    outcome not in (SHIPPED, FULL) or time.monotonic() >= self._drain_until
                ):
                    return
                if outcome in (SHIPPED, FULL):
                    backoff = 0.0
                    if outcome == FULL:
                        continue
                if outcome == PROBED:
                    probed_at = time.monotonic()
                if outcome == DOWN:
                    backoff = min(BACKOFF_MAX, max(0.5, backoff * 2))
                wait = {SHIPPED: GATHER, DOWN: backoff, BROKEN: BACKOFF_MAX}.get(outcome, IDLE)
                self._stop.wait(wait)
        except Exception:  # a bug: say so, rather than stop shipping in silence
            log.exception("journal shipper stopped")
        finally:
            self._unrecorded.report(force=True)
            if self._lock_file is not None:
                os.close(self._lock_file)  # releases the lock for a sibling

    def _round(self, probed_at: float) -> str:
        """Ship one batch, or (nothing to ship) probe the registry now and then."""
        try:
            entries = self.journal.pending()
        except JournalError as exc:
            log.error("journal unreadable", extra={"fields": {"reason": str(exc)}})
            return BROKEN
        if not entries:
            if time.monotonic() - probed_at < PROBE_EVERY:
                return self._state(IDLE_)
            try:
                self._probe()
            except Exception:
                return self._state(DOWN)
            return self._state(PROBED)
        try:
            self._ship(entries)
        except self._unavailable:
            return self._state(DOWN)
        try:
            self.journal.shipped(entries[-1].seq)
            if time.monotonic() - self._forgotten_at >= TRIM_EVERY:
                self.journal.forget()
                self._forgotten_at = time.monotonic()
        except JournalError as exc:  # shipped again later: stored once all the same
            log.error("journal not trimmed", extra={"fields": {"reason": str(exc)}})
            return BROKEN
        self._unreported = True
        return self._state(FULL if len(entries) >= BATCH else SHIPPED)

    def _state(self, outcome: str) -> str:
        """Tell the journal (readiness, the other processes) and the metrics whether the
        registry answers, and the backlog: at once when that changed, else at most every
        :data:`STATE_EVERY` seconds, and once more when the shipping stopped (so the
        backlog reported is never stale)."""
        now = time.monotonic()
        if outcome == IDLE_:
            if not self._unreported or self._reported is None:
                return outcome
            up = self._reported[0]
        else:
            up, last = outcome != DOWN, self._reported
            if last is not None and last[0] == up and now - last[1] < STATE_EVERY:
                return outcome
        try:
            self.journal.set_registry_state(up)
            backlog = self.journal.backlog()
        except JournalError:
            backlog = -1
        self._on_state(up, backlog)
        self._reported, self._unreported = (up, now), False
        return outcome


#: what one round of the shipper did (FULL: shipped a full batch, more may be waiting)
SHIPPED, FULL, PROBED, IDLE_, DOWN, BROKEN = "shipped", "full", "probed", "idle", "down", "broken"
