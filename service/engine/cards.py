"""Findings → CDS Hooks cards, per ketamine-rules.md §7.

One card per critical or warning rule; every info finding folds into the monitoring-plan card
("Also note"); cards ordered critical, warning, info. Suggested FHIR resources are built and
validated with ``fhir.resources`` (R4B models for FHIR R4 JSON).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_hooks.models import INDICATOR_RANK, Action, Card, Coding, Link, Source, Suggestion
from service import __version__

from .rules import RULES, Finding
from .rules.base import SuggestionSpec
from .terminology import load_yaml

RULE_SYSTEM = "urn:ketamine-cds:rule"
OVERRIDE_SYSTEM = "urn:ketamine-cds:override-reason"
OVERRIDE_REASONS = (
    Coding("benefit-outweighs-risk", OVERRIDE_SYSTEM, "Benefit outweighs risk"),
    Coding("anaesthesia-co-managed", OVERRIDE_SYSTEM, "Co-managed with anaesthesia"),
    Coding("chart-data-wrong", OVERRIDE_SYSTEM, "Chart data outdated or wrong"),
    Coding("patient-consents", OVERRIDE_SYSTEM, "Patient informed and consents"),
    Coding("research-protocol", OVERRIDE_SYSTEM, "Research protocol"),
)
PLAN_RULES = ("R37", "R38", "P01")  # the info card the other info findings fold into
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


@dataclass(frozen=True)
class RenderContext:
    patient_id: str
    base_url: str
    policy_version: str


@cache
def _service_request_template(loinc: str, display: str) -> dict[str, Any]:
    """A draft ServiceRequest for one LOINC-coded measurement, validated once as FHIR R4."""
    resource = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
        "subject": {"reference": "Patient/placeholder"},
    }
    ServiceRequest.model_validate(resource)
    return resource


def _action(
    spec: SuggestionSpec, finding: Finding, order: dict[str, Any] | None, ctx: RenderContext
) -> Action:
    if spec.kind == "delete-order":
        return Action(
            "delete", f"Remove the draft order {finding.order}", resource_id=finding.order
        )
    if spec.kind == "update-dose":
        updated = copy.deepcopy(order or {})
        dosage = updated.setdefault("dosageInstruction", [{}])[0]
        dose_and_rate = dosage.setdefault("doseAndRate", [{}])[0]
        dose_and_rate["doseQuantity"] = {
            "value": spec.dose_mg,
            "unit": "mg",
            "system": UCUM,
            "code": "mg",
        }
        dosage.pop("text", None)  # the free text would contradict the corrected dose
        MedicationRequest.model_validate(updated)
        return Action("update", f"Change the dose to {spec.dose_mg:g} mg", resource=updated)
    resource = copy.deepcopy(_service_request_template(spec.loinc or "", spec.display or ""))
    resource["subject"]["reference"] = f"Patient/{ctx.patient_id}"
    return Action("create", f"Order {spec.display} (LOINC {spec.loinc})", resource=resource)


def _suggestions(
    specs: Iterable[SuggestionSpec],
    finding: Finding,
    orders: dict[str, dict[str, Any]],
    ctx: RenderContext,
) -> tuple[Suggestion, ...]:
    out, seen = [], set()
    for spec in specs:
        key = (spec.kind, spec.loinc, spec.dose_mg)
        if key in seen:
            continue
        seen.add(key)
        action = _action(spec, finding, orders.get(finding.order or ""), ctx)
        out.append(Suggestion(spec.label, uuid=str(uuid.uuid4()), actions=(action,)))
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
    return "\n\n".join(parts)


def _also_note(findings: list[Finding]) -> str:
    lines = ["**Also note**"]
    for f in findings:
        facts = "; ".join(x.markdown() for x in f.facts[:3])
        lines.append(
            f"- **{f.summary}** ({f.rule_id}). {f.detail.splitlines()[0]}"
            + (f" Found: {facts}." if facts else "")
        )
    return "\n".join(lines)


def _card(
    main: Finding,
    folded: list[Finding],
    specs: list[SuggestionSpec],
    orders: dict[str, dict[str, Any]],
    ctx: RenderContext,
) -> Card:
    rule = RULES[main.rule_id]
    rule_ids = [
        main.rule_id,
        *dict.fromkeys(f.rule_id for f in folded if f.rule_id != main.rule_id),
    ]
    suggestions = _suggestions(specs, main, orders, ctx)
    summary = main.summary if len(main.summary) < 140 else main.summary[:136] + "…"
    serious = main.severity in ("warning", "critical")
    return Card(
        uuid=str(uuid.uuid4()),
        summary=summary,
        indicator=main.severity,
        detail=_detail(main, _also_note(folded) if folded else ""),
        source=Source(
            label=f"ketamine-cds rule {rule.id}: {rule.title}",
            url=f"{ctx.base_url}/rules/{rule.id}",
            topic=Coding(rule.id, RULE_SYSTEM, rule.title),
        ),
        suggestions=suggestions,
        selection_behavior=("any" if main.rule_id in PLAN_RULES else "at-most-one")
        if suggestions
        else None,
        override_reasons=OVERRIDE_REASONS if serious else (),
        links=(
            Link(
                f"Rule {rule.id} in the ketamine-cds catalogue", f"{ctx.base_url}/rules/{rule.id}"
            ),
        ),
        extension={
            "ketamine-cds.rules": rule_ids,
            "ketamine-cds.policy": ctx.policy_version,
            "ketamine-cds.version": __version__,
        },
    )


def render(
    findings: Iterable[Finding], orders: dict[str, dict[str, Any]], ctx: RenderContext
) -> list[Card]:
    """The cards for one evaluation, de-duplicated, grouped and ordered."""
    unique: dict[tuple[str, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.rule_id, f.summary), f)
    ordered = sorted(unique.values(), key=lambda f: INDICATOR_RANK[f.severity])
    cards: list[Card] = []
    infos = [f for f in ordered if f.severity == "info"]
    plans = [f for f in infos if f.rule_id in PLAN_RULES]
    for f in ordered:
        if f.severity != "info":
            cards.append(_card(f, [], list(f.suggestions), orders, ctx))
    if infos:
        anchor = plans[0] if plans else infos[0]
        folded = [f for f in infos if f is not anchor]
        specs = [*anchor.suggestions]
        specs += [
            s
            for f in [*folded, *ordered]
            if f is not anchor
            for s in f.suggestions
            if s.kind == "order-observation"
        ]
        cards.append(_card(anchor, folded, specs, orders, ctx))
    return cards
