"""Builds a :class:`~.model.PatientRecord` from resolved prefetch, with the hygiene of the
specification (ketamine-rules.md §3) applied once, so that no rule re-implements it.

Built straight from the parsed JSON (dicts), not from ``fhir.resources`` models: a full model
parse of a real record costs 30-40x reading it, and the rules need only a few fields.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from ..terminology import CodeRef, ConceptMatch, Terminology, concept_text, listed, obj
from .model import Administration, Condition, Medication, Observation, PatientRecord
from .values import (
    belongs_to,
    coded_status,
    dose_in_mg,
    medication_concept,
    observed_quantity,
    parse_datetime,
    period_end,
    period_start,
    quantity,
)

EXCLUDED_CONDITION_VERIFICATION = {"refuted", "entered-in-error"}
CURRENT_CLINICAL = {"active", "recurrence", "relapse"}  # §3b "current condition"
INACTIVE_CLINICAL = {"inactive", "resolved", "remission"}
REMISSION = "substance_use_disorder_remission"  # §3b: remission codes are history, not use
OBSERVATION_OK = ("final", "amended", "corrected")  # tuples: statuses may be unhashable
MED_IGNORED = {"entered-in-error", "cancelled", "draft"}
MED_ACTIVE = {
    ("MedicationRequest", "active"),
    ("MedicationRequest", "on-hold"),
    ("MedicationStatement", "active"),
    ("MedicationStatement", "intended"),
}
ADMIN_COUNTED = ("completed", "in-progress", "stopped")


class RecordBuilder:
    """Builds PatientRecords from resolved prefetch with one terminology."""

    BP_LISTS = ("bp_panel", "bp_panel_legacy", "vital_signs_panel", "systolic_bp", "diastolic_bp")

    def __init__(
        self,
        terminology: Terminology,
        site_codes: Iterable[str] = (),
        bp_pair_minutes: float = 10.0,
    ):
        self.terminology = terminology
        # LOINC code → None (verified) or the text pattern that must confirm it
        self.observation_codes = terminology.loinc_filters()
        self.observation_codes.update(dict.fromkeys(site_codes))
        self.bp_codes = tuple(c for name in self.BP_LISTS for c in terminology.loinc_codes(name))
        self.bp_pair_minutes = bp_pair_minutes
        self.pregnancy_status_codes = terminology.loinc_codes("pregnancy_status")
        # every hCG test of the pregnancy-test set (§3b: quantitative ones too), on the code
        tests = terminology.codes("obs_pregnancy_tests", "loinc") - {*self.pregnancy_status_codes}
        self.hcg_codes = tuple(
            sorted(
                {*terminology.loinc_codes("hcg_urine"), *terminology.loinc_codes("hcg_serum")}
                | {c for c in tests if not c.startswith("LA")}  # LA…: answers, not tests
            )
        )
        for code in self.hcg_codes:
            self.observation_codes.setdefault(code, None)

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
            bp_pair_minutes=self.bp_pair_minutes,
            pregnancy_status_codes=self.pregnancy_status_codes,
            pregnancy_answers=dict(t.loinc["pregnancy_status"].get("answers") or {}),
            hcg_codes=self.hcg_codes,
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
                record.conditions.append(self._condition(r, record.birth_date))
        for r in by_type.get("AllergyIntolerance", ()):
            if (
                coded_status(r.get("verificationStatus")) not in EXCLUDED_CONDITION_VERIFICATION
                and coded_status(r.get("clinicalStatus")) not in INACTIVE_CLINICAL
            ):
                onset = period_start(r, "onsetDateTime", "recordedDate")
                record.allergies.append(self._coded(r, t.classify(r.get("code")), True, onset))
        for r in by_type.get("Procedure", ()):
            if r.get("status") not in ("entered-in-error", "not-done"):
                performed = period_start(r, "performedDateTime", "performedPeriod")
                record.procedures.append(self._coded(r, t.classify(r.get("code")), True, performed))
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
                        period_end(r),
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

    def _condition(self, r: dict[str, Any], birth: date | None) -> Condition:
        """§3b: current = active, recurrence or relapse (or no status and no abatement);
        onset = onset dateTime, Period start or Age (from the birth date), else recorded."""
        status = coded_status(r.get("clinicalStatus"))
        abated = period_start(r, "abatementDateTime", "abatementPeriod")
        if status is None:
            current = abated is None and not any(k.startswith("abatement") for k in r)
        else:
            current = status in CURRENT_CLINICAL
        onset = (
            period_start(r, "onsetDateTime", "onsetPeriod")
            or _age_date(r.get("onsetAge"), birth)
            or period_start(r, "recordedDate")
        )
        matches = self.terminology.classify(r.get("code"))
        remission = status == "remission" or any(m.valueset == REMISSION for m in matches)
        return self._coded(r, matches, current, onset, abated, status, remission)

    @staticmethod
    def _coded(
        r: dict[str, Any],
        matches: tuple[ConceptMatch, ...],
        active: bool,
        onset: datetime | None,
        abated: datetime | None = None,
        status: str | None = None,
        remission: bool = False,
    ) -> Condition:
        """A coded entry (condition, allergy, procedure) with its value set matches."""
        return Condition(
            f"{r['resourceType']}/{r.get('id', '?')}",
            obj(r.get("code")),
            matches,
            active,
            onset,
            abated,
            status,
            remission,
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
            answer, answer_text, answer_codes = self._answer(r)
            index[hit["code"]].append(
                Observation(
                    f"Observation/{r.get('id', '?')}",
                    hit["code"],
                    CodeRef("loinc", hit["code"], hit.get("display")),
                    period_start(
                        r, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"
                    ),
                    observed_quantity(r),
                    answer,
                    components,
                    answer_text[:200],
                    answer_codes,
                )
            )
        for items in index.values():
            items.sort(key=lambda o: o.when or datetime.min.replace(tzinfo=UTC), reverse=True)
        record.observations = dict(index)

    def _answer(self, r: dict[str, Any]) -> tuple[CodeRef | None, str, tuple[str, ...]]:
        """An observation's answer: the first coding, the text (else the valueString) and
        every code of its valueCodeableConcept; most observations are numbers and have none."""
        value, text = r.get("valueCodeableConcept"), r.get("valueString")
        text = text if isinstance(text, str) else ""
        if not isinstance(value, dict):
            return None, text, ()
        codes = tuple(
            c["code"]
            for c in listed(value.get("coding"))
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        )
        return self.terminology.first_coding(value), concept_text(value) or text, codes


def _age_date(age: Any, birth: date | None) -> datetime | None:
    """An onsetAge in years as the date it was reached (``None`` without a birth date)."""
    if birth is None or not isinstance(age, dict):
        return None
    value, unit = age.get("value"), age.get("code") or age.get("unit")
    if isinstance(value, bool) or not isinstance(value, int | float) or unit not in YEARS:
        return None
    years = int(value)
    try:
        return datetime(birth.year + years, birth.month, birth.day, tzinfo=UTC)
    except ValueError:  # 29 February in a common year
        return datetime(birth.year + years, 3, 1, tzinfo=UTC)


YEARS = ("a", "yr", "year", "years")


def ketamine_kind(t: Terminology, concept: Any) -> str | None:
    """'esketamine', 'ketamine' or None; esketamine wins over ketamine (spec §2)."""
    if t.member(concept, "esketamine_drug"):
        return "esketamine"
    if t.member(concept, "ketamine_drug"):
        return "ketamine"
    return None
