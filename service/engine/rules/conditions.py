"""Shared shapes of the condition-based rules: find conditions in a value set, name them."""

from __future__ import annotations

from datetime import datetime

from service.engine.record import Condition, Fact
from service.engine.terminology import ConceptMatch

from .base import Evaluation


def found(
    ev: Evaluation,
    valueset: str,
    history_counts: bool = False,
    since: datetime | None = None,
) -> list[tuple[Condition, ConceptMatch]]:
    """Conditions in ``valueset``: active ones, any when history counts, or (with ``since``)
    active ones plus inactive ones whose onset or abatement is on or after ``since``."""
    out = []
    for c, m in ev.record.conditions_in(valueset, history_counts=history_counts or bool(since)):
        if history_counts or c.active or (since is not None and c.recent(since)):
            out.append((c, m))
    return out


def facts(hits: list[tuple[Condition, ConceptMatch]]) -> tuple[Fact, ...]:
    return tuple(c.fact(m) for c, m in hits)


def by_drug(ev: Evaluation, esketamine: str, ketamine: str) -> str:
    """'E critical / K warning' in the specification's terms."""
    return esketamine if ev.order and ev.order.drug == "esketamine" else ketamine
