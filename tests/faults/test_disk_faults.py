"""The journal's disk fills up under load: the cards keep flowing, readiness stays 200 (a full
disk is reported, not a failure), evaluations and feedback go straight to the registry
database while the journal refuses them, and nothing is lost or goes uncounted."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stop
from tests.faults.harness import metric, report, under_fault

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 2 MB tmpfs (needs root: mount), unmounted after the test."""
    where = tmp_path / "journal"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the journal: {mounted.stderr.decode()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_journal_disk_full(rig, small_disk):
    server = rig.start(KCDS_JOURNAL=str(small_disk / "journal.db"))
    full: dict[str, object] = {}

    def end() -> None:
        full["refused"] = metric(server, 'kcds_registry_write_failures_total{kind="journal"}')
        full["filler"].unlink()

    load, watch, recovery = under_fault(rig, lambda: full.update(filler=fill(small_disk)), end, 6)
    unrecorded = metric(server, "kcds_evaluations_unrecorded_total")
    figures = report(
        "journal disk full",
        load,
        recovery,
        journal_writes_refused=full["refused"],
        evaluations_unrecorded_metric=unrecorded,
        readiness=watch.statuses,
        degradations_seen=sorted(watch.seen),
    )
    stop(server)
    assert full["refused"] > 0, "the journal never refused a write: the disk was not full"
    assert "registry:journal=full" in watch.seen
    assert set(watch.statuses) == {"200"}, watch.statuses
    assert not load.refused and not load.feedback_refused, figures
    assert figures["evaluations_lost"] == 0 and figures["feedback_lost"] == 0, figures
    assert unrecorded == 0
