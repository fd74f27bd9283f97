"""What the protocol layer reports about its work, for whoever measures it.

The protocol layer knows nothing of metrics libraries: it calls an :class:`Observer` when a
request is done, when it answers with cards, when a FHIR fetch ends and when a caller is
refused. The default observer does nothing; a service passes its own (the ketamine service's
turns these calls into Prometheus metrics). Every value passed comes from a fixed set (route
templates, service ids, status codes, prefetch keys, outcomes, refusal reasons) or is a
number: never anything from a patient's record or a token.
"""

from __future__ import annotations

from collections.abc import Sequence

from .models import Card

#: outcomes of one prefetch key's fetch (see :meth:`Observer.fetch_done`)
FETCH_OUTCOMES = ("ok", "empty", "incomplete", "failed", "timeout")


class Observer:
    """The no-op observer; subclass and override what you measure. Implementations must be
    thread-safe and quick: they run on the request path."""

    def request_done(self, route: str, service_id: str | None, status: int, seconds: float):
        """A request was answered: its route template (``/cds-services/<service_id>``, or
        ``unmatched``), the service id once it is known to be one of ours, the status code
        and the time it took."""

    def cards_returned(self, service_id: str, cards: Sequence[Card]) -> None:
        """A service call answered with these cards."""

    def fetch_done(self, key: str, outcome: str, seconds: float) -> None:
        """One prefetch key was fetched from the FHIR server; ``outcome`` is one of
        :data:`FETCH_OUTCOMES`."""

    def auth_failed(self, reason: str) -> None:
        """A caller was refused; ``reason`` is one of
        :data:`cds_hooks.auth.FAILURE_REASONS`."""
