"""The patient record's data model: a typed, indexed view of one patient, with the queries
the rules ask. Built by :mod:`.builder`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from ..terminology import CodeRef, ConceptMatch, Ingredient, concept_text
from .values import Quantity

MED_ENDED = {"completed", "stopped"}


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
