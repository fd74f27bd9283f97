"""The draft order(s) being checked: which are ketamine or esketamine, and their route, dose
and infusion time, read from the FHIR R4 MedicationRequest.

A recognisable ketamine/esketamine order is always checked (ketamine-rules.md §3b, last
bullet): each is validated with ``fhir.resources`` (R4B models, which accept FHIR R4 JSON),
and a validation problem in fields the rules do not read (the CDS Hooks Sandbox sends
``category`` and ``reasonCode`` as objects) is carried on the order, for the plan card to
name, instead of refusing the request. Every field the rules read is read defensively.
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
from .terminology import CodeRef, Terminology, concept_text, listed, obj

SNOMED = "http://snomed.info/sct"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
#: route codes → the route's name (spec §2, v2: routes from codes). SNOMED CT route values
#: as in the FHIR R4 route-codes value set (descendants of 284009009 "Route of administration
#: value"); HL7 v3 RouteOfAdministration codes as in the v3 code system (THO).
ROUTE_CODES: dict[tuple[str, str], str] = {
    (SNOMED, "47625008"): "iv",  # Intravenous route
    (SNOMED, "78421000"): "im",  # Intramuscular route
    (SNOMED, "46713006"): "nasal",  # Nasal route
    (SNOMED, "26643006"): "oral",  # Oral route
    (SNOMED, "37839007"): "sublingual",  # Sublingual route
    (SNOMED, "54471007"): "buccal",  # Buccal route
    (SNOMED, "34206005"): "subcutaneous",  # Subcutaneous route
    (SNOMED, "37161004"): "rectal",  # Per rectum
    (SNOMED, "45890007"): "transdermal",  # Transdermal route
    **{(V3_ROUTE, c): "iv" for c in ("IV", "IVC", "IVCC", "IVCI", "IVINJ", "IVINJBOL", "IVPUSH")},
    **{(V3_ROUTE, c): "iv" for c in ("IVRPUSH", "IVSPUSH", "PCA")},
    **{(V3_ROUTE, c): "im" for c in ("IM", "IMD", "IMZ")},
    **{(V3_ROUTE, c): "nasal" for c in ("NASAL", "NASALINSTIL", "NASINHL", "NASNEB")},
    (V3_ROUTE, "PO"): "oral",
    (V3_ROUTE, "SL"): "sublingual",
    (V3_ROUTE, "BUC"): "buccal",
    (V3_ROUTE, "SQ"): "subcutaneous",
    (V3_ROUTE, "SQINFUS"): "subcutaneous",
}
ROUTE_TEXT = (
    ("iv", re.compile(r"\bintravenous|\bIV\b|\bi\.v\.", re.I)),
    ("im", re.compile(r"\bintramuscular|\bIM\b|\bi\.m\.", re.I)),
    ("nasal", re.compile(r"\bnasal|\bintranasal|\bnose\b", re.I)),
    ("sublingual", re.compile(r"\bsublingual|\bSL\b", re.I)),
    ("oral", re.compile(r"\boral|\bby mouth\b|\bPO\b|\bswallow", re.I)),
    ("subcutaneous", re.compile(r"\bsubcutaneous|\bSC\b|\bSQ\b", re.I)),
)
UNRECOGNISED = "unrecognised"  # a coded route the service cannot name: checked as IV (§2)
INJECTED = ("iv", "im")
MINUTES = {"s": 1 / 60, "min": 1.0, "h": 60.0, "d": 1440.0}
RATE_MINUTES = {"h": 60.0, "hr": 60.0, "hour": 60.0, "min": 1.0, "minute": 1.0}
OVER_TEXT = re.compile(r"\bover\s+(\d+(?:\.\d+)?)\s*(minutes?|mins?|hours?|hrs?|h)\b", re.I)
VOLUME_TEXT = re.compile(r"\b(?:in|diluted (?:in|to))\s+(\d+(?:\.\d+)?)\s*ml\b", re.I)


@dataclass(frozen=True)
class DraftOrder:
    ref: str  # "MedicationRequest/123"
    resource: dict[str, Any]
    drug: str  # "ketamine" | "esketamine"
    concept: dict[str, Any]
    code: CodeRef | None
    route: str | None  # iv, im, nasal, sublingual, oral, …, "unrecognised"; None = not stated
    route_text: str | None  # the route as written, or the code it was read from
    dose: Quantity | None  # as written
    dose_mg: float | None  # None when absent or in a unit we refuse to guess
    dose_mg_per_kg: float | None  # when the order itself is written per kg
    minutes: float | None  # infusion duration: stated, from the rate, or from the text
    authored: datetime | None
    problem: str | None = None  # why the order is not valid FHIR R4 (checked all the same)
    reasons: tuple[dict[str, Any], ...] = ()  # reasonCode CodeableConcepts (a list or one)

    @property
    def spravato(self) -> bool:
        """Esketamine as Spravato: nasal (or no route). Esketamine injected (IV/IM) is not
        Spravato: it follows the ketamine rules (spec §2, v2)."""
        return self.drug == "esketamine" and self.route not in INJECTED

    @property
    def is_iv(self) -> bool:
        """IV: ketamine with an IV, unstated or unrecognised route (spec §2), or IV
        esketamine."""
        if self.drug == "esketamine":
            return self.route == "iv"
        return self.route in ("iv", None, UNRECOGNISED)

    def label(self) -> str:
        if self.spravato:
            return "esketamine (Spravato)"
        if self.drug == "esketamine":
            return f"{self.route.upper()} esketamine (not Spravato)"
        return "IV ketamine" if self.is_iv else f"ketamine ({self.route})"


def route_of(dosage: dict[str, Any]) -> tuple[str | None, str | None]:
    """The route of a FHIR Dosage, as (route name, as written): from a known code first, then
    display or text; a coded route the service cannot name is ``unrecognised`` (checked as
    IV, and said so); (None, None) without a route. Read for draft orders and, by the course
    view, for administrations."""
    route = dosage.get("route")
    if not isinstance(route, dict):
        return None, None
    text = concept_text(route)
    codes = [
        c
        for c in listed(route.get("coding"))
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]
    for c in codes:
        system = c.get("system")
        name = ROUTE_CODES.get((system, c["code"])) if isinstance(system, str) else None
        if name:
            return name, text or str(c.get("display") or c["code"])
    for name, pattern in ROUTE_TEXT:
        if pattern.search(text):
            return name, text
    coded = next(iter(codes), None)
    if coded is not None:
        return UNRECOGNISED, f"route code {coded['code']}" + (f" “{text}”" if text else "")
    return ("other", text) if text else (None, None)


def _minutes(
    dosage: dict[str, Any], dose_mg: float | None, volume_ml: float | None
) -> float | None:
    """The infusion time: timing.repeat.duration; else from the rate (mg/time with the dose,
    mL/time with the volume); else the text ("over 40 min")."""
    repeat = obj(obj(dosage.get("timing")).get("repeat"))
    duration, unit = repeat.get("duration"), repeat.get("durationUnit")
    number = isinstance(duration, int | float) and not isinstance(duration, bool)
    if number and isinstance(unit, str) and unit in MINUTES:
        return float(duration) * MINUTES[unit]
    for dose_and_rate in many(dosage.get("doseAndRate")):
        rate = quantity(obj(dose_and_rate).get("rateQuantity"))
        if rate is None or rate.value <= 0 or "/" not in rate.unit:
            continue
        amount, per = (part.strip().lower() for part in rate.unit.split("/", 1))
        per_minutes = RATE_MINUTES.get(per)
        total = dose_mg if amount == "mg" else volume_ml if amount == "ml" else None
        if per_minutes and total:
            return total / rate.value * per_minutes
    for text in (dosage.get("text"), dosage.get("patientInstruction")):
        m = OVER_TEXT.search(text) if isinstance(text, str) else None
        if m:
            value, unit_text = float(m.group(1)), m.group(2).lower()
            return value * (60.0 if unit_text.startswith("h") else 1.0)
    return None


def _volume_ml(resource: dict[str, Any], dosage: dict[str, Any]) -> float | None:
    """The infusion volume: the dispense quantity in mL, else "in 100 mL" in the text."""
    dispensed = quantity(obj(resource.get("dispenseRequest")).get("quantity"))
    if dispensed is not None and dispensed.unit.lower() == "ml":
        return dispensed.value
    for text in (dosage.get("text"), dosage.get("patientInstruction")):
        m = VOLUME_TEXT.search(text) if isinstance(text, str) else None
        if m:
            return float(m.group(1))
    return None


def many(value: Any) -> list[Any]:
    """An array as FHIR wants it, or one element sent where an array belongs (the CDS Hooks
    Sandbox sends ``reasonCode`` and ``category`` as objects): read it all the same."""
    return value if isinstance(value, list) else [value] if isinstance(value, dict) else []


def fhir_problem(resource: dict[str, Any], field: str) -> str | None:
    """Why a MedicationRequest is not valid FHIR R4 (R4B models), naming the element;
    ``None`` when it is valid."""
    try:
        MedicationRequest.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "__root__")
        return f"`{field}{'.' + where if where else ''}`: {first['msg']}"
    except (TypeError, ValueError) as exc:  # a model validator that raises on odd input
        return f"`{field}`: {type(exc).__name__}"
    return None


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
    references to consider, for order-select's selections). Each is checked as FHIR R4; an
    invalid one is still read (its problem carried on the order), never refused."""
    orders = []
    for i, r, concept, drug in _ketamine_entries(t, bundle, only):
        dosage = obj(next(iter(many(r.get("dosageInstruction"))), {}))
        dose_and_rate = obj(next(iter(many(dosage.get("doseAndRate"))), {}))
        dose = quantity(dose_and_rate.get("doseQuantity"))
        dose_mg = dose_in_mg(dose_and_rate.get("doseQuantity"))
        per_kg = dose.value if dose and dose.unit.replace(" ", "").lower() == "mg/kg" else None
        route, route_text = route_of(dosage)
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
                dose_mg=dose_mg,
                dose_mg_per_kg=per_kg,
                minutes=_minutes(dosage, dose_mg, _volume_ml(r, dosage)),
                authored=parse_datetime(r.get("authoredOn")),
                problem=fhir_problem(r, f"{field}.entry[{i}].resource"),
                reasons=tuple(c for c in many(r.get("reasonCode")) if isinstance(c, dict)),
            )
        )
    return orders
