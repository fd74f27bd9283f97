"""Snooze (ketamine-rules.md §7, v2): a warning a clinician snoozed stays away for that patient
and drug until the snooze ends.

A clinician overrides a warning card with a snooze reason (``overrides.yaml``: 1 or 3
months); the EHR sends that back as feedback and the registry stores it. A later evaluation
for the same patient (the registry's pseudonymous key) and drug asks a :class:`SnoozeSource`
for those overrides; a warning of a snoozed rule then shows no card of its own and folds into
the plan card's "Also note" as "snoozed until <date> by an earlier override"
(``service.engine.cards``). Critical findings are never snoozed.

The engine stays pure: the source is a Protocol the web app fills with the registry, and the
clock is the evaluation's. Advice never depends on the audit trail: a source that fails (or
is absent, with the registry off) means no snooze is applied, never fewer warnings or a
failed answer.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from .overrides import catalogue

log = logging.getLogger("service.engine.snooze")

#: feedback normally reaches the service minutes after the card was shown; an override given
#: up to this long after its evaluation is still found
FEEDBACK_LAG = timedelta(days=7)

#: (drug, rule id) → the end of the snooze
Snoozed = dict[tuple[str, str], datetime]


@dataclass(frozen=True)
class SnoozeOverride:
    """A snooze override of a warning card, as the registry found it."""

    rule_id: str  # the card's own rule
    drug: str  # "ketamine" | "esketamine": the drug of the order the card was about
    code: str  # the snooze reason code
    at: datetime  # when the clinician overrode the card


class SnoozeSource(Protocol):
    """Where the snooze overrides are kept (the registry: ``service.registry.snooze``)."""

    def overrides(
        self,
        patient_id: str,
        drugs: Collection[str],
        system: str,
        codes: Collection[str],
        since: datetime,
    ) -> Iterable[SnoozeOverride]:
        """Overrides with one of ``codes`` (of code system ``system``) of warning cards about
        this patient and one of ``drugs``, from evaluations made since ``since``. Raises when
        it cannot tell."""
        ...


def add_months(when: datetime, months: int) -> datetime:
    """``when`` plus calendar months, the day clamped to the month's end (31 Jan + 1 → 28/29
    Feb), as a clinician reads "snooze for 1 month"; negative ``months`` go back."""
    year, month = divmod(when.month - 1 + months, 12)
    year += when.year
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


def active(overrides: Iterable[SnoozeOverride], now: datetime) -> Snoozed:
    """The snoozes still running at ``now``: per drug and rule, the latest end."""
    reasons = catalogue()
    out: Snoozed = {}
    for o in overrides:
        months = reasons.snooze_months(o.code)
        if months is None:
            continue
        until = add_months(o.at, months)
        key = (o.drug, o.rule_id)
        if until > now and (key not in out or until > out[key]):
            out[key] = until
    return out


def look_up(
    source: SnoozeSource | None, patient_id: str, drugs: Collection[str], now: datetime
) -> Snoozed:
    """The running snoozes for this patient and these drugs; none when there is no source or
    it fails (logged here; the registry counts its own failures)."""
    if source is None or not drugs:
        return {}
    reasons = catalogue()
    since = add_months(now, -reasons.longest_snooze_months) - FEEDBACK_LAG
    codes = [s.coding.code for s in reasons.snooze]
    try:
        found = list(source.overrides(patient_id, sorted(drugs), reasons.system, codes, since))
    except Exception as exc:  # an outage or a bug there must never cost the cards
        log.warning(
            "snooze not applied: the registry could not be asked",
            extra={"fields": {"error_type": type(exc).__name__}},
        )
        return {}
    return active(found, now)
