"""FHIR R4 value parsing: dates, periods, statuses, quantities, units and references, read
straight from parsed JSON. Every function here is total: odd input gives ``None``, never an
exception."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..terminology import listed, obj


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware UTC datetime; partial dates → first day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def coded_status(concept: Any) -> str | None:
    """The code of a FHIR status CodeableConcept (clinicalStatus, verificationStatus)."""
    if isinstance(concept, dict):
        for c in listed(concept.get("coding")):
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return c["code"]
    return None


def period_start(resource: dict[str, Any], *names: str) -> datetime | None:
    """The first parseable date among ``names``; Period values give their start."""
    for name in names:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start") or value.get("end")
        found = parse_datetime(value)
        if found:
            return found
    return None


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """False only when the resource names a *different* patient (hygiene: a prefetch Bundle
    may carry other patients' resources)."""
    for name in ("subject", "patient"):
        ref = resource.get(name)
        target = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(target, str):
            _, named, rest = target.rpartition("Patient/")  # run for every resource: no lists
            if named:
                return rest.partition("/")[0] == patient_id
            if target.startswith("urn:uuid:"):
                return target[9:] == patient_id
    return True


def medication_concept(resource: dict[str, Any], index: dict[str, dict[str, Any]]) -> dict:
    """medicationCodeableConcept, or the code of the referenced (contained or listed)
    Medication; an unresolvable reference yields its display as text."""
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = resource.get("medicationReference")
    if isinstance(ref, dict):
        target = ref.get("reference")
        medication = None
        if isinstance(target, str):
            if target.startswith("#"):
                for c in listed(resource.get("contained")):
                    if isinstance(c, dict) and c.get("id") == target[1:]:
                        medication = c
            else:
                medication = index.get("/".join(target.rstrip("/").split("/")[-2:]))
        if isinstance(medication, dict) and isinstance(medication.get("code"), dict):
            return medication["code"]
        if isinstance(ref.get("display"), str):
            return {"text": ref["display"]}
    return {}


def period_end(resource: dict[str, Any]) -> datetime | None:
    for name in ("effectivePeriod",):
        value = resource.get(name)
        if isinstance(value, dict):
            return parse_datetime(value.get("end"))
    validity = obj(resource.get("dispenseRequest")).get("validityPeriod")
    if isinstance(validity, dict):
        return parse_datetime(validity.get("end"))
    return None


def plain_unit(unit: str) -> str:
    """A unit for text: UCUM annotations such as ``{score}`` left out (§7)."""
    return re.sub(r"\{[^}]*\}", "", unit).strip()


def observed_quantity(resource: dict[str, Any]) -> Quantity | None:
    """An observation's number (§3b: scores as integer, quantity or numeric string)."""
    found = quantity(resource.get("valueQuantity"))
    if found is not None:
        return found
    integer = resource.get("valueInteger")
    if isinstance(integer, int) and not isinstance(integer, bool):
        return Quantity(float(integer), "")
    text = resource.get("valueString")
    if isinstance(text, str) and NUMBER.fullmatch(text.strip()):
        return Quantity(float(text.strip()), "")
    return None


def quantity(value: Any) -> Quantity | None:
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, int | float):
        return None
    unit = value.get("code") or value.get("unit") or ""
    return Quantity(float(number), str(unit))


MASS_TO_MG = {
    "mg": 1.0,
    "g": 1000.0,
    "milligram": 1.0,
    "milligrams": 1.0,
    "gram": 1000.0,
    "grams": 1000.0,
}


def dose_in_mg(value: Any) -> float | None:
    """A dose Quantity in mg; ``None`` for any unit other than mg or g (never guessed)."""
    q = quantity(value)
    if q is None:
        return None
    factor = MASS_TO_MG.get(q.unit.strip().lower())
    return q.value * factor if factor else None


NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
POUND = 0.45359237
#: body weight units (UCUM codes, and the words EHRs write) → kg; any other is never guessed
WEIGHT_TO_KG = {
    "kg": 1.0,
    "kilogram": 1.0,
    "kilograms": 1.0,
    "g": 0.001,
    "gram": 0.001,
    "grams": 0.001,
    "[lb_av]": POUND,
    "lb": POUND,
    "lbs": POUND,
    "pound": POUND,
    "pounds": POUND,
}


def weight_kg(q: Quantity | None) -> float | None:
    """A body weight in kg from kg, g or lb; ``None`` for any other unit (never guessed)."""
    if q is None:
        return None
    factor = WEIGHT_TO_KG.get(q.unit.strip()) or WEIGHT_TO_KG.get(q.unit.strip().lower())
    return q.value * factor if factor and q.value > 0 else None
