"""The patient record's data model: a typed, indexed view of one patient, with the time and
status semantics of the specification (ketamine-rules.md §3b) applied here, once: the rules ask
the record (current? within a window? in remission? the latest BP? pregnant?) and never
re-derive it. Built by :mod:`.builder`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, TypeVar

from ..terminology import CodeRef, ConceptMatch, Ingredient
from .values import Quantity, plain_unit

MED_ENDED = {"completed", "stopped"}
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"


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
        if self.when:
            parts.append(self.when.date().isoformat())
        if self.value:
            parts.append(self.value)
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition, allergy or procedure entry, classified against the value sets.

    ``active`` is §3b's *current*: clinicalStatus active, recurrence or relapse, or no status
    and no abatement. ``onset`` is the onset (dateTime, Period start, or Age from the birth
    date), else the recorded date: what a window ("in the last N days") is judged on,
    whatever the status."""

    ref: str
    concept: dict[str, Any]
    matches: tuple[ConceptMatch, ...]
    active: bool
    onset: datetime | None
    abated: datetime | None = None
    status: str | None = None  # the clinicalStatus code as recorded
    remission: bool = False  # clinicalStatus remission, or a remission code (§3b)

    def within(self, since: datetime) -> bool:
        """Its onset (else recorded date) is on or after ``since``, whatever its status."""
        return self.onset is not None and self.onset >= since

    def fact(self, match: ConceptMatch) -> Fact:
        if self.remission:
            status = "in remission"
        elif self.active:
            status = "current"
        else:
            status = f"history ({self.status or 'abated'})"
        value = status if not match.on_text else f"{match.describe()} · {status}"
        return Fact(self.ref, match.coding, self.onset, value)


class MedState(StrEnum):
    """A medication entry as the interaction rules see it (§3b)."""

    CURRENT = "current"  # active and dated within the look-back (or covering now, or undated)
    STALE = "stale"  # "active" but older than the look-back: listed, never alerted on
    RECENT = "recent"  # completed or stopped within the recent-medication days: drugs linger
    PAST = "past"


@dataclass(frozen=True, slots=True)
class Medication:
    ref: str
    concept: dict[str, Any]
    status: str
    active: bool  # request active/on-hold, statement active/intended
    when: datetime | None  # authored / asserted / effective start
    ended: datetime | None  # end of the period (effective, or the dispense validity)
    ingredients: tuple[Ingredient, ...]
    code: CodeRef | None

    def state(self, now: datetime, lookback_days: int, recent_days: int) -> MedState:
        if self.active:
            if self.when is None or now - self.when <= timedelta(days=lookback_days):
                return MedState.CURRENT
            if self.ended is not None and self.ended >= now:
                return MedState.CURRENT
            return MedState.STALE
        if self.status in MED_ENDED:
            end = self.ended or self.when
            if end is not None and now - end <= timedelta(days=recent_days):
                return MedState.RECENT
        return MedState.PAST

    def fact(self, ingredient: Ingredient | None = None, note: str = "") -> Fact:
        value = f"status {self.status}"
        if ingredient:
            value = f"{ingredient.name} ({ingredient.group}) · {value}"
        return Fact(self.ref, self.code, self.when, value + note)


@dataclass(frozen=True, slots=True)
class MedicationHit:
    medication: Medication
    ingredient: Ingredient
    state: MedState

    def fact(self) -> Fact:
        note = " · possibly outdated" if self.state is MedState.STALE else ""
        return self.medication.fact(self.ingredient, note)


@dataclass(frozen=True, slots=True)
class Observation:
    ref: str
    code: str  # the LOINC code it was indexed under
    coding: CodeRef | None
    when: datetime | None
    quantity: Quantity | None  # valueQuantity, valueInteger or a numeric valueString (§3b)
    answer: CodeRef | None  # valueCodeableConcept
    components: dict[str, Quantity]
    answer_text: str = ""  # valueCodeableConcept text/displays, or valueString
    answer_codes: tuple[str, ...] = ()  # every code of valueCodeableConcept

    def fact(self, value: str | None = None) -> Fact:
        if value is None:
            if self.quantity:
                value = f"{self.quantity.value:g} {plain_unit(self.quantity.unit)}".strip()
            elif self.answer:
                value = self.answer.label()
            elif self.answer_text:
                value = f"“{self.answer_text[:60]}”"
        return Fact(self.ref, self.coding, self.when, value)


@dataclass(frozen=True, slots=True)
class BloodPressure:
    """One reading: a panel, or a systolic and a diastolic paired within minutes (§3b); a
    lone component keeps the other ``None`` and says so."""

    when: datetime
    systolic: float | None
    diastolic: float | None
    facts: tuple[Fact, ...]

    def text(self) -> str:
        return bp_text(self.systolic, self.diastolic)


