"""A typed, indexed view of one patient's FHIR data, with the hygiene of the specification
(ketamine-rules.md §3) applied once, so that no rule re-implements it.

Built straight from the parsed JSON (dicts), not from ``fhir.resources`` models: a full model
parse of a real record costs 30-40x reading it, and the rules need only a few fields.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any

from .terminology import (
    CodeRef,
    ConceptMatch,
    Ingredient,
    Terminology,
    concept_text,
    listed,
    obj,
)

EXCLUDED_CONDITION_VERIFICATION = {"refuted", "entered-in-error"}
INACTIVE_CLINICAL = {"inactive", "resolved", "remission"}
OBSERVATION_OK = ("final", "amended", "corrected")  # tuples: statuses may be unhashable
MED_IGNORED = {"entered-in-error", "cancelled", "draft"}
MED_ACTIVE = {
    ("MedicationRequest", "active"),
    ("MedicationRequest", "on-hold"),
    ("MedicationStatement", "active"),
    ("MedicationStatement", "intended"),
}
MED_ENDED = {"completed", "stopped"}
ADMIN_COUNTED = ("completed", "in-progress", "stopped")


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
class Fact:
    """One piece of patient data a card names: resource, code, date, value."""

    resource: str
    code: CodeRef | None = None
    when: datetime | None = None
    value: str | None = None

    def markdown(self) -> str:
        parts = [f"`{self.resource}`"]
        if self.code:
            parts.append(self.code.label())
        parts.append(self.when.date().isoformat() if self.when else "date not recorded")
        if self.value:
            parts.append(self.value)
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class Condition:
    ref: str
    concept: dict[str, Any]
    matches: tuple[ConceptMatch, ...]
    active: bool
    onset: datetime | None
    abated: datetime | None = None

    def recent(self, since: datetime) -> bool:
        """Active, or onset/abatement on or after ``since``."""
        return self.active or any(d is not None and d >= since for d in (self.onset, self.abated))

    def fact(self, match: ConceptMatch) -> Fact:
        status = "active" if self.active else "history (inactive/resolved)"
        return Fact(
            self.ref,
            match.coding,
            self.onset,
            status if match.coding else f"text “{concept_text(self.concept)[:80]}” · {status}",
        )


@dataclass(frozen=True, slots=True)
class Medication:
    ref: str
    concept: dict[str, Any]
    status: str
    active: bool
    when: datetime | None  # authored / asserted / effective start
    ended: datetime | None  # end of the period, for completed/stopped
    ingredients: tuple[Ingredient, ...]
    code: CodeRef | None

    def current(self, now: datetime, recent_days: int) -> bool:
        """Active now, or completed/stopped within ``recent_days`` (drugs linger)."""
        if self.active:
            return True
        if self.status in MED_ENDED:
            end = self.ended or self.when
            return end is not None and now - end <= timedelta(days=recent_days)
        return False

    def fact(self, ingredient: Ingredient | None = None) -> Fact:
        value = f"status {self.status}"
        if ingredient:
            value = f"{ingredient.name} ({ingredient.group}) · {value}"
        return Fact(self.ref, self.code, self.when, value)


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Observation:
    ref: str
    code: str  # the LOINC code it was indexed under
    coding: CodeRef | None
    when: datetime | None
    quantity: Quantity | None
    answer: CodeRef | None  # valueCodeableConcept
    components: dict[str, Quantity]
    answer_text: str = ""  # valueCodeableConcept text/displays, or valueString

    def fact(self, value: str | None = None) -> Fact:
        if value is None:
            if self.quantity:
                value = f"{self.quantity.value:g} {self.quantity.unit}"
            elif self.answer:
                value = self.answer.label()
        return Fact(self.ref, self.coding, self.when, value)


@dataclass(frozen=True, slots=True)
class BloodPressure:
    when: datetime | None
    systolic: float | None
    diastolic: float | None
    facts: tuple[Fact, ...]

    def text(self) -> str:
        s = f"{self.systolic:g}" if self.systolic is not None else "?"
        d = f"{self.diastolic:g}" if self.diastolic is not None else "?"
        return f"{s}/{d} mmHg"


@dataclass(frozen=True, slots=True)
class Administration:
    ref: str
    drug: str  # "ketamine" | "esketamine"
    when: datetime
    dose_mg: float | None


@dataclass
class PatientRecord:
    patient_id: str
    patient: dict[str, Any] | None
    birth_date: date | None
    gender: str | None
    conditions: list[Condition] = field(default_factory=list)
    allergies: list[Condition] = field(default_factory=list)
    medications: list[Medication] = field(default_factory=list)
    observations: dict[str, list[Observation]] = field(default_factory=dict)
    administrations: list[Administration] = field(default_factory=list)
    procedures: list[Condition] = field(default_factory=list)
    medication_index: dict[str, dict[str, Any]] = field(default_factory=dict)
    bp_codes: tuple[str, ...] = ()  # panels with 8480-6/8462-4 components, then the two
    gaps: dict[str, str] = field(default_factory=dict)  # prefetch key → why it is missing
    ignored: dict[str, int] = field(default_factory=dict)  # why → how many resources dropped

    # -- queries the rules use --------------------------------------------------------

    def age_on(self, day: datetime) -> int | None:
        if self.birth_date is None:
            return None
        d = day.date()
        b = self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))

    def conditions_in(
        self, valueset: str, history_counts: bool = False, since: datetime | None = None
    ) -> list[tuple[Condition, ConceptMatch]]:
        """Conditions in a value set: active ones, or any when history counts; with ``since``
        only those whose onset/recorded date is on or after it."""
        out = []
        for c in self.conditions:
            if not (c.active or history_counts):
                continue
            if since is not None and (c.onset is None or c.onset < since):
                continue
            for m in c.matches:
                if m.valueset == valueset:
                    out.append((c, m))
                    break
        return out

    def latest(self, codes: Iterable[str], since: datetime | None = None) -> Observation | None:
        found = [o for code in codes for o in self.observations.get(code, ())]
        found = [o for o in found if o.when is not None and (since is None or o.when >= since)]
        return max(found, key=lambda o: o.when) if found else None

    def all_observations(self, codes: Iterable[str]) -> list[Observation]:
        found = [o for code in codes for o in self.observations.get(code, ()) if o.when]
        return sorted(found, key=lambda o: o.when, reverse=True)

    @cached_property
    def blood_pressures(self) -> list[BloodPressure]:
        """BP readings newest first: panels (85354-9, or any observation with 8480-6/8462-4
        components) and separate systolic/diastolic observations paired by time."""
        readings: list[BloodPressure] = []
        separate: dict[datetime | None, dict[str, Observation]] = defaultdict(dict)
        for code in self.bp_codes:
            for o in self.observations.get(code, ()):
                if o.components:
                    s, d = o.components.get("8480-6"), o.components.get("8462-4")
                    if s or d:
                        readings.append(
                            BloodPressure(
                                o.when,
                                s.value if s else None,
                                d.value if d else None,
                                (o.fact(f"{_q(s)}/{_q(d)} mmHg"),),
                            )
                        )
                elif o.quantity and code in ("8480-6", "8462-4"):
                    separate[o.when][code] = o
        for when, pair in separate.items():
            s, d = pair.get("8480-6"), pair.get("8462-4")
            readings.append(
                BloodPressure(
                    when,
                    s.quantity.value if s and s.quantity else None,
                    d.quantity.value if d and d.quantity else None,
                    tuple(o.fact() for o in (s, d) if o),
                )
            )
        dated = [r for r in readings if r.when is not None]
        return sorted(dated, key=lambda r: r.when, reverse=True)


def _q(q: Quantity | None) -> str:
    return f"{q.value:g}" if q else "?"


# -- building ---------------------------------------------------------------------------


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """False only when the resource names a *different* patient (hygiene: a prefetch Bundle
    may carry other patients' resources)."""
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            target = ref["reference"]
            if "Patient/" in target:
                return target.rsplit("Patient/", 1)[1].split("/")[0] == patient_id
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


class RecordBuilder:
    """Builds PatientRecords from resolved prefetch with one terminology."""

    BP_LISTS = ("bp_panel", "bp_panel_legacy", "vital_signs_panel", "systolic_bp", "diastolic_bp")

    def __init__(self, terminology: Terminology, site_codes: Iterable[str] = ()):
        self.terminology = terminology
        # LOINC code → None (verified) or the text pattern that must confirm it
        self.observation_codes = terminology.loinc_filters()
        self.observation_codes.update(dict.fromkeys(site_codes))
        self.bp_codes = tuple(c for name in self.BP_LISTS for c in terminology.loinc_codes(name))

    def build(
        self,
        patient_id: str,
        resources_by_key: dict[str, list[dict[str, Any]]],
        gaps: dict[str, str],
        extra_medications: Iterable[dict[str, Any]] = (),
    ) -> PatientRecord:
        t = self.terminology
        seen: set[tuple[str, str]] = set()
        ignored: dict[str, int] = defaultdict(int)
        by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for resources in resources_by_key.values():
            for r in resources:
                kind, rid = r.get("resourceType"), r.get("id")
                if not isinstance(kind, str):
                    continue
                if isinstance(rid, str):
                    if (kind, rid) in seen:
                        ignored["duplicate resource"] += 1
                        continue
                    seen.add((kind, rid))
                if kind != "Patient" and not belongs_to(r, patient_id):
                    ignored["resource of another patient"] += 1
                    continue
                by_type[kind].append(r)

        patient = next(
            (p for p in by_type.get("Patient", ()) if p.get("id") == patient_id), None
        ) or next(iter(by_type.get("Patient", ())), None)
        birth = parse_datetime(patient.get("birthDate")) if patient else None
        record = PatientRecord(
            patient_id=patient_id,
            patient=patient,
            birth_date=birth.date() if birth else None,
            gender=patient.get("gender") if patient else None,
            bp_codes=self.bp_codes,
            gaps=dict(gaps),
            ignored=ignored,
        )
        record.medication_index = {
            f"Medication/{m['id']}": m
            for m in [*by_type.get("Medication", ()), *extra_medications]
            if isinstance(m.get("id"), str)
        }
        for r in by_type.get("Condition", ()):
            if coded_status(r.get("verificationStatus")) not in EXCLUDED_CONDITION_VERIFICATION:
                active = coded_status(r.get("clinicalStatus")) not in INACTIVE_CLINICAL
                record.conditions.append(
                    self._coded(
                        r,
                        active,
                        ("onsetDateTime", "onsetPeriod", "recordedDate"),
                        period_start(r, "abatementDateTime", "abatementPeriod"),
                    )
                )
        for r in by_type.get("AllergyIntolerance", ()):
            if (
                coded_status(r.get("verificationStatus")) not in EXCLUDED_CONDITION_VERIFICATION
                and coded_status(r.get("clinicalStatus")) not in INACTIVE_CLINICAL
            ):
                record.allergies.append(self._coded(r, True, ("onsetDateTime", "recordedDate")))
        for r in by_type.get("Procedure", ()):
            if r.get("status") not in ("entered-in-error", "not-done"):
                record.procedures.append(
                    self._coded(r, True, ("performedDateTime", "performedPeriod"))
                )
        for kind in ("MedicationRequest", "MedicationStatement"):
            for r in by_type.get(kind, ()):
                status = r.get("status")
                if not isinstance(status, str) or status in MED_IGNORED:
                    continue
                concept = medication_concept(r, record.medication_index)
                record.medications.append(
                    Medication(
                        f"{kind}/{r.get('id', '?')}",
                        concept,
                        status,
                        (kind, status) in MED_ACTIVE,
                        period_start(
                            r, "authoredOn", "effectiveDateTime", "effectivePeriod", "dateAsserted"
                        ),
                        _period_end(r),
                        t.ingredients(concept),
                        t.first_coding(concept),
                    )
                )
        for r in by_type.get("MedicationAdministration", ()):
            if r.get("status") not in ADMIN_COUNTED:
                continue
            drug = ketamine_kind(t, medication_concept(r, record.medication_index))
            when = period_start(r, "effectiveDateTime", "effectivePeriod")
            if drug and when:
                dose = obj(r.get("dosage")).get("dose")
                record.administrations.append(
                    Administration(
                        f"MedicationAdministration/{r.get('id', '?')}", drug, when, dose_in_mg(dose)
                    )
                )
        record.administrations.sort(key=lambda a: a.when)
        self._index_observations(record, by_type.get("Observation", ()))
        return record

    def _coded(
        self,
        r: dict[str, Any],
        active: bool,
        dates: tuple[str, ...],
        abated: datetime | None = None,
    ) -> Condition:
        """A coded entry (condition, allergy, procedure) classified against the value sets."""
        return Condition(
            f"{r['resourceType']}/{r.get('id', '?')}",
            obj(r.get("code")),
            self.terminology.classify(r.get("code")),
            active,
            period_start(r, *dates),
            abated,
        )

    def _index_observations(self, record: PatientRecord, observations: list[dict]) -> None:
        loinc = self.terminology.loinc_system
        wanted = self.observation_codes
        index: dict[str, list[Observation]] = defaultdict(list)
        for r in observations:
            code = r.get("code")
            if not isinstance(code, dict):
                continue
            hit = None
            for c in listed(code.get("coding")):
                if (
                    isinstance(c, dict)
                    and c.get("system") == loinc
                    and isinstance(c.get("code"), str)
                    and c["code"] in wanted
                ):
                    confirm = wanted[c["code"]]
                    if confirm is None or confirm.search(concept_text(code)):
                        hit = c
                        break
            if hit is None or r.get("status") not in OBSERVATION_OK:
                continue
            components = {}
            for comp in listed(r.get("component")):
                if not isinstance(comp, dict):
                    continue
                q = quantity(comp.get("valueQuantity"))
                for c in listed(obj(comp.get("code")).get("coding")):
                    if isinstance(c, dict) and c.get("system") == loinc and q:
                        components[str(c.get("code"))] = q
            answer = self.terminology.first_coding(r.get("valueCodeableConcept"))
            value_string = r.get("valueString")
            answer_text = concept_text(r.get("valueCodeableConcept")) or (
                value_string if isinstance(value_string, str) else ""
            )
            index[hit["code"]].append(
                Observation(
                    f"Observation/{r.get('id', '?')}",
                    hit["code"],
                    CodeRef("loinc", hit["code"], hit.get("display")),
                    period_start(
                        r, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"
                    ),
                    quantity(r.get("valueQuantity")),
                    answer,
                    components,
                    answer_text[:200],
                )
            )
        for items in index.values():
            items.sort(key=lambda o: o.when or datetime.min.replace(tzinfo=UTC), reverse=True)
        record.observations = dict(index)


def _period_end(resource: dict[str, Any]) -> datetime | None:
    for name in ("effectivePeriod",):
        value = resource.get(name)
        if isinstance(value, dict):
            return parse_datetime(value.get("end"))
    validity = obj(resource.get("dispenseRequest")).get("validityPeriod")
    if isinstance(validity, dict):
        return parse_datetime(validity.get("end"))
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


def ketamine_kind(t: Terminology, concept: Any) -> str | None:
    """'esketamine', 'ketamine' or None; esketamine wins over ketamine (spec §2)."""
    if t.member(concept, "esketamine_drug"):
        return "esketamine"
    if t.member(concept, "ketamine_drug"):
        return "ketamine"
    return None


WEIGHT_TO_KG = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}


def weight_kg(q: Quantity | None) -> float | None:
    """A body weight in kg from kg, g or lb; ``None`` for any other unit (never guessed)."""
    if q is None:
        return None
    factor = WEIGHT_TO_KG.get(q.unit.strip()) or WEIGHT_TO_KG.get(q.unit.strip().lower())
    return q.value * factor if factor and q.value > 0 else None
