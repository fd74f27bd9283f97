"""Course surveillance for patient-view (ketamine-rules.md §5, P01–P06)."""

from __future__ import annotations

from datetime import timedelta

from service.engine.record import Fact, Observation
from service.engine.scope import Scope

from .base import Evaluation, finding, rule
from .conditions import facts, found
from .regimen import admin_facts, course_so_far, rating_codes, sessions_in_30_days


def ratings(ev: Evaluation) -> list[Observation]:
    """Rating-scale results with a number, oldest first."""
    found = [o for o in ev.record.all_observations(rating_codes(ev)) if o.quantity]
    return list(reversed(found))


def baseline_and_latest(ev: Evaluation) -> tuple[Observation | None, Observation | None]:
    """The last rating at or before the first dose (baseline) and the latest after it."""
    admins = ev.record.administrations
    scores = ratings(ev)
    if not admins or not scores:
        return None, None
    first = admins[0].when
    before = [o for o in scores if o.when <= first]
    after = [o for o in scores if o.when > first]
    return (before[-1] if before else None), (after[-1] if after else None)


@rule(
    "P01",
    title="Course summary",
    applies=Scope.COURSE,
    severity="info",
    source="S7, S13",
    reads=("MedicationAdministration", "Observation 44261-6"),
    trigger="a ketamine or esketamine course is on record",
)
def course_summary(ev: Evaluation):
    admins = ev.record.administrations
    if not admins:
        return finding(
            "info",
            f"Active {ev.drug} order; no session given yet",
            "A ketamine/esketamine order is active but no administration is recorded.",
        )
    base, last = baseline_and_latest(ev)
    lines = [
        f"- Sessions so far: **{len(admins)}** (first {admins[0].when.date()}, last "
        f"{admins[-1].when.date()})"
    ]
    if base and last:
        change = (
            (base.quantity.value - last.quantity.value) / base.quantity.value
            if base.quantity.value
            else 0.0
        )
        lines.append(
            f"- Rating: {base.quantity.value:g} at baseline → {last.quantity.value:g} "
            f"on {last.when.date()} ({change:.0%} improvement)"
        )
    elif base:
        lines.append(f"- Rating: baseline {base.quantity.value:g}; none since the first dose")
    else:
        lines.append("- No baseline rating before the first dose")
    return finding(
        "info",
        f"{ev.drug[0].upper()}{ev.drug[1:]} course: {len(admins)} sessions, last "
        f"{admins[-1].when.date()}",
        "**Course summary**\n" + "\n".join(lines),
        admin_facts([admins[0], admins[-1]]) + tuple(o.fact() for o in (base, last) if o),
    )


@rule(
    "P02",
    title="No response after 4 weeks",
    applies=Scope.COURSE,
    severity="warning",
    source="S7, S13",
    reads=("MedicationAdministration", "Observation 44261-6"),
    thresholds=("response_threshold",),
    trigger="4 weeks or more since the first dose and improvement below the response threshold",
)
def no_response_after_4_weeks(ev: Evaluation):
    admins = ev.record.administrations
    if not admins or ev.now - admins[0].when < timedelta(days=28):
        return None
    base, last = baseline_and_latest(ev)
    if not (base and last and base.quantity.value > 0):
        return None
    change = (base.quantity.value - last.quantity.value) / base.quantity.value
    if change >= ev.policy.response_threshold:
        return None
    return finding(
        "warning",
        f"{change:.0%} improvement after {(ev.now - admins[0].when).days} days of {ev.drug}: "
        "reassess continuing",
        f"Benefit should be judged at the end of induction (4 weeks). The rating improved by "
        f"{change:.0%}, below the {ev.policy.response_threshold:.0%} response threshold. "
        "Reassess whether to continue.",
        (base.fact(), last.fact()),
    )


@rule(
    "P03",
    title="Reassessment overdue",
    applies=Scope.COURSE,
    severity="info",
    source="S7",
    reads=("Observation 44261-6", "MedicationAdministration"),
    thresholds=("reassess_days", "course_active_days"),
    trigger="during an active course, the last rating is older than the reassessment "
    "interval (or there is none)",
)
def reassessment_overdue(ev: Evaluation):
    admins = ev.record.administrations
    if not admins or admins[-1].when < ev.days_ago(ev.policy.course_active_days):
        return None
    scores = ratings(ev)
    if scores and scores[-1].when >= ev.days_ago(ev.policy.reassess_days):
        return None
    last = f"last rating {scores[-1].when.date()}" if scores else "no rating recorded"
    return finding(
        "info",
        f"Depression rating overdue during the {ev.drug} course ({last})",
        f"Reassess with a rating scale at least every {ev.policy.reassess_days} days during "
        "an active course.",
        (scores[-1].fact(),) if scores else (Fact("Observation", value=last),),
    )


