"""Where the request pipeline reads what a client did not prefetch: the :class:`FhirSource`.

:func:`cds_hooks.service.handle` depends on this protocol, not on an HTTP client, the way
httpx's ``Client`` depends on ``BaseTransport``. There are two implementations, as httpx has
``HTTPTransport`` and ``MockTransport``:

- :class:`cds_hooks.fhir.FhirClient` reads the client's ``fhirServer`` over HTTP (pooled,
  parallel, under one time budget, allow-listed);
- :class:`MockFhirSource` answers in-process from a function: the developer tools answer a
  fixture's reads from another fixture's data with it, and tests drive the pipeline with it
  where the HTTP fetching itself is not what they check.

This module imports no HTTP library, so neither does :mod:`cds_hooks.service`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .prefetch import KeyResult


@runtime_checkable
class FhirSource(Protocol):
    """Reads prefetch keys from the FHIR server a hook request names."""

    def allows(self, server: str) -> bool:
        """Whether this source may read from ``server`` (a request's ``fhirServer``); a
        request naming another server is refused before anything is read."""
        ...

    def complete(
        self,
        base: str,
        token: str | None,
        wanted: Mapping[str, str],
        partial: Mapping[str, KeyResult],
    ) -> dict[str, KeyResult]:
        """One result for every key of ``wanted`` (key → URL relative to ``base``) and of
        ``partial`` (a paged result whose ``next_url`` is still to follow). Never raises for
        the server's faults: a key that cannot be had is ``unavailable`` with a reason."""
        ...


@dataclass(frozen=True)
class Read:
    """One prefetch key a :class:`MockFhirSource` is asked for."""

    base: str  # the request's fhirServer
    token: str | None  # the request's fhirAuthorization access token
    key: str
    url: str  # relative to base (a wanted key), or the next page's URL (a paged key)
    partial: KeyResult | None = None  # what the client already sent of a paged key


Responder = Callable[[Read], KeyResult]


def _any_server(_server: str) -> bool:
    return True


class MockFhirSource:
    """A :class:`FhirSource` answered in-process, one key at a time, by ``respond`` (as
    httpx's ``MockTransport`` answers by a handler); ``allows`` decides which ``fhirServer``
    values it accepts (default: any)."""

    def __init__(self, respond: Responder, allows: Callable[[str], bool] = _any_server):
        self._respond = respond
        self._allows = allows

    def allows(self, server: str) -> bool:
        return self._allows(server)

    def complete(
        self,
        base: str,
        token: str | None,
        wanted: Mapping[str, str],
        partial: Mapping[str, KeyResult],
    ) -> dict[str, KeyResult]:
        reads = [Read(base, token, key, url) for key, url in wanted.items()]
        reads += [
            Read(base, token, key, result.next_url or "", result) for key, result in partial.items()
        ]
        return {read.key: self._respond(read) for read in reads}
