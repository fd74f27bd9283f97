"""Regimen checks from previous administrations and history (ketamine-rules.md §5, R29–R32,
R39)."""

from __future__ import annotations

from datetime import timedelta

from service.engine.record import Administration, Fact
from service.engine.scope import Scope

from .base import Evaluation, finding, rule


def prior(ev: Evaluation, drug: str | None = None) -> list[Administration]:
    """Administrations before now (of ``drug``, or of either), oldest first."""
    return [
        a for a in ev.record.administrations if a.when < ev.now and (drug is None or a.drug == drug)
    ]


def course_so_far(ev: Evaluation, drug: str | None = None) -> list[Administration]:
    """The administrations of the current course (of ``drug``, or of either), oldest first:
    those since the last gap of ``policy.reinduction_gap_days`` or more (R29, R36). Empty
    when the order starts a course: none before, or the last one that long ago."""
    given = prior(ev, drug)
    gap = timedelta(days=ev.policy.reinduction_gap_days)
    if not given or ev.now - given[-1].when >= gap:
        return []
    start = 0
    for i in range(1, len(given)):
        if given[i].when - given[i - 1].when >= gap:
            start = i
    return given[start:]


def sessions_in_30_days(admins: list[Administration]) -> list[int]:
    """For each administration (oldest first), how many of ``admins`` fall in the 30 days up
    to and including it: the session frequency P05 judges and the course view draws."""
    window = timedelta(days=30)
    return [
        sum(1 for b in admins[: i + 1] if a.when - b.when < window) for i, a in enumerate(admins)
    ]


def admin_facts(admins: list[Administration]) -> tuple[Fact, ...]:
    return tuple(
        Fact(a.ref, None, a.when, f"{a.drug}" + (f" {a.dose_mg:g} mg" if a.dose_mg else ""))
        for a in admins
    )


def rating_codes(ev: Evaluation) -> tuple[str, ...]:
    """PHQ-9 plus the site's extra rating-scale LOINC codes."""
    return ev.terminology.loinc_codes("phq9_total") + ev.policy.rating_scale_loinc


@rule(
    "R29",
    title="Esketamine frequency above the label schedule",
    applies=Scope.E,
    severity="warning",
    source="S13",
    reads=("MedicationAdministration",),
    thresholds=("schedule_tolerance_hours", "reinduction_gap_days"),
    trigger="counting this order, in 7 calendar days (with the tolerance): weeks 1–4 of the "
    "course more than 2 doses, week 5 on more than 1; a gap of the re-induction length starts "
    "a new course",
)
def esketamine_frequency_above_the_label_schedule(ev: Evaluation):
    course = course_so_far(ev, "esketamine")
    if not course:
        return None  # the first dose of a course (or of a re-induction)
    week = timedelta(days=7) - timedelta(hours=ev.policy.schedule_tolerance_hours)
    recent = [a for a in course if ev.now - a.when < week]
    induction = ev.now - course[0].when < timedelta(days=28)
    limit = 2 if induction else 1
    if len(recent) + 1 <= limit:
        return None
    phase = "induction (weeks 1–4)" if induction else "maintenance (week 5 on)"
    return finding(
        "warning",
        f"Spravato: {len(recent) + 1} doses in 7 days exceeds the {phase} schedule"[:139],
        f"Label schedule: twice weekly in weeks 1–4, once weekly in weeks 5–8, then every 1–2 "
        f"weeks. This would be dose {len(recent) + 1} within 7 calendar days (limit {limit}; "
        f"course started {course[0].when.date()}).",
        admin_facts(recent),
    )


@rule(
    "R30",
    title="Esketamine induction done without a rating",
    applies=Scope.E,
    severity="info",
    source="S7, S13",
    reads=("MedicationAdministration", "Observation 44261-6"),
    trigger="≥ 8 doses or ≥ 4 weeks since the first, and no rating scale since the first dose",
)
def esketamine_induction_done_without_a_rating(ev: Evaluation):
    given = prior(ev, "esketamine")
    if not given or (len(given) < 8 and ev.now - given[0].when < timedelta(days=28)):
        return None
    if ev.record.latest(rating_codes(ev), since=given[0].when):
        return None
    return finding(
        "info",
        "Spravato induction complete: assess benefit before continuing",
        "Judge the therapeutic benefit at the end of induction (4 weeks) before continuing; "
        "no depression rating (PHQ-9 or site scale) is recorded since the first dose.",
        admin_facts([given[0], given[-1]]),
    )


