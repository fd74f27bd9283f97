"""Shared shapes of the condition-based rules: find conditions of a concept, name them. The
time and status semantics are the record's (§3b); this only reads them."""

from __future__ import annotations

from datetime import datetime

from service.engine.record import Condition, Fact
from service.engine.terminology import ConceptMatch

from .base import Evaluation


def found(
    ev: Evaluation,
    concept: str,
    history_counts: bool = False,
    since: datetime | None = None,
) -> list[tuple[Condition, ConceptMatch]]:
    """Conditions of ``concept``: current ones; any status when history counts; with
    ``since``, those whose onset (else recorded date) is in the window, any status."""
    return ev.record.conditions_in(concept, history_counts=history_counts, since=since)


def current_or_within(
    ev: Evaluation, concept: str, since: datetime
) -> list[tuple[Condition, ConceptMatch]]:
    """Current entries and, whatever their status, those with onset since ``since``."""
    return unique(found(ev, concept) + found(ev, concept, since=since))


def unique(hits: list[tuple[Condition, ConceptMatch]]) -> list[tuple[Condition, ConceptMatch]]:
    """Each entry once (the first concept it was found under), in order."""
    seen: set[str] = set()
    out = []
    for c, m in hits:
        if c.ref not in seen:
            seen.add(c.ref)
            out.append((c, m))
    return out


def facts(hits: list[tuple[Condition, ConceptMatch]]) -> tuple[Fact, ...]:
    return tuple(c.fact(m) for c, m in hits)


def by_drug(ev: Evaluation, esketamine: str, ketamine: str) -> str:
    """'E critical / K warning' in the specification's terms (Spravato: E)."""
    return esketamine if ev.order and ev.order.spravato else ketamine
