"""cds_hooks.ids: random UUIDs from the OS's random source, a block at a time."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from cds_hooks import ids


def test_version_4_and_unique_across_blocks():
    made = [ids.uuid4() for _ in range(3 * ids.BLOCK // 16 + 5)]  # crosses three blocks
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in made)
    assert len(set(made)) == len(made)


def test_unique_across_threads():
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: ids.uuid4(), range(5000)))
    assert len(set(made)) == len(made)


def test_a_forked_child_does_not_repeat_its_parents_uuids():
    ids.uuid4()  # the parent holds a partly used block
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next UUIDs, to the parent
        os.close(read)
        os.write(write, b"".join(ids.uuid4().bytes for _ in range(8)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(ids.uuid4().bytes for _ in range(8))
    assert len(child) == 128 and child != parent
    assert not {child[i : i + 16] for i in range(0, 128, 16)} & {
        parent[i : i + 16] for i in range(0, 128, 16)
    }
