"""Interactions with current medication (ketamine-rules.md §5, R20–R24, R42).

"Current" is the record's (§3b): an active request or statement dated within
``policy.active_med_lookback_days`` (or covering now), or one completed/stopped within
``policy.recent_med_days`` (drugs linger). An older "active" entry is stale: it is listed in
the plan card as possibly outdated and drives no warning.
"""

from __future__ import annotations

from service.engine.record import MedicationHit, MedState
from service.engine.scope import Scope

from .base import Evaluation, finding, rule

LOOKBACK = ("recent_med_days", "active_med_lookback_days")


def medications(ev: Evaluation, drug_class: str) -> list[MedicationHit]:
    p = ev.policy
    return ev.record.medications_in(
        drug_class, ev.now, p.active_med_lookback_days, p.recent_med_days
    )


def _names(hits: list[MedicationHit]) -> str:
    return ", ".join(dict.fromkeys(h.ingredient.name for h in hits))


def _interaction(ev: Evaluation, classes: tuple[str, ...], summary: str, detail: str):
    """A warning for current (or recently ended) drugs of ``classes``; stale entries alone
    give an info note for the plan card."""
    hits = [h for c in classes for h in medications(ev, c)]
    live = [h for h in hits if h.state is not MedState.STALE]
    if live:
        return finding(
            "warning",
            summary.format(names=_names(live)[:60], drug=ev.drug)[:139],
            detail,
            tuple(h.fact() for h in live),
        )
    if hits:
        return finding(
            "info",
            f"Possibly outdated: {_names(hits)[:60]} still listed as active"[:139],
            "These entries are marked active but are older than the medication look-back "
            f"({ev.policy.active_med_lookback_days} days): reconcile the medication list. "
            "If the patient still takes them: " + detail,
            tuple(h.fact() for h in hits),
        )
    return None


@rule(
    "R20",
    title="CNS depressant",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S14, S16",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=LOOKBACK,
    trigger="a current benzodiazepine, opioid or other CNS depressant medication (Z-drug, "
    "barbiturate, gabapentinoid, sedating antihistamine or antipsychotic, muscle relaxant); "
    "diagnoses never fire it (R07 names alcohol)",
)
def cns_depressant(ev: Evaluation):
    return _interaction(
        ev,
        ("benzodiazepines", "opioids", "cns_depressants_other"),
        "CNS depressant ({names}) with {drug}: more sedation",
        "Benzodiazepines, opioids and other sedatives add to the sedation and respiratory "
        "depression of ketamine/esketamine (profound sedation, coma or death are possible). "
        "Monitor closely for sedation and breathing; consider reducing or timing the other "
        "drug.",
    )


@rule(
    "R21",
    title="Psychostimulant",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S14",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=LOOKBACK,
    trigger="a current amphetamine, methylphenidate, modafinil or armodafinil",
)
def psychostimulant(ev: Evaluation):
    return _interaction(
        ev,
        ("psychostimulants",),
        "Psychostimulant ({names}) with {drug}: monitor BP closely",
        "Psychostimulants add to the blood pressure rise of ketamine/esketamine. Monitor blood "
        "pressure closely during and after the session.",
    )


@rule(
    "R22",
    title="MAOI",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S10",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=LOOKBACK,
    trigger="a current MAOI (phenelzine, tranylcypromine, isocarboxazid, moclobemide, "
    "selegiline, rasagiline)",
)
def maoi(ev: Evaluation):
    return _interaction(
        ev,
        ("maois",),
        "MAOI ({names}) with {drug}: marked BP rises reported",
        "Monoamine oxidase inhibitors with esketamine have produced marked blood pressure rises "
        "(e.g. 200/99 mmHg at 2 h with phenelzine); there are no controlled studies. Monitor "
        "blood pressure closely.",
    )


@rule(
    "R23",
    title="Theophylline or aminophylline",
    applies=Scope.K,
    severity="warning",
    source="S16",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=LOOKBACK,
    trigger="current theophylline or aminophylline",
)
def theophylline_or_aminophylline(ev: Evaluation):
    return _interaction(
        ev,
        ("theophyllines",),
        "{names} with {drug}: seizure threshold may fall",
        "The ketamine label advises avoiding theophylline or aminophylline with ketamine: the "
        "combination may lower the seizure threshold.",
    )


@rule(
    "R24",
    title="May blunt the antidepressant response",
    applies=Scope.K,
    severity="info",
    source="S1 [E]",
    reads=("MedicationRequest", "MedicationStatement"),
    trigger="active lamotrigine or clonidine, or a regularly taken (active) benzodiazepine",
)
def may_blunt_the_antidepressant_response(ev: Evaluation):
    hits = [
        h
        for c in ("lamotrigine", "clonidine", "benzodiazepines")
        for h in medications(ev, c)
        if h.state is MedState.CURRENT and h.medication.active
    ]
    if not hits:
        return None
    return finding(
        "info",
        f"{_names(hits)[:60]} may blunt the response to {ev.drug}",
        "The founding editorial names GABA-enhancing drugs (benzodiazepines), lamotrigine and "
        "alpha-adrenergic agents such as clonidine as possibly dampening ketamine's "
        "antidepressant effect. Evidence uncertain: note it when judging the response.",
        tuple(h.fact() for h in hits),
    )


@rule(
    "R42",
    title="No oral antidepressant with Spravato",
    applies=Scope.E,
    severity="warning",
    source="S13",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=LOOKBACK,
    trigger="no current oral antidepressant: Spravato is given with one (TRD and MDSI)",
)
def no_oral_antidepressant_with_spravato(ev: Evaluation):
    if ev.missing("medicationRequests") or ev.missing("medicationStatements"):
        return None
    hits = medications(ev, "oral_antidepressants")
    if any(h.state is not MedState.STALE for h in hits):
        return None
    stale = f" Listed but possibly outdated: {_names(hits)[:60]}." if hits else ""
    return finding(
        "warning",
        "No current oral antidepressant: Spravato is given together with one",
        "The Spravato label (TRD and MDSI) is for use in conjunction with an oral "
        "antidepressant; none is current in the record." + stale + " Confirm the patient "
        "takes one, or start one.",
        tuple(h.fact() for h in hits),
    )