def bp_text(systolic: float | None, diastolic: float | None) -> str:
    """Whole mmHg (§7); a lone component is named as such, never "?" (§3b)."""
    if systolic is not None and diastolic is not None:
        return f"{systolic:.0f}/{diastolic:.0f} mmHg"
    if systolic is not None:
        return f"systolic {systolic:.0f} mmHg, no diastolic recorded with it"
    return f"diastolic {diastolic:.0f} mmHg, no systolic recorded with it"


@dataclass(frozen=True, slots=True)
class Administration:
    ref: str
    drug: str  # "ketamine" | "esketamine"
    when: datetime
    dose_mg: float | None


@dataclass(frozen=True, slots=True)
class PregnancyStatus:
    """§3b, newest evidence wins: ``pregnant`` when the newest positive evidence is not
    superseded by newer negative evidence; ``documented`` when any status or test is in the
    window (R35)."""

    pregnant: bool
    evidence: tuple[Fact, ...]  # the positive evidence (when pregnant)
    superseded_by: Fact | None  # the newer negative evidence that overrides a positive
    documented: bool


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
    bp_pair_minutes: float = 10.0  # separate systolic/diastolic within this are one reading
    pregnancy_status_codes: tuple[str, ...] = ()  # 82810-3
    pregnancy_answers: dict[str, str] = field(default_factory=dict)  # pregnant → LA code …
    hcg_codes: tuple[str, ...] = ()  # the hCG tests (qualitative and quantitative)
    gaps: dict[str, str] = field(default_factory=dict)  # prefetch key → why it is missing
    ignored: dict[str, int] = field(default_factory=dict)  # why → how many resources dropped

    # -- conditions (§3b) -----------------------------------------------------------------

    def age_on(self, day: datetime) -> int | None:
        if self.birth_date is None:
            return None
        d = day.date()
        b = self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))

    def conditions_in(
        self, concept: str, history_counts: bool = False, since: datetime | None = None
    ) -> list[tuple[Condition, ConceptMatch]]:
        """Conditions of a concept: current ones; any status when history counts; with
        ``since`` those whose onset (else recorded date) is in the window, any status."""
        out = []
        for c, m in self._conditions_by_concept.get(concept, ()):
            if since is not None:
                if c.within(since):
                    out.append((c, m))
            elif history_counts or (c.active and not c.remission):
                out.append((c, m))
        return out

    @cached_property
    def _conditions_by_concept(self) -> dict[str, list[tuple[Condition, ConceptMatch]]]:
        """Concept → its conditions in record order, each with its first match of the
        concept: indexed once, so that each rule's question reads only its own concept."""
        return _index_by_first(self.conditions, lambda c: c.matches, lambda m: m.valueset)

    # -- medications (§3b) ----------------------------------------------------------------

    def medications_in(
        self, drug_class: str, now: datetime, lookback_days: int, recent_days: int
    ) -> list[MedicationHit]:
        """Medications of a drug class that are current, recently ended or stale (each with
        the ingredient that matched and its state); past ones are left out."""
        out = []
        for m, ingredient in self._medications_by_class.get(drug_class, ()):
            state = m.state(now, lookback_days, recent_days)
            if state is not MedState.PAST:
                out.append(MedicationHit(m, ingredient, state))
        return out

    @cached_property
    def _medications_by_class(self) -> dict[str, list[tuple[Medication, Ingredient]]]:
        """Drug class → its medications in record order, each with its first ingredient of
        the class: indexed once, not scanned again for each of the interaction classes."""
        return _index_by_first(self.medications, lambda m: m.ingredients, lambda i: i.drug_class)

    # -- observations ---------------------------------------------------------------------

    def latest(self, codes: Iterable[str], since: datetime | None = None) -> Observation | None:
        found = [o for code in codes for o in self.observations.get(code, ())]
        found = [o for o in found if o.when is not None and (since is None or o.when >= since)]
        return max(found, key=lambda o: o.when) if found else None

    def all_observations(self, codes: Iterable[str]) -> list[Observation]:
        found = [o for code in codes for o in self.observations.get(code, ()) if o.when]
        return sorted(found, key=lambda o: o.when, reverse=True)

    def latest_bp(self, since: datetime) -> BloodPressure | None:
        """The latest paired or panel reading on or after ``since``; a lone component only
        when no paired reading is newer."""
        return next((r for r in self.blood_pressures if r.when >= since), None)

    @cached_property
    def blood_pressures(self) -> list[BloodPressure]:
        """BP readings newest first: panels (any observation with 8480-6/8462-4 components)
        and separate systolic and diastolic observations, each paired with the nearest other
        component within ``bp_pair_minutes``; what finds no partner stays a lone reading."""
        readings: list[BloodPressure] = []
        separate: dict[str, list[Observation]] = {SYSTOLIC: [], DIASTOLIC: []}
        for code in self.bp_codes:
            for o in self.observations.get(code, ()):
                if o.when is None:
                    continue
                if o.components:
                    s, d = o.components.get(SYSTOLIC), o.components.get(DIASTOLIC)
                    if s or d:
                        sv, dv = (s.value if s else None), (d.value if d else None)
                        readings.append(BloodPressure(o.when, sv, dv, (o.fact(bp_text(sv, dv)),)))
                elif o.quantity and code in separate:
                    separate[code].append(o)
        window = timedelta(minutes=self.bp_pair_minutes)
        diastolics = list(separate[DIASTOLIC])
        for s in separate[SYSTOLIC]:
            near = [d for d in diastolics if abs(d.when - s.when) <= window]
            d = min(near, key=lambda d: abs(d.when - s.when)) if near else None
            if d is not None:
                diastolics.remove(d)
            readings.append(
                BloodPressure(
                    max(s.when, d.when) if d else s.when,
                    s.quantity.value,
                    d.quantity.value if d else None,
                    tuple(o.fact() for o in (s, d) if o),
                )
            )
        readings += [BloodPressure(d.when, None, d.quantity.value, (d.fact(),)) for d in diastolics]
        return sorted(readings, key=lambda r: (r.when, r.systolic is not None), reverse=True)

    # -- pregnancy (§3b: newest evidence wins) --------------------------------------------

    def pregnancy(
        self,
        now: datetime,
        condition_days: int,
        test_days: int,
        hcg_positive: float,
        conditions: Iterable[str],
    ) -> PregnancyStatus:
        """Positive evidence: a current pregnancy condition (of ``conditions``) with onset
        within ``condition_days``; a pregnancy status 'pregnant'; an hCG test within
        ``test_days`` that is positive (quantitative ≥ ``hcg_positive`` mIU/mL, qualitative
        by code or text). Negative evidence: status 'not pregnant', a negative hCG. The
        newest negative evidence newer than the newest positive one supersedes it."""
        positive: list[tuple[datetime, Fact]] = []
        negative: list[tuple[datetime, Fact]] = []
        since = now - timedelta(days=condition_days)
        for concept in conditions:
            for c, m in self.conditions_in(concept):
                if c.within(since):
                    positive.append((c.onset, c.fact(m)))
        pregnant = self.pregnancy_answers.get("pregnant")
        not_pregnant = self.pregnancy_answers.get("not_pregnant")
        statuses = self.all_observations(self.pregnancy_status_codes)
        for o in statuses:
            if pregnant in o.answer_codes and o.when >= since:  # a pregnancy lasts < 300 days
                positive.append((o.when, o.fact()))
            elif not_pregnant in o.answer_codes:
                negative.append((o.when, o.fact()))
        tested_since = now - timedelta(days=test_days)
        tests = [o for o in self.all_observations(self.hcg_codes) if o.when >= tested_since]
        for o in tests:
            result = hcg_result(o, hcg_positive)
            if result is True:
                positive.append((o.when, o.fact()))
            elif result is False:
                negative.append((o.when, o.fact()))
        documented = bool(tests) or any(o.when >= tested_since for o in statuses)
        if not positive:
            return PregnancyStatus(False, (), None, documented)
        newest_positive = max(when for when, _ in positive)
        newer_negative = [(w, f) for w, f in negative if w > newest_positive]
        if newer_negative:
            return PregnancyStatus(
                False, (), max(newer_negative, key=lambda x: x[0])[1], documented
            )
        return PregnancyStatus(
            True,
            tuple(f for _, f in sorted(positive, key=lambda x: x[0], reverse=True)),
            None,
            documented,
        )