@rule(
    "P04",
    title="Bladder symptoms during the course",
    applies=Scope.COURSE,
    severity="warning",
    source="S4, S16",
    reads=("Condition",),
    trigger="lower urinary tract symptoms or cystitis recorded after the first dose",
)
def bladder_symptoms_during_the_course(ev: Evaluation):
    admins = ev.record.administrations
    if not admins:
        return None
    first = admins[0].when
    hits = [
        (c, m)
        for c in ev.record.conditions
        for m in c.matches
        if m.valueset in ("lower_urinary_tract_symptoms", "cystitis")
        and c.onset is not None
        and c.onset > first
    ]
    if not hits:
        return None
    return finding(
        "warning",
        f"Urinary symptoms since starting {ev.drug}: consider ketamine cystitis",
        "Ulcerative or interstitial cystitis is reported with repeated ketamine use. Ask about "
        "urinary symptoms, test urine, and refer to urology if they persist.",
        tuple(c.fact(m) for c, m in hits),
    )


@rule(
    "P05",
    title="Regimen beyond the evidence",
    applies=Scope.COURSE,
    severity="warning",
    source="S1 [E], S4",
    reads=("MedicationAdministration",),
    thresholds=("ketamine_course_days", "ketamine_max_per_30d", "reinduction_gap_days"),
    trigger="ketamine: the current course longer than the course length, or more sessions in "
    "any 30 days of it than the maximum (the safer reading of the specification's 'in 30 "
    "days': a burst stays a finding after it ends); esketamine: maintenance beyond 1 year",
)
def regimen_beyond_the_evidence(ev: Evaluation):
    p = ev.policy
    problems = []
    for drug in ("ketamine", "esketamine"):
        course = course_so_far(ev, drug)
        if not course:
            continue
        days = (ev.now - course[0].when).days
        if drug == "ketamine":
            # the busiest 30 days of the current course, not only the last 30 (R31 judges
            # those at order time): a burst beyond the evidence stays a finding after it
            counts = sessions_in_30_days(course)
            busiest = max(counts)
            if busiest > p.ketamine_max_per_30d:
                end = counts.index(busiest)
                window = course[end - busiest + 1 : end + 1]
                problems.append((f"{busiest} ketamine sessions in 30 days", window))
            elif days > p.ketamine_course_days:
                problems.append((f"a ketamine course of {days} days", course))
        elif days > 365:
            problems.append((f"esketamine for {days} days (beyond 1 year)", course))
    if not problems:
        return None
    what = "; ".join(w for w, _ in problems)
    return finding(
        "warning",
        f"Regimen beyond the evidence: {what}"[:139],
        "Repeated and maintenance ketamine have poorly understood long-term risks (cognition, "
        "bladder, misuse); esketamine's effects beyond 1 year were not evaluated. Reassess "
        "continuing, and consider enrolling the patient in a registry.",
        tuple(f for _, c in problems for f in admin_facts([c[0], c[-1]])),
    )


@rule(
    "P06",
    title="Cognition watch",
    applies=Scope.COURSE,
    severity="warning",
    source="S4, S6; S1 [E]",
    reads=("Condition",),
    trigger="dementia or cognitive impairment first recorded after the first dose",
)
def cognition_watch(ev: Evaluation):
    admins = ev.record.administrations
    if not admins:
        return None
    first = admins[0].when
    hits = found(ev, "dementia_cognitive_impairment", history_counts=True)
    if not hits or any(c.onset is None or c.onset <= first for c, _ in hits):
        return None  # known before the course (or undated): not a change during it
    return finding(
        "warning",
        f"Cognitive impairment recorded since starting {ev.drug}: review the course",
        "Long-term and frequent ketamine use is linked to cognitive impairment. A dementia or "
        "cognitive impairment diagnosis first recorded during the course: assess cognition "
        "and review whether to continue.",
        facts(hits),
    )
