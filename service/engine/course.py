"""The course view's arithmetic (issue 16): each session with its dose and the blood pressure
around it, the rating scores against the baseline, the session frequency and course length
against the policy limits, and the data gaps, stated plainly.

Pure functions of an :class:`~service.engine.rules.Evaluation` (record, policy, terminology and
the injected clock), built on the record's queries and the surveillance rules' own baseline
and rating selection, so the view and the cards never disagree about a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .orders import route_of
from .record import Administration, BloodPressure, Observation, weight_kg
from .rules import Evaluation
from .rules.regimen import course_so_far, sessions_in_30_days
from .rules.surveillance import baseline_and_latest, ratings
from .terminology import listed, obj

#: Which blood pressures belong to a session. Display choices, not clinical thresholds (site
#: policy): "before" is the last reading in the 24 hours up to the recorded session time;
#: "after" the highest systolic reading in the 4 hours after it (the REMS observation period
#: is at least 2 hours, spec §6).
BP_BEFORE = timedelta(hours=24)
BP_AFTER = timedelta(hours=4)
#: The esketamine label's evaluated duration (P05, spec §5: "effects beyond 1 year not
#: evaluated").
ESKETAMINE_EVALUATED_DAYS = 365


@dataclass(frozen=True)
class Session:
    number: int  # 1 for the first session of the course
    ref: str
    drug: str
    when: datetime
    route: str | None  # as recorded (text), None when not stated
    dose_mg: float | None
    weight_kg: float | None  # the latest weight in the policy window before the session
    performer: str | None  # who gave or recorded it, as the EHR names them
    bp_before: BloodPressure | None
    bp_after: BloodPressure | None
    in_30_days: int  # sessions in the 30 days up to and including this one

    @property
    def dose_mg_per_kg(self) -> float | None:
        if self.dose_mg is None or not self.weight_kg:
            return None
        return self.dose_mg / self.weight_kg


@dataclass(frozen=True)
class Score:
    when: datetime
    value: float
    scale: str  # the observation's code label, e.g. "PHQ-9 total score"
    change: float | None  # improvement since the baseline, as a fraction (0.5 = 50% better)
    is_baseline: bool


@dataclass(frozen=True)
class Limits:
    """The policy thresholds the view draws, with the policy version they come from."""

    policy_version: str
    bp_caution: tuple[float, float]  # systolic, diastolic (R08)
    bp_hazard: tuple[float, float]  # (R09)
    response_threshold: float  # fraction of improvement (P02)
    remission_score: float | None  # site policy ``remission_score``; None when not set
    max_per_30d: int  # ketamine sessions in 30 days (R31/P05)
    course_days: int  # the course length limit for the course's drug (R31/P05)
    reinduction_gap_days: int  # a gap this long ends a course (P05, R29)

    def bp_class(self, *readings: BloodPressure | None) -> str:
        """The highest class any of ``readings`` reaches: hazard, caution, below caution."""
        found = [r for r in readings if r is not None]
        if not found:
            return "no reading"

        def reaches(limit: tuple[float, float]) -> bool:
            return any(
                (r.systolic or 0) >= limit[0] or (r.diastolic or 0) >= limit[1] for r in found
            )

        if reaches(self.bp_hazard):
            return "at or above the hazard threshold"
        if reaches(self.bp_caution):
            return "at or above the caution threshold"
        return "below the caution threshold"


@dataclass(frozen=True)
class Course:
    drug: str  # "ketamine" | "esketamine" (the rules' naming of the course)
    sessions: tuple[Session, ...]
    scores: tuple[Score, ...]
    baseline: Score | None
    latest: Score | None
    response_line: float | None  # the score that is the response threshold from baseline
    course_days: int | None  # the current course's first session to now (None: no course
    # running: no session, or the last one a re-induction gap ago), as P05 counts it
    busiest_30_days: int  # most sessions in any 30 days of the course
    limits: Limits
    gaps: tuple[str, ...]


def limits(ev: Evaluation) -> Limits:
    p = ev.policy
    course_days = ESKETAMINE_EVALUATED_DAYS if ev.drug == "esketamine" else p.ketamine_course_days
    return Limits(
        policy_version=p.version,
        bp_caution=(p.bp_caution_systolic, p.bp_caution_diastolic),
        bp_hazard=(p.bp_hazard_systolic, p.bp_hazard_diastolic),
        response_threshold=p.response_threshold,
        remission_score=p.remission_score,
        max_per_30d=p.ketamine_max_per_30d,
        course_days=course_days,
        reinduction_gap_days=p.reinduction_gap_days,
    )


def _bp_around(ev: Evaluation, when: datetime) -> tuple[BloodPressure | None, BloodPressure | None]:
    readings = ev.record.blood_pressures  # newest first
    before = next((r for r in readings if when - BP_BEFORE <= r.when <= when), None)
    after = [r for r in readings if when < r.when <= when + BP_AFTER]
    peak = max(after, key=lambda r: r.systolic or 0.0) if after else None
    return before, peak


def _weight_before(ev: Evaluation, when: datetime) -> float | None:
    codes = ev.terminology.loinc_codes("body_weight")
    since = when - timedelta(days=ev.policy.weight_window_days)
    for o in ev.record.all_observations(codes):  # newest first
        if since <= o.when <= when:
            return weight_kg(o.quantity)
    return None


def _performer(resource: Mapping[str, Any]) -> str | None:
    for p in listed(resource.get("performer")):
        actor = obj(obj(p).get("actor"))
        name = actor.get("display") or actor.get("reference")
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def _route(resource: Mapping[str, Any]) -> str | None:
    name, text = route_of(obj(resource.get("dosage")))
    return text or name


def sessions(ev: Evaluation, resources: Mapping[str, Mapping[str, Any]]) -> list[Session]:
    """The course's sessions, oldest first. ``resources``: the MedicationAdministration
    resources by reference ("MedicationAdministration/id"), for route and performer, which the
    rules do not read."""
    admins: list[Administration] = ev.record.administrations
    frequency = sessions_in_30_days(admins)
    out = []
    for i, a in enumerate(admins):
        before, after = _bp_around(ev, a.when)
        raw = resources.get(a.ref, {})
        out.append(
            Session(
                number=i + 1,
                ref=a.ref,
                drug=a.drug,
                when=a.when,
                route=_route(raw),
                dose_mg=a.dose_mg,
                weight_kg=_weight_before(ev, a.when),
                performer=_performer(raw),
                bp_before=before,
                bp_after=after,
                in_30_days=frequency[i],
            )
        )
    return out


def scores(ev: Evaluation) -> tuple[list[Score], Score | None, Score | None]:
    """Every rating with a number, oldest first, with its change since the baseline (the last
    rating at or before the first dose, as P01/P02 take it); and the baseline and latest."""
    base, last = baseline_and_latest(ev)
    by_ref = {o.ref: _score(o, base) for o in ratings(ev)}
    return (
        list(by_ref.values()),
        by_ref.get(base.ref) if base else None,
        by_ref.get(last.ref) if last else None,
    )


def _score(o: Observation, base: Observation | None) -> Score:
    value = o.quantity.value
    change = None
    if base is not None and base.quantity.value and o.when > base.when:
        change = (base.quantity.value - value) / base.quantity.value
    scale = o.coding.display if o.coding and o.coding.display else f"LOINC {o.code}"
    return Score(o.when, value, scale, change, base is not None and o.ref == base.ref)


def gaps(ev: Evaluation, course_sessions: list[Session], course_scores: list[Score]) -> list[str]:
    """What is missing, in plain words: unreadable data, ratings, BPs around sessions,
    weights for the mg/kg dose."""
    out = [
        f"{key}: could not be read ({why}); what depends on it is not shown"
        for key, why in sorted(ev.record.gaps.items())
    ]
    if course_sessions:
        first = course_sessions[0].when
        if not any(s.when <= first for s in course_scores):
            out.append(f"No rating before the first session ({first.date()}): no baseline.")
        since = ev.days_ago(ev.policy.reassess_days)
        after = [s for s in course_scores if s.when > first]
        if not after:
            out.append(f"No rating since the first session ({first.date()}).")
        elif after[-1].when < since:
            out.append(
                f"No rating since {after[-1].when.date()} (more than "
                f"{ev.policy.reassess_days} days)."
            )
    for s in course_sessions:
        day = s.when.date()
        if s.bp_before is None:
            out.append(f"No pre-dose blood pressure for session {s.number} on {day}.")
        if s.bp_after is None:
            out.append(f"No post-dose blood pressure for session {s.number} on {day}.")
        if s.dose_mg is None:
            out.append(f"No dose in mg recorded for session {s.number} on {day}.")
        elif s.weight_kg is None:
            out.append(
                f"No body weight in the {ev.policy.weight_window_days} days before session "
                f"{s.number} on {day}: no mg/kg dose."
            )
    return out


def course(ev: Evaluation, administrations: Mapping[str, Mapping[str, Any]]) -> Course:
    """Everything the course view shows, for one patient at ``ev.now``."""
    course_sessions = sessions(ev, administrations)
    current = course_so_far(ev, ev.drug)
    course_scores, base, last = scores(ev)
    lim = limits(ev)
    return Course(
        drug=ev.drug,
        sessions=tuple(course_sessions),
        scores=tuple(course_scores),
        baseline=base,
        latest=last,
        response_line=base.value * (1 - lim.response_threshold) if base else None,
        course_days=(ev.now - current[0].when).days if current else None,
        busiest_30_days=max((s.in_30_days for s in course_sessions), default=0),
        limits=lim,
        gaps=tuple(gaps(ev, course_sessions, course_scores)),
    )


def administration_index(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """MedicationAdministration resources by the reference the record names them with."""
    return {
        f"MedicationAdministration/{r.get('id', '?')}": r
        for r in resources
        if r.get("resourceType") == "MedicationAdministration"
    }
