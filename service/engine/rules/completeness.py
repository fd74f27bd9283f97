"""Data completeness: what could not be checked, and why it matters (spec §3: missing data is
a finding, not a silent pass)."""

from __future__ import annotations

from service.engine.record import Fact
from service.engine.scope import Scope

from .base import Evaluation, finding, rule
from .contraindications import pregnancy_status
from .dosing import latest_weight
from .monitoring import BP_ORDER, PHQ9_ORDER, WEIGHT_ORDER
from .regimen import course_so_far, rating_codes

#: prefetch key → the checks that depend on it (named on the card)
DEPENDS = {
    "conditions": "contraindications and cautions (aneurysm, AVM, haemorrhage, psychosis, "
    "cardiovascular disease, pregnancy)",
    "medicationRequests": "interactions (CNS depressants, stimulants, MAOIs) and the "
    "treatment-resistance history",
    "medicationStatements": "interactions with medicines the patient reports taking",
    "medicationAdministrations": "dose schedule and frequency from previous sessions",
    "observations": "blood pressure, weight (mg/kg dose), pregnancy test and rating scales",
    "allergies": "documented ketamine/esketamine hypersensitivity",
    "procedures": "previous ECT (treatment-resistance history)",
    "patient": "age and sex",
}
LOW_WEIGHT = {"procedures"}


@rule(
    "D01",
    title="Patient data could not be obtained",
    applies=Scope.ANY,
    severity="warning",
    source="ketamine-rules.md §3",
    reads=("prefetch", "FHIR server"),
    trigger="a prefetch key was neither sent nor fetchable, or only part of it arrived",
)
def patient_data_could_not_be_obtained(ev: Evaluation):
    gaps = ev.record.gaps
    if not gaps:
        return None
    severity = "info" if set(gaps) <= LOW_WEIGHT else "warning"
    lines = [
        f"- **{key}** ({reason}): could not check {DEPENDS.get(key, key)}."
        for key, reason in sorted(gaps.items())
    ]
    return finding(
        severity,
        f"Could not check all safety data for {ev.drug}: {', '.join(sorted(gaps))[:70]}",
        "Part of the record could not be obtained, so the checks below were not run. "
        "Review these data yourself before treating.\n\n" + "\n".join(lines),
    )


@rule(
    "D02",
    title="Record data ignored",
    applies=Scope.ANY,
    severity="info",
    source="ketamine-rules.md §3",
    reads=("prefetch",),
    trigger="resources of another patient or duplicates were present in the data",
)
def record_data_ignored(ev: Evaluation):
    ignored = ev.record.ignored
    if not ignored:
        return None
    counts = ", ".join(f"{n} {why}" for why, n in sorted(ignored.items()))
    return finding(
        "info",
        f"Record data ignored in the {ev.drug} check: {counts}"[:139],
        "Resources that belong to another patient, or repeat one already read, were left out "
        "of every check.",
        facts=(Fact("Bundle", value=counts),),
    )


@rule(
    "D03",
    title="Draft order not valid FHIR R4",
    applies=Scope.ALL,
    severity="info",
    source="ketamine-rules.md §3b",
    reads=("MedicationRequest (draft)",),
    trigger="the ketamine/esketamine draft order is not valid FHIR R4 in some element: the "
    "checks ran on what could be read, and the card names the element",
)
def draft_order_not_valid_fhir(ev: Evaluation):
    if ev.order is None or ev.order.problem is None:
        return None
    return finding(
        "info",
        f"The {ev.drug} order is not valid FHIR R4: checks ran on what could be read"[:139],
        f"The draft order is not valid FHIR R4 at {ev.order.problem}. The checks ran on what "
        "could be read; tell the EHR's integration team.",
        (Fact(ev.order.ref, value="not valid FHIR R4"),),
    )


