"""Prefetch: template rendering and the interpretation of what the client sent.

Per key, a client may send nothing (absent), ``null`` (queried, no data), a resource, a
search Bundle (possibly paged with a ``next`` link) or an OperationOutcome (it tried and
failed). :func:`interpret` turns each of those into a :class:`KeyResult`; keys that are
absent, failed or paged are completed from ``fhirServer`` by :mod:`cds_hooks.fhir`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}

Status = Literal["provided", "fetched", "empty", "unavailable"]


@dataclass
class KeyResult:
    """What one prefetch key resolved to."""

    status: Status
    resources: list[dict[str, Any]] = field(default_factory=list)
    next_url: str | None = None  # a page still to follow
    reason: str | None = None  # why it is unavailable (never contains data or tokens)
    complete: bool = True  # False when paging was cut short

    @property
    def available(self) -> bool:
        return self.status != "unavailable"


def render(template: str, context: dict[str, Any]) -> str | None:
    """Fill a prefetch template; ``None`` when a token cannot be filled (the key is skipped)."""
    user_type, _, user_id = str(context.get("userId", "")).partition("/")
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        if name.startswith("context."):
            value = context.get(name.removeprefix("context."))
            if isinstance(value, bool | int | float | str) and value != "":
                return str(value)
        elif name in USER_TOKENS and USER_TOKENS[name] == user_type and user_id:
            return user_id
        missing = True
        return ""

    url = TOKEN.sub(fill, template)
    return None if missing else url


def _array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in _array(bundle.get("link")):
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle, without search-outcome OperationOutcomes."""
    out = []
    for entry in _array(bundle.get("entry")):
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            continue
        if resource["resourceType"] == "OperationOutcome":
            continue
        out.append(resource)
    return out


def interpret(value: Any, present: bool) -> KeyResult | None:
    """Classify what the client sent for one key; ``None`` means "fetch it yourself"."""
    if not present:
        return None
    if value is None:
        return KeyResult("empty")
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        return None
    if kind == "Bundle":
        return KeyResult("provided", bundle_resources(value), next_url=next_link(value))
    return KeyResult("provided", [value])
