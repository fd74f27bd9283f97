"""Data completeness: what could not be checked, and why it matters (spec §3: missing data is
a finding, not a silent pass)."""

from __future__ import annotations

from ..record import Fact
from .base import Evaluation, finding, rule

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
    applies="any",
    severity="warning",
    source="ketamine-rules.md §3",
    reads=("prefetch", "FHIR server"),
    trigger="a prefetch key was neither sent nor fetchable, or only part of it arrived",
)
def d01(ev: Evaluation):
    gaps = ev.record.gaps
    if not gaps:
        return None
    severity = "info" if set(gaps) <= LOW_WEIGHT else "warning"
    lines = [
        f"- **{key}** ({reason}): could not check {DEPENDS.get(key, key)}."
        for key, reason in sorted(gaps.items())
    ]
    return finding(
        ev,
        "D01",
        severity,
        f"Could not check all safety data for {ev.drug}: {', '.join(sorted(gaps))[:70]}",
        "Part of the record could not be obtained, so the checks below were not run. "
        "Review these data yourself before treating.\n\n" + "\n".join(lines),
    )


@rule(
    "D02",
    title="Record data ignored",
    applies="any",
    severity="info",
    source="ketamine-rules.md §3",
    reads=("prefetch",),
    trigger="resources of another patient or duplicates were present in the data",
)
def d02(ev: Evaluation):
    ignored = ev.record.ignored
    if not ignored:
        return None
    counts = ", ".join(f"{n} {why}" for why, n in sorted(ignored.items()))
    return finding(
        ev,
        "D02",
        "info",
        f"Some record data was ignored: {counts}"[:139],
        "Resources that belong to another patient, or repeat one already read, were left out "
        "of every check.",
        facts=(Fact("Bundle", value=counts),),
    )
