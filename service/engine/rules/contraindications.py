"""Contraindications and cautions from the patient's conditions, allergies, age, pregnancy and
blood pressure (ketamine-rules.md §5, R01–R19, R40)."""

from __future__ import annotations

from datetime import timedelta

from service.engine.record import Fact, PregnancyStatus
from service.engine.scope import Scope

from .base import Evaluation, SuggestionSpec, finding, rule
from .conditions import by_drug, current_or_within, facts, found, unique
from .monitoring import BP_ORDER

REMOVE = SuggestionSpec("delete-order", "Remove this draft order")
E_OR_K = "E critical / K warning"


def _label_ci(ev: Evaluation, valueset: str, problem: str, why_e: str, why_k: str):
    """R01–R03: an esketamine label contraindication, a caution for off-label ketamine."""
    hits = found(ev, valueset, history_counts=True)
    if not hits:
        return None
    severity = by_drug(ev, "critical", "warning")
    if severity == "critical":
        summary = f"{problem}: {ev.drug} is contraindicated (US label)"
        detail = why_e
    else:
        summary = f"{problem}: a blood pressure rise with {ev.drug} may be hazardous"
        detail = why_k
    return finding(severity, summary, detail, facts(hits), (REMOVE,))


@rule(
    "R01",
    title="Aneurysmal vascular disease",
    applies=Scope.ALL,
    severity=E_OR_K,
    source="S4, S6; S16",
    reads=("Condition",),
    trigger="aneurysm (I71.*, I67.1, I72.*, I25.41, I25.3 or SNOMED), history counts",
)
def aneurysmal_vascular_disease(ev: Evaluation):
    return _label_ci(
        ev,
        "aneurysm",
        "Aneurysmal vascular disease",
        "Aneurysmal vascular disease (aortic, intracranial or peripheral arterial) is a "
        "contraindication on the Spravato label: esketamine raises blood pressure. Do not give; "
        "remove the order unless a specialist has judged otherwise.",
        "Aneurysmal vascular disease contraindicates esketamine, and ketamine's label "
        "contraindicates it where a blood pressure rise is a serious hazard. Ketamine for "
        "depression is off-label: weigh the risk with the vascular team before treating.",
    )


@rule(
    "R02",
    title="Arteriovenous malformation",
    applies=Scope.ALL,
    severity=E_OR_K,
    source="S4, S6",
    reads=("Condition",),
    trigger="arteriovenous malformation (Q28.0, Q28.2, Q27.3* or SNOMED), history counts",
)
def arteriovenous_malformation(ev: Evaluation):
    return _label_ci(
        ev,
        "avm",
        "Arteriovenous malformation",
        "An arteriovenous malformation is a contraindication on the Spravato label (blood "
        "pressure rise). Do not give; remove the order.",
        "An arteriovenous malformation contraindicates esketamine; ketamine raises blood "
        "pressure in the same way. Weigh the risk with the patient's specialist before treating.",
    )


@rule(
    "R03",
    title="Intracerebral haemorrhage history",
    applies=Scope.ALL,
    severity=E_OR_K,
    source="S4, S6",
    reads=("Condition",),
    trigger="intracerebral haemorrhage (I61.*, I69.1*; also I60.*, I62.*), history counts",
)
def intracerebral_haemorrhage_history(ev: Evaluation):
    return _label_ci(
        ev,
        "intracranial_haemorrhage",
        "History of intracranial haemorrhage",
        "A history of intracerebral haemorrhage is a contraindication on the Spravato label. "
        "Do not give; remove the order.",
        "A history of intracerebral haemorrhage contraindicates esketamine; ketamine raises "
        "blood and intracranial pressure. Weigh the risk with neurology before treating.",
    )


