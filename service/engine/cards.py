"""Findings → CDS Hooks cards, per ketamine-rules.md §7.

One card per critical or warning rule; every info finding folds into the monitoring-plan card
("Also note"); cards ordered critical, warning, info. Suggested FHIR resources are built and
validated with ``fhir.resources`` (R4B models for FHIR R4 JSON).

v2: each card offers its rule's override reasons (``overrides``), warning cards also the
snooze reasons while the registry is on; a snoozed warning folds into the plan card instead
of a card of its own (``snooze``); a suggestion appears once per response, on the first
(most severe) card that offers it; the detail names the evidence grade where a rule rests on
the editorial [E] or on site policy [U] rather than on a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_hooks.ids import uuid4
from cds_hooks.models import INDICATOR_RANK, Action, Card, Coding, Link, Source, Suggestion
from service import __version__

from .orders import fhir_problem, many
from .overrides import catalogue as override_reasons
from .policy import schema as policy_schema
from .rules import RULES, Finding
from .rules.base import SuggestionSpec
from .snooze import Snoozed
from .terminology import load_yaml, obj

RULE_SYSTEM = "urn:ketamine-cds:rule"
PLAN_RULES = ("R37", "R38", "P01")  # the info card the other info findings fold into
#: the ``appContext`` of the course view link: which view of the SMART app to open
COURSE_VIEW = "course-view"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@cache
def sources() -> dict[str, dict[str, str]]:
    return load_yaml("sources.yaml")


def source_names(citation: str) -> str:
    """'S4, S6; S16' → the short titles, for the card; unknown ids are kept as written."""
    names = []
    for token in citation.replace(";", ",").split(","):
        sid = token.strip().split(" ")[0]
        if sid in sources() and sources()[sid]["label"] not in names:
            names.append(sources()[sid]["label"])
        elif sid and sid not in sources() and token.strip() not in names:
            names.append(token.strip())
    return "; ".join(names)


@cache
def evidence_grade(rule_id: str) -> str:
    """What of a rule is not a label fact (spec §7 v2), from its sources' verification
    (``sources.yaml``, the citation's own [E]/[U] mark) and its thresholds' sources (the
    policy schema's ``x-source``): '' when the rule rests on labels alone."""
    rule = RULES[rule_id]
    editorial, policy, verified = [], [], False
    for token in (t.strip() for t in rule.source.replace(";", ",").split(",")):
        known = sources().get(token.split(" ")[0])
        status = known["status"] if known else ""
        if "[E]" in token or "[E]" in status:
            editorial.append(known["label"] if known else token)
        elif "[U]" in token or "policy" in token:
            policy.append("the rule itself")
        verified = verified or "[V]" in status
    thresholds = policy_schema()["properties"]["thresholds"]["properties"]
    policy += [
        f"`{name}`"
        for name in rule.thresholds
        if "site policy" in thresholds.get(name, {}).get("x-source", "")
    ]
    parts = []
    if editorial:
        parts.append(f"editorial [E] ({'; '.join(dict.fromkeys(editorial))})")
    if policy:
        parts.append(f"site policy [U] ({', '.join(dict.fromkeys(policy))})")
    if not parts:
        return ""
    rest = "; the rest from verified sources [V]" if verified else ""
    return f"**Evidence grade:** {'; '.join(parts)}{rest}."


@dataclass(frozen=True)
class RenderContext:
    patient_id: str
    base_url: str
    policy_version: str
    #: the drug of each order a finding may be about (key None: the course, patient-view)
    drugs: Mapping[str | None, str] = field(default_factory=dict)
    #: the snoozes running for this patient (``snooze.look_up``)
    snoozed: Snoozed = field(default_factory=dict)
    #: warning cards offer the snooze reasons (only while a registry can honour them)
    snooze_offered: bool = False
    #: the SMART launch URL of the course view, when the web layer has SMART configured: the
    #: plan and course cards then link to it (issue 16)
    course_view_url: str | None = None

    def snoozed_until(self, finding: Finding) -> datetime | None:
        """The end of the snooze hiding this finding's card; None when it shows. Only a
        warning is ever snoozed: critical findings always show."""
        drug = self.drugs.get(finding.order)
        if finding.severity != "warning" or drug is None:
            return None
        return self.snoozed.get((drug, finding.rule_id))


def _course_view_link(main: Finding, ctx: RenderContext) -> tuple[Link, ...]:
    """The SMART link to the course view, on the plan card (order-sign) and the course card
    (patient-view) only, and only when SMART is configured."""
    if ctx.course_view_url is None or main.rule_id not in PLAN_RULES:
        return ()
    return (Link("Open the course view", ctx.course_view_url, "smart", COURSE_VIEW),)


def _service_request(loinc: str, display: str, patient_id: str) -> dict[str, Any]:
    """A draft ServiceRequest for one LOINC-coded measurement, built afresh for each card (a
    literal costs a fraction of a deep copy of a shared template)."""
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


@cache
def _check_service_request(loinc: str, display: str) -> None:
    """Validates a measurement's draft ServiceRequest as FHIR R4, once per measurement: the
    patient reference is all that differs from card to card."""
    ServiceRequest.model_validate(_service_request(loinc, display, "placeholder"))


def _with_dose(order: dict[str, Any], dose_mg: float | None) -> dict[str, Any]:
    """The draft order with the dose of its first dosage corrected, and that dosage's free text
    dropped (it would contradict the corrected dose). The dosage is read as the order was
    (:func:`~.orders.many`: one object where an array belongs, too) and written as an array.
    Only the path to the dose is copied: the rest is shared with the draft, never written to."""
    dosages = many(order.get("dosageInstruction")) or [{}]
    dosage = {key: value for key, value in obj(dosages[0]).items() if key != "text"}
    rates = many(dosage.get("doseAndRate")) or [{}]
    dose = {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}
    dosage["doseAndRate"] = [{**obj(rates[0]), "doseQuantity": dose}, *rates[1:]]
    return {**order, "dosageInstruction": [dosage, *dosages[1:]]}


def _action(
    spec: SuggestionSpec, finding: Finding, order: dict[str, Any] | None, ctx: RenderContext
) -> Action | None:
    """The suggestion's action; ``None`` when no valid FHIR R4 resource can be offered."""
    if spec.kind == "delete-order":
        return Action(
            "delete", f"Remove the draft order {finding.order}", resource_id=finding.order
        )
    if spec.kind == "update-dose":
        updated = _with_dose(order or {}, spec.dose_mg)
        if fhir_problem(updated, "suggestion") is not None:
            return None  # invalid FHIR R4 beyond its dose (D03 says where): nothing valid to offer
        return Action("update", f"Change the dose to {spec.dose_mg:g} mg", resource=updated)
    loinc, display = spec.loinc or "", spec.display or ""
    _check_service_request(loinc, display)
    resource = _service_request(loinc, display, ctx.patient_id)
    return Action("create", f"Order {spec.display} (LOINC {spec.loinc})", resource=resource)


def _suggestions(
    specs: Iterable[SuggestionSpec],
    finding: Finding,
    orders: dict[str, dict[str, Any]],
    ctx: RenderContext,
    seen: set[tuple[Any, ...]],
) -> tuple[Suggestion, ...]:
    """The card's suggestions, less those an earlier card of the response already made."""
    out = []
    for spec in specs:
        key = (
            spec.kind,
            spec.loinc,
            spec.dose_mg,
            finding.order if spec.kind != "order-observation" else None,
        )
        if key in seen:
            continue
        seen.add(key)
        action = _action(spec, finding, orders.get(finding.order or ""), ctx)
        if action is not None:
            out.append(Suggestion(spec.label, uuid=str(uuid4()), actions=(action,)))
    return tuple(out)


def _detail(finding: Finding, extra: str = "") -> str:
    rule = RULES[finding.rule_id]
    parts = [finding.detail]
    if finding.facts:
        parts.append(
            "**Found in the record**\n" + "\n".join(f"- {f.markdown()}" for f in finding.facts)
        )
    if extra:
        parts.append(extra)
    parts.append(f"**Source:** {source_names(rule.source)} (rule {rule.id})")
    if grade := evidence_grade(rule.id):
        parts.append(grade)
    return "\n\n".join(parts)


def _also_note(findings: list[Finding], ctx: RenderContext) -> str:
    lines = ["**Also note**"]
    for f in findings:
        facts = "; ".join(x.markdown() for x in f.facts[:3])
        until = ctx.snoozed_until(f)
        why = (
            f"Snoozed until {until.date().isoformat()} by an earlier override."
            if until
            else f.detail.splitlines()[0]
        )
        lines.append(
            f"- **{f.summary}** ({f.rule_id}). {why}" + (f" Found: {facts}." if facts else "")
        )
    return "\n".join(lines)


def _override_reasons(main: Finding, ctx: RenderContext) -> tuple[Coding, ...]:
    """The rule's own reasons on warning and critical cards; snooze on warnings only."""
    if main.severity == "info":
        return ()
    reasons = override_reasons()
    snooze = ctx.snooze_offered and main.severity == "warning"
    return reasons.for_rule(main.rule_id) + (
        tuple(s.coding for s in reasons.snooze) if snooze else ()
    )


def _card(
    main: Finding,
    folded: list[Finding],
    specs: list[SuggestionSpec],
    orders: dict[str, dict[str, Any]],
    ctx: RenderContext,
    seen: set[tuple[Any, ...]],
) -> Card:
    rule = RULES[main.rule_id]
    rule_ids = [
        main.rule_id,
        *dict.fromkeys(f.rule_id for f in folded if f.rule_id != main.rule_id),
    ]
    suggestions = _suggestions(specs, main, orders, ctx, seen)
    summary = main.summary if len(main.summary) < 140 else main.summary[:136] + "…"
    return Card(
        uuid=str(uuid4()),
        summary=summary,
        indicator=main.severity,
        detail=_detail(main, _also_note(folded, ctx) if folded else ""),
        source=Source(
            label=f"ketamine-cds rule {rule.id}: {rule.title}",
            url=f"{ctx.base_url}/rules/{rule.id}",
            topic=Coding(rule.id, RULE_SYSTEM, rule.title),
        ),
        suggestions=suggestions,
        selection_behavior=("any" if main.rule_id in PLAN_RULES else "at-most-one")
        if suggestions
        else None,
        override_reasons=_override_reasons(main, ctx),
        links=(
            Link(
                f"Rule {rule.id} in the ketamine-cds catalogue", f"{ctx.base_url}/rules/{rule.id}"
            ),
            *_course_view_link(main, ctx),
        ),
        extension={
            "ketamine-cds.rules": rule_ids,
            "ketamine-cds.drug": ctx.drugs.get(main.order),
            "ketamine-cds.policy": ctx.policy_version,
            "ketamine-cds.version": __version__,
        },
    )


def render(
    findings: Iterable[Finding], orders: dict[str, dict[str, Any]], ctx: RenderContext
) -> list[Card]:
    """The cards for one evaluation, de-duplicated, grouped and ordered.

    A snoozed warning folds into the plan card (or, without one, the card the info findings
    fold into); it never anchors a card of its own, so with no info card at all (an
    order-select answer, say) it is not shown: the registry still records that it fired.
    """
    unique: dict[tuple[str, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.rule_id, f.summary), f)
    ordered = sorted(unique.values(), key=lambda f: INDICATOR_RANK[f.severity])
    snoozed = [f for f in ordered if ctx.snoozed_until(f)]
    own = [f for f in ordered if f.severity != "info" and f not in snoozed]
    infos = [f for f in ordered if f.severity == "info"]
    plans = [f for f in infos if f.rule_id in PLAN_RULES]
    seen: set[tuple[Any, ...]] = set()  # one suggestion once per response
    cards = [_card(f, [], list(f.suggestions), orders, ctx, seen) for f in own]
    if infos:
        anchor = plans[0] if plans else infos[0]
        folded = [f for f in infos if f is not anchor] + snoozed
        specs = [*anchor.suggestions]
        specs += [s for f in folded for s in f.suggestions if s.kind == "order-observation"]
        cards.append(_card(anchor, folded, specs, orders, ctx, seen))
    return cards
