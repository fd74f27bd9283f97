"""The rule engine's shapes: a rule is a pure function of an :class:`Evaluation`.

No I/O, no Flask, no clock reads: the clock (``Evaluation.now``), the policy and the record are
given. A rule module registers its rules with :func:`rule`; adding a rule is one function in
one module of this package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Literal

from service.engine.orders import DraftOrder
from service.engine.policy import Policy
from service.engine.record import Fact, PatientRecord
from service.engine.scope import Scope
from service.engine.terminology import Terminology

log = logging.getLogger("service.engine.rules")

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True)
class SuggestionSpec:
    """What a card should offer; rendered into CDS Hooks actions by ``service.engine.cards``."""

    kind: Literal["delete-order", "update-dose", "order-observation"]
    label: str
    loinc: str | None = None  # order-observation: the LOINC code to order
    display: str | None = None
    dose_mg: float | None = None  # update-dose: the corrected dose


@dataclass(frozen=True)
class Finding:
    """What a rule found. A rule leaves ``rule_id`` and ``order`` to :func:`evaluate`, which
    stamps the id the rule is registered under and the order it was evaluated for."""

    severity: Severity
    summary: str  # < 140 characters, names the problem and the drug
    detail: str  # markdown: why it matters, what to do
    facts: tuple[Fact, ...] = ()
    suggestions: tuple[SuggestionSpec, ...] = ()
    rule_id: str = ""
    order: str | None = None  # the draft order it is about


@dataclass(frozen=True)
class Evaluation:
    record: PatientRecord
    order: DraftOrder | None  # None for patient-view
    policy: Policy
    terminology: Terminology
    now: datetime
    hook: str

    def missing(self, key: str) -> bool:
        """The prefetch key could not be had (D01 reports it): absence rules stay silent."""
        return key in self.record.gaps

    def days_ago(self, days: float) -> datetime:
        return self.now - timedelta(days=days)

    @property
    def order_time(self) -> datetime:
        """When the order takes effect for age checks: its authoredOn, else now."""
        if self.order and self.order.authored:
            return self.order.authored
        return self.now

    @property
    def drug(self) -> str:
        """How cards name the drug being ordered (or of the course, for patient-view)."""
        if self.order:
            return self.order.label()
        kinds = {a.drug for a in self.record.administrations}
        return "esketamine" if kinds == {"esketamine"} else "ketamine"


RuleFn = Callable[[Evaluation], Iterable[Finding] | Finding | None]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    applies: Scope
    severity: str  # as the specification states it, e.g. "E critical / K warning"
    source: str  # source ids from evidence.md, e.g. "S4, S6; S16"
    reads: tuple[str, ...]  # the data it reads, for the catalogue
    concern: str  # the module (contraindications, interactions, ...)
    fn: RuleFn
    trigger: str = ""  # one line: what makes it fire, for the catalogue
    thresholds: tuple[str, ...] = ()  # policy threshold names it uses
    sign_only: bool = False  # pre-treatment data and the plan: order-sign only (spec §1)

    @cached_property  # read for every rule of every evaluation
    def hooks(self) -> tuple[str, ...]:
        """The hooks that run this rule."""
        return ("order-sign",) if self.sign_only else self.applies.hooks

    def run(self, ev: Evaluation) -> list[Finding]:
        result = self.fn(ev)
        if result is None:
            return []
        if isinstance(result, Finding):
            return [result]
        return list(result)


RULES: dict[str, Rule] = {}


def rule(
    id: str,
    *,
    title: str,
    applies: Scope,
    severity: str,
    source: str,
    reads: tuple[str, ...],
    trigger: str = "",
    thresholds: tuple[str, ...] = (),
    sign_only: bool = False,
) -> Callable[[RuleFn], RuleFn]:
    """Register a rule function under its specification id."""

    def register(fn: RuleFn) -> RuleFn:
        if id in RULES:
            raise ValueError(f"rule {id} registered twice")
        RULES[id] = Rule(
            id,
            title,
            applies,
            severity,
            source,
            reads,
            fn.__module__.rsplit(".", 1)[-1],
            fn,
            trigger,
            thresholds,
            sign_only,
        )
        return fn

    return register


def finding(
    severity: Severity,
    summary: str,
    detail: str,
    facts: Iterable[Fact] = (),
    suggestions: Iterable[SuggestionSpec] = (),
) -> Finding:
    """A finding of the rule being run (``evaluate`` stamps its id and the order)."""
    return Finding(severity, summary, detail, tuple(facts), tuple(suggestions))


def evaluate(ev: Evaluation) -> list[Finding]:
    """Run every enabled rule of the evaluation's hook whose scope covers its order, with the
    policy's severity overrides."""
    out: list[Finding] = []
    order = ev.order.ref if ev.order else None
    for r in RULES.values():
        if ev.hook not in r.hooks or not r.applies.covers(ev.order):
            continue
        if not ev.policy.enabled(r.id):
            continue
        try:
            results = r.run(ev)
        except Exception as exc:  # a bug must not hide the other rules' cards
            log.error(
                "rule failed",
                extra={"fields": {"rule": r.id, "error_type": type(exc).__name__}},
                exc_info=True,
            )
            results = [
                finding(
                    "warning",
                    f"Rule {r.id} ({r.title}) could not be checked"[:139],
                    "The service failed while checking this rule; the failure is logged. Check "
                    "this yourself.",
                )
            ]
        for f in results:
            out.append(
                replace(f, rule_id=r.id, order=order, severity=ev.policy.severity(r.id, f.severity))
            )
    return out
