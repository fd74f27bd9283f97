"""The course view (issue 16): one printable page for the patient the EHR launched it for.

The data is read the way the patient-view service reads it (its prefetch searches, through
:func:`cds_hooks.service.resolve_prefetch`, from the launching FHIR server with the SMART
token), the findings are the patient-view service's own cards (same rules, same words), and
the numbers come from :mod:`service.engine.course`. Nothing is recorded in the registry:
opening the view is not a treatment decision.

Charts are drawn on the server with Matplotlib's SVG backend (object API only: no pyplot, no
global figure state shared between threads) and embedded as ``data:`` images, so the page
runs no script, loads nothing from elsewhere, and keeps a strict Content-Security-Policy
(inline SVG would need ``style-src 'unsafe-inline'`` for Matplotlib's style attributes).
Every chart has a text equivalent (its ``alt`` and caption) and a data table.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import matplotlib
from flask import Blueprint, render_template
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.service import HookRequest, ServiceDefinition, resolve_prefetch
from service.config import Settings
from service.engine.course import Course, administration_index, course
from service.engine.hooks import KetamineCDS
from service.engine.rules import Evaluation

from .preview import view_card
from .smart import (
    Grant,
    Refusal,
    SmartSettings,
    session_store,
    smart_blueprint,
    token_refused,
)

# set once for the process: text stays text in the SVG (smaller, sharp, searchable), and ids
# are stable between renders
matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "ketamine-cds"})

INK, MUTED, CAUTION, HAZARD, GOOD = "#1a1a1a", "#5a5a5a", "#9a6700", "#b00020", "#1d6b2f"
DRUG_COLOURS = {"ketamine": "#0b4f8a", "esketamine": "#6b3fa0"}


@dataclass(frozen=True)
class Chart:
    kind: str  # sessions | bp | scores | frequency: which data table goes with it
    title: str
    text: str  # the text equivalent: what the chart shows, in one or two sentences
    svg: str  # data: URI


def _svg(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 3.0), dpi=96)
    ax = fig.add_subplot()
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(colors=INK, labelsize=9)
    return fig, ax


def _line(ax, y: float, colour: str, label: str, style: str = "--") -> None:
    ax.axhline(y, color=colour, linestyle=style, linewidth=1.1)
    ax.annotate(
        label,
        xy=(1.0, y),
        xycoords=("axes fraction", "data"),
        xytext=(4, 0),
        textcoords="offset points",
        va="center",
        fontsize=8.5,
        color=colour,
    )


def _g(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.0f}{unit}"


def sessions_chart(c: Course) -> Chart:
    fig, ax = _figure()
    for drug in sorted({s.drug for s in c.sessions}):
        mine = [s for s in c.sessions if s.drug == drug]
        ax.vlines(
            [s.when for s in mine],
            0,
            [s.dose_mg or 0 for s in mine],
            color=DRUG_COLOURS.get(drug, INK),
            linewidth=2,
        )
        ax.plot(
            [s.when for s in mine],
            [s.dose_mg or 0 for s in mine],
            "o",
            color=DRUG_COLOURS.get(drug, INK),
            label=drug,
        )
    ax.set_ylabel("dose, mg", fontsize=9, color=INK)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8.5, frameon=False, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0))
    doses = [s.dose_mg for s in c.sessions if s.dose_mg is not None]
    first, last = c.sessions[0].when.date(), c.sessions[-1].when.date()
    text = f"{len(c.sessions)} sessions from {first} to {last}" + (
        "; no dose in mg recorded."
        if not doses
        else f"; {doses[0]:g} mg each."
        if min(doses) == max(doses)
        else f"; doses {min(doses):g}–{max(doses):g} mg."
    )
    return Chart("sessions", "Sessions and doses", text, _svg(fig))


def bp_chart(c: Course) -> Chart:
    fig, ax = _figure()
    caution, hazard = c.limits.bp_caution, c.limits.bp_hazard
    for attr, marker, label in (("bp_before", "o", "before"), ("bp_after", "^", "after (peak)")):
        readings = [getattr(s, attr) for s in c.sessions if getattr(s, attr)]
        ax.plot(
            [r.when for r in readings],
            [r.systolic for r in readings],
            marker,
            color=INK if attr == "bp_before" else HAZARD,
            label=f"systolic {label}",
        )
        ax.plot(
            [r.when for r in readings],
            [r.diastolic for r in readings],
            marker,
            color=MUTED if attr == "bp_before" else CAUTION,
            fillstyle="none",
            label=f"diastolic {label}",
        )
    _line(ax, caution[0], CAUTION, f"caution {caution[0]:g}")
    _line(ax, hazard[0], HAZARD, f"hazard {hazard[0]:g}")
    _line(ax, caution[1], CAUTION, f"caution {caution[1]:g}", ":")
    _line(ax, hazard[1], HAZARD, f"hazard {hazard[1]:g}", ":")
    ax.set_ylabel("mmHg", fontsize=9, color=INK)
    ax.legend(fontsize=8, frameon=False, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0))
    after = [s for s in c.sessions if s.bp_after]
    above = [s for s in after if s.bp_after.systolic and s.bp_after.systolic >= caution[0]]
    if after:
        peak = max(after, key=lambda s: s.bp_after.systolic or 0)
        text = (
            f"Highest post-dose reading {peak.bp_after.text()} at session {peak.number} "
            f"({peak.when.date()}); {len(above)} of {len(after)} sessions with a post-dose "
            f"systolic at or above the caution threshold {caution[0]:g} mmHg."
        )
    else:
        text = "No post-dose blood pressure is recorded for any session."
    return Chart("bp", "Blood pressure around each session", text, _svg(fig))


def scores_chart(c: Course) -> Chart:
    fig, ax = _figure()
    ax.plot([s.when for s in c.scores], [s.value for s in c.scores], "o-", color=INK, label="score")
    for s in c.sessions:
        ax.axvline(s.when, color=DRUG_COLOURS.get(s.drug, INK), alpha=0.18, linewidth=1)
    if c.response_line is not None:
        _line(ax, c.response_line, GOOD, f"response ≤ {c.response_line:g}")
    if c.limits.remission_score is not None:
        _line(ax, c.limits.remission_score, GOOD, f"remission < {c.limits.remission_score:g}", ":")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("score", fontsize=9, color=INK)
    if c.baseline and c.latest and c.latest.change is not None:
        text = (
            f"{c.baseline.value:g} at baseline ({c.baseline.when.date()}) → {c.latest.value:g} "
            f"on {c.latest.when.date()}: {c.latest.change:.0%} improvement; the response line "
            f"({c.limits.response_threshold:.0%} below baseline) is {c.response_line:g}."
        )
    elif c.baseline:
        text = f"Baseline {c.baseline.value:g} ({c.baseline.when.date()}); no rating since."
    else:
        text = f"{len(c.scores)} ratings; no baseline before the first session."
    return Chart("scores", "Rating scores", text, _svg(fig))


def frequency_chart(c: Course) -> Chart:
    fig, ax = _figure()
    ax.step(
        [s.when for s in c.sessions], [s.in_30_days for s in c.sessions], where="post", color=INK
    )
    ax.plot([s.when for s in c.sessions], [s.in_30_days for s in c.sessions], "o", color=INK)
    if c.drug == "ketamine":
        _line(ax, c.limits.max_per_30d, CAUTION, f"policy limit {c.limits.max_per_30d}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("sessions in 30 days", fontsize=9, color=INK)
    text = (
        f"At most {c.busiest_30_days} sessions in 30 days"
        + (f" (policy limit {c.limits.max_per_30d})" if c.drug == "ketamine" else "")
        + (
            f"; course length {c.course_days} days (limit {c.limits.course_days})."
            if c.course_days is not None
            else "; no course running now."
        )
    )
    return Chart("frequency", "Sessions per 30 days", text, _svg(fig))


def charts(c: Course) -> list[Chart]:
    if not c.sessions:
        return []
    out = [sessions_chart(c), bp_chart(c)]
    if c.scores:
        out.append(scores_chart(c))
    out.append(frequency_chart(c))
    return out


class CourseView:
    """Renders the course view for a SMART grant."""

    def __init__(
        self,
        engine: KetamineCDS,
        client: FhirClient,
        base_url: str,
        clock: Callable[[], datetime],
    ):
        self.engine = engine
        self.client = client
        self.base_url = base_url
        self.clock = clock
        self.service: ServiceDefinition = next(
            s for s in engine.services() if s.hook == "patient-view"
        )

    def __call__(self, grant: Grant) -> str:
        context = {"patientId": grant.patient}
        body = {
            "context": context,
            "fhirServer": grant.issuer,
            "fhirAuthorization": {"access_token": grant.access_token, "token_type": "Bearer"},
        }
        prefetch = resolve_prefetch(self.service, body, self.client)
        patient = prefetch["patient"]
        if token_refused(patient.reason):
            raise Refusal(
                401,
                "The EHR no longer accepts this session",
                "The FHIR server refused the access token. Open the course view again from "
                "the EHR.",
            )
        if not patient.available or patient.status == "empty":
            raise Refusal(
                502,
                "The patient's record could not be read",
                f"The FHIR server did not return the patient ({patient.reason or 'not found'}).",
            )
        req = HookRequest(
            self.service.id,
            "patient-view",
            f"smart-course-{uuid.uuid4()}",
            context,
            prefetch,
            grant.issuer,
            self.base_url,
        )
        cards = [view_card(card.to_json()) for card in self.service.handler(req).cards]
        ev = Evaluation(
            self.engine.patient_record(req),
            None,
            self.engine.policy,
            self.engine.terminology,
            self.clock(),
            "patient-view",
        )
        administrations = prefetch.get("medicationAdministrations")
        c = course(ev, administration_index(administrations.resources if administrations else []))
        return render_template(
            "smart_course.html",
            course=c,
            charts=charts(c),
            cards=cards,
            patient=_patient_name(ev.record.patient),
            now=ev.now,
        )


def _patient_name(patient: dict | None) -> str:
    """The patient's name as the record gives it (shown on the page, never logged)."""
    for name in (patient or {}).get("name") or ():
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str):
            return name["text"]
        parts = [*(name.get("given") or ()), name.get("family") or ""]
        joined = " ".join(p for p in parts if isinstance(p, str) and p)
        if joined:
            return joined
    return "the patient in context"


def course_blueprint(
    smart: SmartSettings, engine: KetamineCDS, settings: Settings, fetch: FetchSettings
) -> Blueprint:
    """The SMART routes serving the course view, reading from the allow-listed issuers with
    the service's FHIR fetch limits (``fetch``, the hooks' own). The engine's rules, policy
    and clock; nothing recorded."""
    unrecorded = KetamineCDS(engine.terminology, engine.policy, engine.clock)
    client = FhirClient(replace(fetch, allowed_servers=smart.issuers))
    view = CourseView(unrecorded, client, smart.public_url, engine.clock)
    return smart_blueprint(smart, view, session_store(settings, smart))
