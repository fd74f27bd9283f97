"""Fixtures of the fault suite: a rig on a throwaway PostgreSQL database behind a fault
proxy. Every case is marked ``faults`` (``scripts/test -m faults`` runs them alone)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Rig
from tests.faults.proxy import FaultProxy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy(("127.0.0.1", 5432))
    yield proxy
    proxy.close()


@pytest.fixture
def rig(tmp_path, postgres_url, proxy) -> Iterator[Rig]:
    rig = Rig(tmp_path, postgres_url, proxy)
    yield rig
    if rig.server is not None and rig.server.process.poll() is None:
        rig.server.process.kill()
        rig.server.process.wait(10)