@rule(
    "R04",
    title="Ketamine or esketamine hypersensitivity",
    applies=Scope.ALL,
    severity="critical",
    source="S4, S16",
    reads=("AllergyIntolerance",),
    trigger="an active allergy or intolerance to ketamine or esketamine (code or text)",
)
def ketamine_or_esketamine_hypersensitivity(ev: Evaluation):
    hits = [
        (a, m) for a in ev.record.allergies for m in a.matches if m.valueset == "ketamine_allergy"
    ]
    if not hits:
        return None
    return finding(
        "critical",
        f"Documented ketamine/esketamine hypersensitivity: do not give {ev.drug}",
        "Known hypersensitivity to ketamine, esketamine or an excipient is a contraindication "
        "on both labels. Remove the order; if the allergy entry is wrong, correct the record.",
        tuple(Fact(a.ref, m.coding, a.onset, "allergy/intolerance") for a, m in hits),
        (REMOVE,),
    )


@rule(
    "R05",
    title="Psychotic disorder",
    applies=Scope.ALL,
    severity="warning",
    source="S4; S1 [E]",
    reads=("Condition",),
    trigger="psychotic disorder (F20–F29, F32.3, F33.3, F31.2, F31.5, F06.2), history counts",
)
def psychotic_disorder(ev: Evaluation):
    hits = found(ev, "psychosis", history_counts=True)
    if not hits:
        return None
    return finding(
        "warning",
        f"Psychotic disorder on record: dissociation risk with {ev.drug}",
        "Ketamine and esketamine cause dissociation and perceptual changes. The Spravato label "
        "asks for careful assessment of patients with psychosis and treatment only if the "
        "benefit outweighs the risk; the founding editorial urges extreme caution.",
        facts(hits),
    )


@rule(
    "R07",
    title="Substance use disorder",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S7; S1 [E]",
    reads=("Condition",),
    thresholds=("sud_lookback_days",),
    trigger="a substance use disorder (not nicotine) current or with onset in the look-back; "
    "in remission named so; a hallucinogen disorder (covers ketamine) at any time; an active "
    "alcohol use disorder also names alcohol's sedation",
)
def substance_use_disorder(ev: Evaluation):
    since = ev.days_ago(ev.policy.sud_lookback_days)
    misuse = found(ev, "hallucinogen_use", history_counts=True)
    hits = unique(
        misuse
        + current_or_within(ev, "substance_use_disorder", since)
        + current_or_within(ev, "substance_use_disorder_remission", since)
    )
    if not hits:
        return None
    alcohol = [c for c, _ in found(ev, "alcohol_use_disorder") if not c.remission]
    if misuse:
        summary = f"Possible ketamine misuse history (hallucinogen use disorder): {ev.drug}"
        extra = (
            " A hallucinogen-related disorder includes ketamine misuse: long-term misuse is "
            "linked to cognitive impairment and cystitis."
        )
    elif all(c.remission for c, _ in hits):
        summary = f"Substance use disorder in remission: assess relapse risk before {ev.drug}"
        extra = " The disorder is recorded as in remission: weigh the risk of relapse."
    else:
        summary = f"Substance use disorder: assess misuse risk before {ev.drug}"
        extra = ""
    if alcohol:
        extra += (
            " An active alcohol use disorder also adds to the sedation and respiratory "
            "depression of ketamine/esketamine: ask about drinking before each session."
        )
    return finding(
        "warning",
        summary,
        "Ketamine and esketamine are Schedule III with abuse potential. Assess the risk of "
        "abuse or misuse before prescribing and monitor for it throughout; weigh any history "
        "of substance use disorder, including alcohol, carefully." + extra,
        facts(hits),
    )


def _recent_bp(ev: Evaluation):
    return ev.record.latest_bp(ev.days_ago(ev.policy.bp_window_days))


