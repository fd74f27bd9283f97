"""The rule catalogue for governance: every rule with its trigger, the thresholds of the
active policy, and its sources with their verification status (served at /rules and
/rules.json)."""

from __future__ import annotations

from typing import Any

from service import __version__

from .cards import sources
from .overrides import catalogue as override_reasons
from .policy import Policy, schema
from .rules import RULES


def _citations(citation: str) -> list[dict[str, str]]:
    out = []
    for token in citation.replace(";", ",").split(","):
        token = token.strip()
        if not token:
            continue
        sid = token.split(" ")[0]
        known = sources().get(sid)
        out.append(
            {
                "id": token,
                "label": known["label"] if known else token,
                "status": known["status"]
                if known
                else ("site policy" if "policy" in token else "see evidence.md"),
            }
        )
    return out


def shown(value: Any, unit: str | None) -> str:
    """A threshold as the catalogue's readers show it: "0.5 mg/kg", "not set", "no"."""
    if value is None:
        return "not set (site policy)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value}{' ' + unit if unit else ''}"


def catalogue(policy: Policy) -> dict[str, Any]:
    """Every rule, as data: what governance reads (and what /rules.json serves)."""
    props = schema()["properties"]["thresholds"]["properties"]
    rules = []
    for r in sorted(RULES.values(), key=lambda r: (r.id[0] != "R", r.id)):
        rules.append(
            {
                "id": r.id,
                "title": r.title,
                "concern": r.concern,
                "applies": r.applies,
                "applies_to": r.applies.description,
                "severity": r.severity,
                "configured_severity": policy.rules.get(r.id, {}).get("severity"),
                "enabled": policy.enabled(r.id),
                "hooks": list(r.hooks),
                "trigger": r.trigger,
                "reads": list(r.reads),
                "thresholds": [
                    {
                        "name": t,
                        "value": policy.thresholds[t],
                        "unit": props[t].get("x-unit"),
                        "shown": shown(policy.thresholds[t], props[t].get("x-unit")),
                        "source": props[t].get("x-source"),
                        "description": props[t].get("description"),
                    }
                    for t in r.thresholds
                ],
                "sources": _citations(r.source),
                "override_reasons": [
                    {"code": c.code, "display": c.display}
                    for c in override_reasons().for_rule(r.id)
                ],
            }
        )
    reasons = override_reasons()
    return {
        "service_version": __version__,
        "policy_version": policy.version,
        "override_reason_system": reasons.system,
        # offered on warning cards, next to the rule's own reasons, while the registry is on
        "snooze_reasons": [
            {"code": s.coding.code, "display": s.coding.display, "months": s.months}
            for s in reasons.snooze
        ],
        "rules": rules,
    }