#: SNOMED CT 10828004 "Positive" (named by ketamine-rules.md §3b)
POSITIVE_ANSWER = "10828004"
HCG_UNITS = {"m[iu]/ml", "miu/ml", "[iu]/l", "iu/l"}  # 1 mIU/mL = 1 IU/L


def hcg_result(o: Observation, positive_at: float) -> bool | None:
    """An hCG result: True positive, False negative, None unreadable. Quantitative in mIU/mL
    (= IU/L) against ``positive_at``; qualitative by the Positive code or the text."""
    if o.quantity is not None:
        if o.quantity.unit.replace(" ", "").lower() not in HCG_UNITS:
            return None
        return o.quantity.value >= positive_at
    if POSITIVE_ANSWER in o.answer_codes:
        return True
    text = o.answer_text.lower()
    if "negative" in text or "not detected" in text:
        return False
    if "positive" in text or "detected" in text:
        return True
    return None


T = TypeVar("T")
P = TypeVar("P")


def _index_by_first(
    items: Iterable[T], parts: Callable[[T], Iterable[P]], key: Callable[[P], str]
) -> dict[str, list[tuple[T, P]]]:
    """Key → the items (in order) with a part of that key, each with its first such part."""
    index: dict[str, list[tuple[T, P]]] = defaultdict(list)
    for item in items:
        first: dict[str, P] = {}
        for part in parts(item):
            first.setdefault(key(part), part)
        for k, part in first.items():
            index[k].append((item, part))
    return index
