"""Override reasons per rule, and the snooze reasons (ketamine-rules.md §7, v2).

The reasons live in ``data/overrides.yaml``: the service's override code system, the reasons
each rule declares (at most :data:`MAX_PER_RULE`, so a card offers what makes sense for it and
no more), and the two snooze reasons with their length in months. The registry stores and
counts whatever reason the EHR sends back (``service.registry``); a snooze reason also makes
the rule's warning stay away for that patient and drug (``service.engine.snooze``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from cds_hooks.models import Coding

from .terminology import load_yaml

#: the most reasons one rule may declare (the snooze reasons come on top, on warnings)
MAX_PER_RULE = 5


@dataclass(frozen=True)
class SnoozeReason:
    coding: Coding
    months: int


@dataclass(frozen=True)
class OverrideCatalogue:
    system: str
    reasons: dict[str, Coding]  # every non-snooze reason of the code system, by code
    snooze: tuple[SnoozeReason, ...]
    per_rule: dict[str, tuple[Coding, ...]]

    def for_rule(self, rule_id: str) -> tuple[Coding, ...]:
        """The reasons a card of ``rule_id`` offers (before any snooze reason)."""
        return self.per_rule[rule_id]

    def snooze_months(self, code: str) -> int | None:
        """How many months an override with ``code`` snoozes for; None if it does not."""
        return next((s.months for s in self.snooze if s.coding.code == code), None)

    @property
    def longest_snooze_months(self) -> int:
        return max(s.months for s in self.snooze)


class OverrideError(ValueError):
    """overrides.yaml names an unknown reason or declares too many for a rule."""


@cache
def catalogue() -> OverrideCatalogue:
    data = load_yaml("overrides.yaml")
    system = data["system"]
    reasons = {code: Coding(code, system, display) for code, display in data["reasons"].items()}
    snooze = tuple(
        SnoozeReason(Coding(code, system, s["display"]), int(s["months"]))
        for code, s in data["snooze"].items()
    )
    per_rule = {}
    for rule_id, codes in data["rules"].items():
        unknown = [c for c in codes if c not in reasons]
        if unknown or not codes or len(codes) > MAX_PER_RULE:
            raise OverrideError(
                f"overrides.yaml rules.{rule_id}: 1–{MAX_PER_RULE} known reasons, got {codes}"
            )
        per_rule[rule_id] = tuple(reasons[c] for c in codes)
    return OverrideCatalogue(system, reasons, snooze, per_rule)
