"""The draft order(s) being checked: which are ketamine or esketamine, and their route, dose
and infusion time, read from the FHIR R4 MedicationRequest.

Draft orders are validated with ``fhir.resources`` (R4B models, which accept FHIR R4 JSON) so
an integration engineer learns exactly which field of a malformed order is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from pydantic import ValidationError

from .record import (
    Quantity,
    dose_in_mg,
    ketamine_kind,
    medication_concept,
    parse_datetime,
    quantity,
)
from .terminology import CodeRef, Terminology, concept_text, listed

IV_SNOMED = "47625008"  # Intravenous route (spec §2)
ROUTE_TEXT = (
    ("iv", re.compile(r"\bintravenous|\bIV\b|\bi\.v\.", re.I)),
    ("im", re.compile(r"\bintramuscular|\bIM\b|\bi\.m\.", re.I)),
    ("nasal", re.compile(r"\bnasal|\bintranasal|\bnose\b", re.I)),
    ("sublingual", re.compile(r"\bsublingual|\bSL\b", re.I)),
    ("oral", re.compile(r"\boral|\bby mouth\b|\bPO\b|\bswallow", re.I)),
)
MINUTES = {"s": 1 / 60, "min": 1.0, "h": 60.0, "d": 1440.0}
OVER_TEXT = re.compile(r"\bover\s+(\d+(?:\.\d+)?)\s*(minutes?|mins?|hours?|hrs?|h)\b", re.I)


class OrderInvalid(ValueError):
    """A ketamine draft order that is not valid FHIR R4; names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DraftOrder:
    ref: str  # "MedicationRequest/123"
    resource: dict[str, Any]
    drug: str  # "ketamine" | "esketamine"
    concept: dict[str, Any]
    code: CodeRef | None
    route: str | None  # iv, im, nasal, sublingual, oral, other; None = not stated
    route_text: str | None
    dose: Quantity | None  # as written
    dose_mg: float | None  # None when absent or in a unit we refuse to guess
    dose_mg_per_kg: float | None  # when the order itself is written per kg
    minutes: float | None  # infusion duration, when stated
    authored: datetime | None

    @property
    def is_iv(self) -> bool:
        """IV ketamine; a ketamine order without a route is treated as IV (spec §2)."""
        return self.drug == "ketamine" and self.route in ("iv", None)

    def label(self) -> str:
        return (
            "esketamine (Spravato)"
            if self.drug == "esketamine"
            else ("IV ketamine" if self.is_iv else f"ketamine ({self.route})")
        )


def _route(dosage: dict[str, Any]) -> tuple[str | None, str | None]:
    route = dosage.get("route")
    if not isinstance(route, dict):
        return None, None
    for c in listed(route.get("coding")):
        if isinstance(c, dict) and c.get("code") == IV_SNOMED:
            return "iv", concept_text(route) or "Intravenous"
    text = concept_text(route)
    for name, pattern in ROUTE_TEXT:
        if pattern.search(text):
            return name, text
    return "other", text or None


def _minutes(dosage: dict[str, Any]) -> float | None:
    repeat = ((dosage.get("timing") or {}).get("repeat")) or {}
    duration, unit = repeat.get("duration"), repeat.get("durationUnit")
    if isinstance(duration, int | float) and unit in MINUTES:
        return float(duration) * MINUTES[unit]
    for text in (dosage.get("text"), dosage.get("patientInstruction")):
        m = OVER_TEXT.search(text) if isinstance(text, str) else None
        if m:
            value, unit_text = float(m.group(1)), m.group(2).lower()
            return value * (60.0 if unit_text.startswith("h") else 1.0)
    return None


def validate(resource: dict[str, Any], field: str) -> None:
    """Validate one MedicationRequest as FHIR R4 (R4B models); raise OrderInvalid."""
    try:
        MedicationRequest.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "__root__")
        raise OrderInvalid(
            f"{field}.{where}" if where else field,
            f"{field}{'.' + where if where else ''}: {first['msg']}",
        ) from None


def _ketamine_entries(t: Terminology, bundle: dict[str, Any], only: set[str] | None):
    """(index, resource, medication concept, drug) of each ketamine/esketamine request."""
    entries = [e.get("resource") for e in listed(bundle.get("entry")) if isinstance(e, dict)]
    index = {
        f"Medication/{r['id']}": r
        for r in entries
        if isinstance(r, dict) and r.get("resourceType") == "Medication" and "id" in r
    }
    for i, r in enumerate(entries):
        if not isinstance(r, dict) or r.get("resourceType") != "MedicationRequest":
            continue
        if only is not None and f"MedicationRequest/{r.get('id', '')}" not in only:
            continue
        concept = medication_concept(r, index)
        drug = ketamine_kind(t, concept)
        if drug is not None:
            yield i, r, concept, drug


def has_ketamine(t: Terminology, bundle: Any, only: set[str] | None) -> bool:
    """Cheap pre-check, before any data is fetched: is any considered order ketamine?"""
    return isinstance(bundle, dict) and any(_ketamine_entries(t, bundle, only))


def ketamine_orders(
    t: Terminology,
    bundle: dict[str, Any],
    only: set[str] | None,
    field: str = "context.draftOrders",
) -> list[DraftOrder]:
    """The ketamine/esketamine MedicationRequests of a draftOrders Bundle (``only``: the
    references to consider, for order-select's selections), validated as FHIR R4."""
    orders = []
    for i, r, concept, drug in _ketamine_entries(t, bundle, only):
        validate(r, f"{field}.entry[{i}].resource")
        dosage = next(iter(r.get("dosageInstruction") or ()), {}) or {}
        dose_and_rate = next(iter(dosage.get("doseAndRate") or ()), {}) or {}
        dose = quantity(dose_and_rate.get("doseQuantity"))
        per_kg = dose.value if dose and dose.unit.replace(" ", "").lower() == "mg/kg" else None
        route, route_text = _route(dosage)
        orders.append(
            DraftOrder(
                ref=f"MedicationRequest/{r.get('id', '')}",
                resource=r,
                drug=drug,
                concept=concept,
                code=t.first_coding(concept),
                route=route,
                route_text=route_text,
                dose=dose,
                dose_mg=dose_in_mg(dose_and_rate.get("doseQuantity")),
                dose_mg_per_kg=per_kg,
                minutes=_minutes(dosage),
                authored=parse_datetime(r.get("authoredOn")),
            )
        )
    return orders
