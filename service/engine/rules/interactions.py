"""Interactions with current medication (ketamine-rules.md §5, R20–R24).

"Current" is the record's rule (spec §3): active or on-hold requests, active or intended
statements, or one completed/stopped within ``policy.recent_med_days`` (drugs linger).
"""

from __future__ import annotations

from service.engine.record import Fact
from service.engine.scope import Scope
from service.engine.terminology import Ingredient

from .base import Evaluation, finding, rule
from .conditions import facts, found


def current(
    ev: Evaluation, drug_class: str, active_only: bool = False
) -> list[tuple[Fact, Ingredient]]:
    """The current medications in a drug class, each with the ingredient that matched."""
    out = []
    for m in ev.record.medications:
        if not (m.active if active_only else m.current(ev.now, ev.policy.recent_med_days)):
            continue
        for ing in m.ingredients:
            if ing.drug_class == drug_class:
                out.append((m.fact(ing), ing))
                break
    return out


def _names(hits: list[tuple[Fact, Ingredient]]) -> str:
    return ", ".join(dict.fromkeys(ing.name for _, ing in hits))


@rule(
    "R20",
    title="CNS depressant",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S14, S16",
    reads=("MedicationRequest", "MedicationStatement", "Condition"),
    thresholds=("recent_med_days",),
    trigger="a current benzodiazepine, Z-drug, opioid or barbiturate, or active alcohol use "
    "disorder F10.*",
)
def cns_depressant(ev: Evaluation):
    hits = current(ev, "cns_depressants")
    alcohol = found(ev, "alcohol_use_disorder")
    if not hits and not alcohol:
        return None
    what = _names(hits) or "alcohol use disorder"
    return finding(
        "warning",
        f"CNS depressant ({what[:60]}) with {ev.drug}: more sedation",
        "Benzodiazepines, opioids, other sedatives and alcohol add to the sedation and "
        "respiratory depression of ketamine/esketamine (profound sedation, coma or death are "
        "possible). Monitor closely for sedation and breathing; consider reducing or timing "
        "the other drug.",
        tuple(f for f, _ in hits) + facts(alcohol),
    )


def _interaction(ev: Evaluation, drug_class: str, summary: str, detail: str):
    hits = current(ev, drug_class)
    if not hits:
        return None
    return finding(
        "warning",
        summary.format(names=_names(hits)[:60], drug=ev.drug),
        detail,
        tuple(f for f, _ in hits),
    )


@rule(
    "R21",
    title="Psychostimulant",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S14",
    reads=("MedicationRequest", "MedicationStatement"),
    thresholds=("recent_med_days",),
    trigger="a current amphetamine, methylphenidate, modafinil or armodafinil",
)
def psychostimulant(ev: Evaluation):
    return _interaction(
        ev,
        "psychostimulants",
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
    thresholds=("recent_med_days",),
    trigger="a current MAOI (phenelzine, tranylcypromine, isocarboxazid, moclobemide, "
    "selegiline, rasagiline)",
)
def maoi(ev: Evaluation):
    return _interaction(
        ev,
        "maois",
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
    thresholds=("recent_med_days",),
    trigger="current theophylline or aminophylline",
)
def theophylline_or_aminophylline(ev: Evaluation):
    return _interaction(
        ev,
        "theophyllines",
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
    hits = current(ev, "response_dampeners", active_only=True) + current(
        ev, "benzodiazepines", active_only=True
    )
    if not hits:
        return None
    return finding(
        "info",
        f"{_names(hits)[:60]} may blunt the response to {ev.drug}",
        "The founding editorial names GABA-enhancing drugs (benzodiazepines), lamotrigine and "
        "alpha-adrenergic agents such as clonidine as possibly dampening ketamine's "
        "antidepressant effect. Evidence uncertain: note it when judging the response.",
        tuple(f for f, _ in hits),
    )
