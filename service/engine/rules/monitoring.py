"""The monitoring plans (R37 esketamine REMS, R38 ketamine): one info card per order that
carries the orderable monitoring (ketamine-rules.md §6)."""

from __future__ import annotations

from service.engine.scope import Scope

from .base import Evaluation, SuggestionSpec, finding, rule

BP_ORDER = SuggestionSpec(
    "order-observation",
    "Order blood pressure monitoring",
    loinc="85354-9",
    display="Blood pressure panel with all children optional",
)
SPO2_ORDER = SuggestionSpec(
    "order-observation",
    "Order pulse oximetry (SpO2)",
    loinc="59408-5",
    display="Oxygen saturation in Arterial blood by Pulse oximetry",
)
HR_ORDER = SuggestionSpec(
    "order-observation", "Order heart rate monitoring", loinc="8867-4", display="Heart rate"
)
WEIGHT_ORDER = SuggestionSpec(
    "order-observation", "Order a body weight", loinc="29463-7", display="Body weight"
)
PHQ9_ORDER = SuggestionSpec(
    "order-observation",
    "Order a PHQ-9 depression rating",
    loinc="44261-6",
    display="Patient Health Questionnaire 9 item (PHQ-9) total score",
)
#: spec §6: BP, SpO2 and heart rate always; PHQ-9 and weight come from R36 and R34
PLAN_ORDERS = (BP_ORDER, SPO2_ORDER, HR_ORDER)


REMS_PLAN = """\
**Spravato REMS: before, during and after each session**
- Certified healthcare setting; patient enrolled in the REMS before the first treatment.
- Blood pressure before the dose and about 40 minutes after, then until values are stable.
- Pulse oximetry throughout; watch for respiratory depression.
- Observe for at least 2 hours, until sedation, dissociation and respiratory depression resolve.
- No driving or hazardous activity until the next day after restful sleep; arrange transport home.
- Submit the REMS Patient Monitoring Form within 7 days of the session."""

KETAMINE_PLAN = """\
**Ketamine (off-label for depression): before, during and after each session**
- Clinician trained in airway management and advanced cardiac life support; resuscitation \
equipment at hand.
- Blood pressure, heart rate and SpO2 before, during (every 10–15 min) and after the dose; \
consider end-tidal CO2 (editorial).
- Anaesthesia co-management for medically complex patients.
- Discharge only when fully recovered, in the company of a responsible adult."""


@rule(
    "R37",
    title="Esketamine REMS monitoring plan",
    applies=Scope.E,
    severity="info",
    source="S8, S9, S7",
    reads=("MedicationRequest (draft)",),
    trigger="every esketamine (Spravato) order",
    sign_only=True,
)
def esketamine_rems_monitoring_plan(ev: Evaluation):
    return finding(
        "info",
        "Spravato REMS: monitor ≥2 h, BP before and ~40 min after, pulse oximetry",
        REMS_PLAN,
        suggestions=PLAN_ORDERS,
    )


@rule(
    "R38",
    title="Ketamine monitoring plan",
    applies=Scope.K,
    severity="info",
    source="S16, S17; S1 [E]",
    reads=("MedicationRequest (draft)",),
    trigger="every ketamine order",
    sign_only=True,
)
def ketamine_monitoring_plan(ev: Evaluation):
    return finding(
        "info",
        f"{ev.drug[0].upper()}{ev.drug[1:]}: monitor BP, heart rate and SpO2; airway-trained "
        "clinician",
        KETAMINE_PLAN,
        suggestions=PLAN_ORDERS,
    )
