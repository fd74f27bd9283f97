"""What the engine tells the registry about one evaluation: the orders checked, the rules that
fired and the cards sent. No patient data: the registry adds the pseudonymous patient key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OrderSummary:
    drug: str  # "ketamine" | "esketamine"
    route: str | None  # iv, im, nasal, sublingual, oral, other; None = not stated
    dose_mg: float | None
    dose_mg_per_kg: float | None  # as ordered, or from the dose and the latest weight


@dataclass(frozen=True, slots=True)
class FindingSummary:
    rule_id: str
    severity: str  # after the policy's severity overrides


@dataclass(frozen=True, slots=True)
class CardSummary:
    uuid: str
    rules: tuple[str, ...]  # the card's own rule first, then the rules folded into it
    indicator: str  # critical, warning, info: only a warning card can be snoozed
    drug: str | None  # of the order (or course) the card is about: snoozes are per drug


@dataclass(frozen=True, slots=True)
class EvaluationSummary:
    policy_version: str
    orders: tuple[OrderSummary, ...]  # none for patient-view
    findings: tuple[FindingSummary, ...]
    cards: tuple[CardSummary, ...]