@rule(
    "R33",
    title="No recent blood pressure",
    applies=Scope.ALL,
    severity="info",
    source="S4, S7",
    reads=("Observation 85354-9/8480-6/8462-4",),
    thresholds=("bp_window_days",),
    sign_only=True,
    trigger="no blood pressure within the window",
)
def no_recent_blood_pressure(ev: Evaluation):
    if ev.missing("observations"):
        return None
    since = ev.days_ago(ev.policy.bp_window_days)
    if any(r.when >= since for r in ev.record.blood_pressures):
        return None
    last = next(iter(ev.record.blood_pressures), None)
    return finding(
        "info",
        f"No blood pressure in the last {ev.policy.bp_window_days} days before {ev.drug}",
        "Blood pressure must be checked before the dose (the plan asks for it): ketamine and "
        "esketamine raise it, and a high reading should delay treatment."
        + (f" The last one on record: {last.text()}." if last else ""),
        last.facts
        if last
        else (
            Fact(
                "Observation",
                value=f"none recorded in the last {ev.policy.bp_window_days} days",
            ),
        ),
        (BP_ORDER,),
    )


@rule(
    "R34",
    title="No recent weight",
    applies=Scope.KIV,
    severity="warning",
    source="S3",
    reads=("Observation 29463-7",),
    thresholds=("weight_window_days",),
    sign_only=True,
    trigger="no body weight in a usable unit within the window",
)
def no_recent_weight(ev: Evaluation):
    if ev.missing("observations"):
        return None
    weight = latest_weight(ev)
    if weight is not None and weight[0] is not None:
        return None
    if weight is not None:
        why = (
            f"The latest weight is in “{weight[1].quantity.unit if weight[1].quantity else '?'}”, "
            "which is not converted by guesswork (kg, g or lb are)."
        )
        found_facts = (weight[1].fact(),)
    else:
        why = f"No body weight is recorded in the last {ev.policy.weight_window_days} days."
        found_facts = (
            Fact(
                "Observation",
                value=f"body weight 29463-7: none recorded in the last "
                f"{ev.policy.weight_window_days} days",
            ),
        )
    return finding(
        "warning",
        f"No usable recent weight: the {ev.drug} mg/kg dose cannot be checked",
        f"{why} The antidepressant dose is weight-based (0.5 mg/kg studied).",
        found_facts,
        (WEIGHT_ORDER,),
    )


@rule(
    "R35",
    title="Pregnancy status not documented",
    applies=Scope.ALL,
    severity="info",
    source="S4",
    reads=("Patient", "Observation 82810-3, hCG tests (obs_pregnancy_tests)"),
    thresholds=("reproductive_age_min", "reproductive_age_max", "pregnancy_window_days"),
    sign_only=True,
    trigger="female of reproductive age with no pregnancy status or test in the window",
)
def pregnancy_status_not_documented(ev: Evaluation):
    p = ev.policy
    age = ev.record.age_on(ev.order_time)
    if ev.record.gender != "female" or age is None or ev.missing("observations"):
        return None
    if not p.reproductive_age_min <= age <= p.reproductive_age_max:
        return None
    if pregnancy_status(ev).documented:
        return None
    return finding(
        "info",
        f"Document pregnancy status before {ev.drug}",
        f"No pregnancy status or test in the last {p.pregnancy_window_days} days for a patient "
        f"aged {age}. Ketamine/esketamine may cause fetal harm.",
        (Fact(f"Patient/{ev.record.patient_id}", value=f"female, age {age}"),),
    )


@rule(
    "R36",
    title="No baseline depression rating",
    applies=Scope.ALL,
    severity="info",
    source="S7, S13; S1",
    reads=("Observation 44261-6", "MedicationAdministration"),
    thresholds=("rating_before_first_dose_days", "reinduction_gap_days"),
    sign_only=True,
    trigger="at the start of a course only (no earlier dose, or re-induction after the gap): "
    "no PHQ-9 (or site scale) in the 30 days before it; later in a course P03 covers ratings",
)
def no_baseline_depression_rating(ev: Evaluation):
    if ev.missing("observations") or ev.missing("medicationAdministrations"):
        return None
    if course_so_far(ev):
        return None  # mid-course: the baseline was (or was not) taken at the start; P03
    days = ev.policy.rating_before_first_dose_days
    if ev.record.latest(rating_codes(ev), since=ev.days_ago(days)):
        return None
    return finding(
        "info",
        f"Record a baseline PHQ-9 before the first {ev.drug} dose of this course",
        f"No PHQ-9 or site rating scale in the {days} days before this first dose of a course; "
        "without a baseline the response cannot be judged at the end of induction.",
        (Fact("Observation", value=f"no rating recorded in the last {days} days"),),
        (PHQ9_ORDER,),
    )