def _at_or_above(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def _hazard(ev: Evaluation, bp) -> bool:
    p = ev.policy
    return bp is not None and (
        _at_or_above(bp.systolic, p.bp_hazard_systolic)
        or _at_or_above(bp.diastolic, p.bp_hazard_diastolic)
    )


@rule(
    "R08",
    title="Elevated blood pressure",
    applies=Scope.ALL,
    severity="warning",
    source="S4",
    reads=("Observation 85354-9/8480-6/8462-4", "Condition"),
    thresholds=(
        "bp_window_days",
        "bp_pair_minutes",
        "bp_caution_systolic",
        "bp_caution_diastolic",
    ),
    trigger="latest BP in the window at or above the caution threshold (below the hazard "
    "threshold, which R09 reports); a hypertension diagnosis with normal readings is "
    "an info note",
)
def elevated_blood_pressure(ev: Evaluation):
    p = ev.policy
    bp = _recent_bp(ev)
    if (
        bp is not None
        and not _hazard(ev, bp)
        and (
            _at_or_above(bp.systolic, p.bp_caution_systolic)
            or _at_or_above(bp.diastolic, p.bp_caution_diastolic)
        )
    ):
        return finding(
            "warning",
            f"Blood pressure {bp.text()}: weigh delaying {ev.drug}"[:139],
            f"The latest blood pressure is at or above {p.bp_caution_systolic:g}/"
            f"{p.bp_caution_diastolic:g} mmHg, the Spravato label's general guide for weighing "
            "a delay. Ketamine and esketamine raise blood pressure, peaking about 40 minutes "
            "after the dose. Recheck before the dose; treat or delay if it stays high.",
            bp.facts,
        )
    hypertension = found(ev, "hypertension")
    if hypertension and bp is not None and not _hazard(ev, bp):
        return finding(
            "info",
            f"Hypertension on record: recheck BP ({bp.text()}) before {ev.drug}"[:139],
            "Hypertension is recorded; recheck blood pressure before the dose.",
            facts(hypertension) + bp.facts,
        )
    return None


@rule(
    "R09",
    title="Hazardous blood pressure or hypertensive crisis",
    applies=Scope.ALL,
    severity="critical / warning (older reading)",
    source="S16, S19, S4",
    reads=("Observation 85354-9/8480-6/8462-4", "Condition"),
    thresholds=(
        "bp_now_hours",
        "bp_window_days",
        "bp_pair_minutes",
        "bp_hazard_systolic",
        "bp_hazard_diastolic",
        "hypertensive_crisis_days",
    ),
    trigger="latest BP at or above the hazard threshold: within the now-window critical (remove "
    "the order), older in the BP window a warning to recheck (order a BP); a hypertensive "
    "crisis with onset in the crisis window critical",
)
def hazardous_blood_pressure_or_hypertensive_crisis(ev: Evaluation):
    p = ev.policy
    bp = _recent_bp(ev)
    crisis = found(ev, "hypertensive_crisis", since=ev.days_ago(p.hypertensive_crisis_days))
    hazard = _hazard(ev, bp)
    if not (hazard or crisis):
        return None
    limits = f"{p.bp_hazard_systolic:g}/{p.bp_hazard_diastolic:g} mmHg"
    if hazard and not crisis and bp.when < ev.now - timedelta(hours=p.bp_now_hours):
        days = (ev.now - bp.when).days
        return finding(
            "warning",
            f"Blood pressure {bp.text()} {days} days ago: recheck before {ev.drug}"[:139],
            f"The latest blood pressure, {days} days old, was at or above {limits}. Ketamine "
            "and esketamine raise blood pressure: recheck it before dosing and do not dose "
            "while it stays at or above this.",
            bp.facts,
            (BP_ORDER,),
        )
    found_facts = (bp.facts if hazard else ()) + facts(crisis)
    what = f"Blood pressure {bp.text()}" if hazard else "Recent hypertensive crisis"
    return finding(
        "critical",
        f"{what}: a further rise with {ev.drug} may be hazardous"[:139],
        f"Blood pressure at or above {limits} (uncontrolled hypertension), or a hypertensive "
        f"crisis in the last {p.hypertensive_crisis_days} days. Both labels contraindicate "
        "ketamine/esketamine where a blood pressure rise is a serious hazard. Do not dose "
        "now: control the blood pressure first.",
        found_facts,
        (REMOVE,),
    )


@rule(
    "R10",
    title="Cardiovascular or cerebrovascular disease",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S18, S19, S20; S1 [E]",
    reads=("Condition",),
    thresholds=("recent_mi_days",),
    trigger="MI or acute coronary syndrome with onset in the window (any status, named "
    "recent); current ischaemic heart disease or heart failure; stroke or TIA at any time",
)
def cardiovascular_or_cerebrovascular_disease(ev: Evaluation):
    since = ev.days_ago(ev.policy.recent_mi_days)
    acute = found(ev, "myocardial_infarction", since=since) + found(
        ev, "acute_coronary_syndrome", since=since
    )
    hits = unique(
        acute
        + found(ev, "ischaemic_heart_disease")
        + found(ev, "heart_failure")
        + found(ev, "stroke_tia", history_counts=True)
    )
    if not hits:
        return None
    named = ""
    if acute:
        named = (
            f" A myocardial infarction or acute coronary syndrome in the last "
            f"{ev.policy.recent_mi_days} days is recorded: the UK label contraindicates "
            "ketamine in severe coronary disease."
        )
    what = "Recent MI/ACS" if acute else "Cardio-/cerebrovascular disease"
    return finding(
        "warning",
        f"{what}: individual risk assessment before {ev.drug}",
        "Ketamine and esketamine raise blood pressure and heart rate. Assess cardiovascular "
        "and cerebrovascular conditions carefully; consider anaesthesia input for medically "
        "complex patients." + named,
        facts(hits),
    )


@rule(
    "R11",
    title="Possible raised intracranial pressure",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S12, S20",
    reads=("Condition",),
    thresholds=("head_injury_days",),
    trigger="raised intracranial pressure (current), or a traumatic brain injury with onset in "
    "the window (any status); an older head injury is silent",
)
def possible_raised_intracranial_pressure(ev: Evaluation):
    hits = found(ev, "raised_intracranial_pressure") + found(
        ev, "traumatic_brain_injury", since=ev.days_ago(ev.policy.head_injury_days)
    )
    if not hits:
        return None
    return finding(
        "warning",
        f"Possible raised intracranial pressure: {ev.drug} may raise it further",
        "Ketamine raises cerebrospinal fluid pressure; the Spravato label advises against use "
        "where a rise in intracranial pressure poses a serious risk. Confirm intracranial "
        "pressure is not raised before treating.",
        facts(hits),
    )


def _info(ev: Evaluation, valueset: str, summary: str, detail: str):
    hits = found(ev, valueset)
    return finding("info", summary, detail, facts(hits)) if hits else None


@rule(
    "R12",
    title="Glaucoma",
    applies=Scope.ALL,
    severity="info",
    source="S16, S20",
    reads=("Condition",),
    trigger="glaucoma H40.* (active)",
)
def glaucoma(ev: Evaluation):
    return _info(
        ev,
        "glaucoma",
        f"Glaucoma: {ev.drug} may raise intraocular pressure",
        "Ketamine can raise intraocular pressure; check that glaucoma is controlled.",
    )


@rule(
    "R13",
    title="Hyperthyroidism",
    applies=Scope.ALL,
    severity="info / warning (storm)",
    source="S19, S20",
    reads=("Condition",),
    trigger="hyperthyroidism E05.* (active); with thyroid storm (E05.*1) a warning",
)
def hyperthyroidism(ev: Evaluation):
    storm = found(ev, "thyroid_storm")
    if storm:
        return finding(
            "warning",
            f"Thyrotoxic crisis recorded: avoid {ev.drug} until controlled",
            "Untreated or insufficiently treated hyperthyroidism is a contraindication on a "
            "non-US ketamine label (sympathetic stimulation). Treat the thyroid crisis first.",
            facts(storm),
        )
    return _info(
        ev,
        "hyperthyroidism",
        f"Hyperthyroidism: confirm it is controlled before {ev.drug}",
        "Uncontrolled hyperthyroidism is a contraindication on a non-US ketamine label.",
    )


@rule(
    "R14",
    title="Liver disease",
    applies=Scope.ALL,
    severity="info",
    source="S16",
    reads=("Condition",),
    trigger="liver disease K70–K77 or R74.01 (active)",
)
def liver_disease(ev: Evaluation):
    return _info(
        ev,
        "liver_disease",
        f"Liver disease: watch liver function with {ev.drug}",
        "The ketamine label warns of drug-induced liver injury with repeated use; "
        "consider liver tests during a course.",
    )


@rule(
    "R15",
    title="Interstitial or ulcerative cystitis",
    applies=Scope.ALL,
    severity="info",
    source="S4, S16",
    reads=("Condition",),
    trigger="cystitis N30.1*, N30.2* (active)",
)
def interstitial_or_ulcerative_cystitis(ev: Evaluation):
    return _info(
        ev,
        "cystitis",
        f"Cystitis on record: monitor bladder symptoms on {ev.drug}",
        "Ulcerative or interstitial cystitis is reported with long-term ketamine use; "
        "monitor urinary symptoms and refer if they worsen.",
    )


@rule(
    "R16",
    title="Under 18",
    applies=Scope.ALL,
    severity=E_OR_K,
    source="S4",
    reads=("Patient.birthDate",),
    trigger="age under 18 at the order date (or age unknown)",
)
def under_18(ev: Evaluation):
    age = ev.record.age_on(ev.order_time)
    if age is None:
        return finding(
            "warning",
            f"Age not recorded: cannot check the adult-only use of {ev.drug}",
            "Patient.birthDate is missing, so the under-18 check could not run. Esketamine is "
            "not approved in patients under 18. Confirm the patient's age.",
            (Fact(f"Patient/{ev.record.patient_id}", value="birthDate missing"),),
        )
    if age >= 18:
        return None
    severity = by_drug(ev, "critical", "warning")
    if severity == "critical":
        summary = f"Patient is {age} years old: {ev.drug} is not approved under 18"
    else:
        summary = f"Patient is {age} years old: {ev.drug} is not studied for depression under 18"
    return finding(
        severity,
        summary,
        "Safety and effectiveness in patients under 18 are not established (Spravato label); "
        "ketamine is approved for no age in depression. Antidepressants raise suicidality "
        "risk in young people.",
        (
            Fact(
                f"Patient/{ev.record.patient_id}",
                value=f"born {ev.record.birth_date}, age {age} at the order date",
            ),
        ),
        (REMOVE,),
    )


@rule(
    "R17",
    title="Pregnancy",
    applies=Scope.ALL,
    severity="warning",
    source="S4, S14",
    reads=("Condition", "Observation 82810-3, hCG tests (obs_pregnancy_tests)"),
    thresholds=(
        "reproductive_age_min",
        "reproductive_age_max",
        "pregnancy_condition_days",
        "pregnancy_window_days",
        "hcg_positive_miu_ml",
    ),
    trigger="newest evidence wins: a current pregnancy or obstetric condition (not an abortive "
    "outcome) with recent onset, a 'pregnant' status, or a positive hCG in the window, unless "
    "newer negative evidence exists",
)
def pregnancy(ev: Evaluation):
    p = ev.policy
    age = ev.record.age_on(ev.order_time)
    if age is not None and not p.reproductive_age_min <= age <= p.reproductive_age_max:
        return None
    status = pregnancy_status(ev)
    if not status.pregnant:
        return None
    return finding(
        "warning",
        f"Pregnancy recorded: {ev.drug} may cause fetal harm",
        "Animal data suggest fetal harm; esketamine is not recommended in pregnancy. Discuss "
        "the risk; if the patient is pregnant, do not start (stop and counsel if on treatment).",
        status.evidence,
    )


def pregnancy_status(ev: Evaluation) -> PregnancyStatus:
    """The record's answer (§3b, newest evidence wins) with the policy's windows."""
    p = ev.policy
    return ev.record.pregnancy(
        ev.now,
        p.pregnancy_condition_days,
        p.pregnancy_window_days,
        p.hcg_positive_miu_ml,
        ("pregnancy", "pregnancy_obstetric"),
    )


@rule(
    "R18",
    title="Breastfeeding",
    applies=Scope.ALL,
    severity="warning",
    source="S14",
    reads=("Condition",),
    trigger="lactation Z39.1 (active)",
)
def breastfeeding(ev: Evaluation):
    hits = found(ev, "breastfeeding")
    if not hits:
        return None
    return finding(
        "warning",
        f"Breastfeeding: not recommended during {ev.drug} treatment",
        "Esketamine passes into breast milk; breastfeeding during treatment is not recommended "
        "because of possible neurotoxicity in the infant.",
        facts(hits),
    )


@rule(
    "R19",
    title="Age 65 or over (esketamine)",
    applies=Scope.E,
    severity="info",
    source="S6",
    reads=("Patient.birthDate",),
    thresholds=("esketamine_elderly_age",),
    trigger="esketamine for a patient at or above the age threshold",
)
def age_65_or_over_esketamine(ev: Evaluation):
    age = ev.record.age_on(ev.order_time)
    if age is None or age < ev.policy.esketamine_elderly_age:
        return None
    return finding(
        "info",
        f"Age {age}: higher esketamine exposure; start cautiously",
        "Esketamine peak levels and exposure are higher in older patients; start cautiously "
        "and monitor closely.",
        (Fact(f"Patient/{ev.record.patient_id}", value=f"age {age}"),),
    )


@rule(
    "R41",
    title="Respiratory disease: respiratory-depression risk",
    applies=Scope.ALL,
    severity="info",
    source="S7, S11, S16",
    reads=("Condition",),
    trigger="current respiratory disease with respiratory-depression risk (COPD, sleep apnoea, …)",
)
def respiratory_disease(ev: Evaluation):
    return _info(
        ev,
        "respiratory_depression_risk",
        f"Respiratory disease: pulse oximetry throughout {ev.drug}",
        "Respiratory depression is a labelled risk of ketamine/esketamine; with lung disease "
        "or sleep apnoea monitor oxygen saturation throughout and lower the threshold for "
        "anaesthesia input.",
    )


@rule(
    "R43",
    title="Age 18–24: suicidality warning",
    applies=Scope.ALL,
    severity="info",
    source="S4, S6",
    reads=("Patient.birthDate",),
    trigger="age 18 to 24 at the order date",
)
def age_18_to_24(ev: Evaluation):
    age = ev.record.age_on(ev.order_time)
    if age is None or not 18 <= age <= 24:
        return None
    return finding(
        "info",
        f"Age {age}: monitor for emergent suicidality on {ev.drug}",
        "Antidepressants carry a class warning of increased suicidal thoughts and behaviours "
        "in patients under 25: monitor for worsening and emergent suicidality.",
        (Fact(f"Patient/{ev.record.patient_id}", value=f"age {age} at the order date"),),
    )


@rule(
    "R44",
    title="Hypertensive encephalopathy history",
    applies=Scope.ALL,
    severity="info",
    source="S4",
    reads=("Condition",),
    trigger="hypertensive encephalopathy (I67.4 or text), history counts",
)
def hypertensive_encephalopathy_history(ev: Evaluation):
    hits = found(ev, "hypertensive_encephalopathy", history_counts=True)
    if not hits:
        return None
    return finding(
        "info",
        f"Hypertensive encephalopathy on record: monitor BP closely with {ev.drug}",
        "A history of hypertensive encephalopathy: ketamine/esketamine raise blood pressure. "
        "Monitor blood pressure more intensively before, during and after the session.",
        facts(hits),
    )


@rule(
    "R40",
    title="Diagnosis outside the evidence base",
    applies=Scope.ALL,
    severity="info / warning (bipolar)",
    source="S13; S1 [E]",
    reads=("Condition",),
    trigger="no major depression diagnosis (F32.0–F32.5, F32.9, F33.*); bipolar only → warning",
)
def diagnosis_outside_the_evidence_base(ev: Evaluation):
    if ev.missing("conditions") or found(ev, "major_depression", history_counts=True):
        return None
    bipolar = found(ev, "bipolar", history_counts=True)
    if bipolar:
        return finding(
            "warning",
            f"Bipolar disorder without major depression: {ev.drug} is "
            "off-label and less studied here",
            "The evidence and the esketamine indication are for major depressive disorder; "
            "bipolar depression is less studied and carries a risk of switching to mania.",
            facts(bipolar),
        )
    return finding(
        "info",
        f"No major depression diagnosis recorded for this {ev.drug} order",
        "The evidence base and the esketamine indication are for major depressive disorder. "
        "Record the diagnosis the treatment is for.",
        (Fact("Condition", value="no F32.0–F32.5, F32.9 or F33.* (or SNOMED equivalent)"),),
    )