@rule(
    "R31",
    title="Repeated or maintenance ketamine",
    applies=Scope.K,
    severity="warning",
    source="S1 [E], S3",
    reads=("MedicationAdministration",),
    thresholds=("ketamine_max_per_30d", "ketamine_course_days"),
    trigger="at least the policy number of ketamine administrations in 30 days, or a course "
    "longer than the policy course length",
)
def repeated_or_maintenance_ketamine(ev: Evaluation):
    p = ev.policy
    given = prior(ev, "ketamine")
    if not given:
        return None
    month = [a for a in given if a.when >= ev.days_ago(30)]
    days = (ev.now - given[0].when).days
    if len(month) >= p.ketamine_max_per_30d:
        summary = f"{len(month)} ketamine sessions in 30 days: long-term risks are unknown"
    elif days > p.ketamine_course_days:
        summary = f"Ketamine course of {days} days: maintenance beyond the evidence"
    else:
        return None
    return finding(
        "warning",
        summary,
        "Repeated and maintenance ketamine have poorly understood long-term risks (cognition, "
        "bladder, misuse). Review the indication for continuing, and consider enrolling the "
        "patient in a registry.",
        admin_facts([given[0], *month[-3:]]),
    )


@rule(
    "R32",
    title="Previous dose less than the minimum interval ago",
    applies=Scope.ALL,
    severity="warning",
    source="S4",
    reads=("MedicationAdministration",),
    thresholds=("min_hours_between",),
    trigger="a ketamine or esketamine administration within the minimum interval",
)
def previous_dose_less_than_the_minimum_interval_ago(ev: Evaluation):
    since = ev.now - timedelta(hours=ev.policy.min_hours_between)
    recent = [a for a in prior(ev) if a.when > since]
    if not recent:
        return None
    hours = (ev.now - recent[-1].when).total_seconds() / 3600
    return finding(
        "warning",
        f"Last {recent[-1].drug} dose {hours:.0f} h ago: check the schedule before {ev.drug}",
        f"A dose was given less than {ev.policy.min_hours_between:g} hours ago. Patients should "
        "not drive until the next day after restful sleep; check this is not a duplicate order.",
        admin_facts(recent),
    )


@rule(
    "R39",
    title="Treatment resistance not evident",
    applies=Scope.ALL,
    severity="info",
    source="S15, S30; S1 [E]",
    reads=("MedicationRequest", "MedicationStatement", "Procedure"),
    thresholds=("trd_min_trials", "trd_lookback_days"),
    trigger="fewer distinct antidepressants than the policy minimum (active ones whatever their "
    "date, others in the look-back), and no ECT",
)
def treatment_resistance_not_evident(ev: Evaluation):
    p = ev.policy
    if ev.missing("medicationRequests") or ev.missing("medicationStatements"):
        return None
    since = ev.days_ago(p.trd_lookback_days)
    trials: dict[str, Fact] = {}
    for m in ev.record.medications:
        if not m.active and m.when is not None and m.when < since:
            continue  # active ones count whatever their date (§3b)
        for ing in m.ingredients:
            if ing.drug_class == "antidepressants":
                trials.setdefault(ing.name, m.fact(ing))
    ect = [(c, x) for c in ev.record.procedures for x in c.matches if x.valueset == "ect_procedure"]
    if len(trials) >= p.trd_min_trials or ect:
        return None
    counted = ", ".join(trials) or "none"
    return finding(
        "info",
        f"Treatment resistance not evident for {ev.drug}: {len(trials)} antidepressant(s) in "
        f"{p.trd_lookback_days} days",
        f"Treatment-resistant depression is usually defined as too little response to at least "
        f"{p.trd_min_trials} adequate antidepressant trials (the Spravato TRD indication). "
        f"Counted in the record: {counted}; no ECT. Document earlier trials if they happened "
        "elsewhere.",
        tuple(trials.values()),
    )
