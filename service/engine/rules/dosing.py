"""Dose and route checks (ketamine-rules.md §5, R06, R25–R28). Dose arithmetic in mg/kg with
explicit units: mg and g are accepted; any other unit is reported, never guessed."""

from __future__ import annotations

from service.engine.orders import UNRECOGNISED
from service.engine.record import Fact, Observation, weight_kg
from service.engine.scope import Scope

from .base import Evaluation, SuggestionSpec, finding, rule
from .conditions import facts, found


def latest_weight(ev: Evaluation) -> tuple[float | None, Observation] | None:
    """The latest body weight in the window: (kg, observation); kg is None when its unit is
    not one we convert (kg, g, lb)."""
    obs = ev.record.latest(
        ev.terminology.loinc_codes("body_weight"), since=ev.days_ago(ev.policy.weight_window_days)
    )
    if obs is None:
        return None
    return weight_kg(obs.quantity), obs


def mg_per_kg(ev: Evaluation) -> float | None:
    """The order's dose per kg: as written, or its mg over the latest usable weight."""
    order = ev.order
    if order is None or order.dose_mg_per_kg is not None:
        return order.dose_mg_per_kg if order else None
    weight = latest_weight(ev)
    if order.dose_mg is None or weight is None or weight[0] is None:
        return None
    return order.dose_mg / weight[0]


def _order_fact(ev: Evaluation, value: str) -> Fact:
    return Fact(ev.order.ref, ev.order.code, ev.order.authored, value)


@rule(
    "R06",
    title="Weight basis in obesity",
    applies=Scope.KIV,
    severity="info",
    source="site policy [U]",
    reads=("Observation 39156-5", "Condition Z68.3*/Z68.4*"),
    thresholds=("bmi_weight_basis", "weight_window_days"),
    trigger="BMI at or above the policy threshold (observation, or a BMI 30+ diagnosis when "
    "the threshold is 30 or lower)",
)
def weight_basis_in_obesity(ev: Evaluation):
    limit = ev.policy.bmi_weight_basis
    bmi = ev.record.latest(
        ev.terminology.loinc_codes("bmi"), since=ev.days_ago(ev.policy.weight_window_days)
    )
    hits: tuple[Fact, ...] = ()
    if bmi and bmi.quantity and bmi.quantity.value >= limit:
        hits = (bmi.fact(),)
    elif bmi is None and limit <= 30:  # Z68.3*/Z68.4* guarantee a BMI of 30 or more
        hits = facts(found(ev, "obesity_bmi_dx"))
    if not hits:
        return None
    weight = latest_weight(ev)
    used = (
        f"The dose check used the latest recorded (actual) body weight, {weight[0]:g} kg."
        if weight and weight[0]
        else "No usable weight is recorded."
    )
    return finding(
        "info",
        f"BMI ≥ {limit:g}: confirm which weight the {ev.drug} dose uses",
        "Whether to dose by actual or ideal body weight in obesity is not settled in the "
        f"evidence (site policy). {used}",
        hits,
    )


@rule(
    "R25",
    title="Ketamine dose per kg",
    applies=Scope.K,
    severity="warning / critical",
    source="S3; S16",
    reads=("MedicationRequest.dosageInstruction", "Observation 29463-7"),
    thresholds=(
        "dose_target_mg_per_kg",
        "dose_tolerance",
        "dose_anaesthetic_mg_per_kg",
        "bolus_minutes",
        "dose_critical_mg_per_kg",
        "im_dose_target_mg_per_kg",
        "esketamine_iv_target_mg_per_kg",
        "weight_window_days",
    ),
    trigger="IV ketamine: dose ÷ latest weight outside target ± tolerance (warning); critical "
    "only at or above the anaesthetic dose given faster than the bolus time (or no time "
    "stated), or at or above the critical dose; a dose that cannot be read (warning). IM "
    "ketamine and injected esketamine: mg/kg shown, checked only against a site target",
)
def ketamine_dose_per_kg(ev: Evaluation):
    p, order = ev.policy, ev.order
    if order.route not in ("iv", None, UNRECOGNISED, "im"):
        return None  # oral, nasal, sublingual: no per-kg regimen to check against
    if order.dose is None:
        if ev.hook != "order-sign":
            return None  # order-select: details may still be missing
        return finding(
            "warning",
            f"No dose on the {ev.drug} order: cannot check mg/kg",
            "The order carries no doseQuantity, so the weight-based dose could not "
            "be checked. State the dose in mg.",
            (_order_fact(ev, "no dose"),),
        )
    if order.dose_mg_per_kg is None and order.dose_mg is None:
        return finding(
            "warning",
            f"Dose unit “{order.dose.unit}” not understood: {ev.drug} dose not checked"[:139],
            "Only mg, g or mg/kg doses are checked; other units are not converted by guesswork. "
            "Write the dose in mg.",
            (_order_fact(ev, f"dose {order.dose.value:g} {order.dose.unit}"),),
        )
    per_kg = mg_per_kg(ev)
    if per_kg is None:
        return None  # R34 says the weight is missing or unusable
    weight = latest_weight(ev)
    found_facts = [_order_fact(ev, f"dose {order.dose.value:g} {order.dose.unit}")]
    if weight and weight[0]:
        found_facts.append(weight[1].fact())
    if order.drug == "esketamine" or order.route == "im":
        target = (
            p.esketamine_iv_target_mg_per_kg
            if order.drug == "esketamine"
            else (p.im_dose_target_mg_per_kg)
        )
        return _site_target(ev, per_kg, target, found_facts)
    low = p.dose_target_mg_per_kg * (1 - p.dose_tolerance)
    high = p.dose_target_mg_per_kg * (1 + p.dose_tolerance)
    if low <= per_kg <= high:
        return None
    suggestions = ()
    if weight and weight[0] and order.dose_mg_per_kg is None:
        dose = round(p.dose_target_mg_per_kg * weight[0], 1)
        suggestions = (
            SuggestionSpec(
                "update-dose",
                f"Change the dose to {dose:g} mg ({p.dose_target_mg_per_kg:g} mg/kg)",
                dose_mg=dose,
            ),
        )
    fast = order.minutes is None or order.minutes < p.bolus_minutes
    if per_kg >= p.dose_critical_mg_per_kg or (per_kg >= p.dose_anaesthetic_mg_per_kg and fast):
        given = (
            "with no infusion time stated"
            if order.minutes is None
            else (f"over {order.minutes:g} min")
        )
        return finding(
            "critical",
            f"IV ketamine {per_kg:.2f} mg/kg {given}: anaesthetic range"[:139],
            f"Anaesthetic induction starts at {p.dose_anaesthetic_mg_per_kg:g} mg/kg IV given "
            f"quickly (site policy: under {p.bolus_minutes:g} min, or at or above "
            f"{p.dose_critical_mg_per_kg:g} mg/kg at any rate). The studied antidepressant "
            f"dose is {p.dose_target_mg_per_kg:g} mg/kg over 40 minutes. Check the dose, the "
            "units and the infusion time.",
            found_facts,
            suggestions,
        )
    return finding(
        "warning",
        f"IV ketamine {per_kg:.2f} mg/kg: studied antidepressant dose is "
        f"{p.dose_target_mg_per_kg:g} mg/kg",
        f"Most published antidepressant reports used {p.dose_target_mg_per_kg:g} mg/kg over 40 "
        f"minutes (accepted here: {low:.2f}–{high:.2f} mg/kg); higher doses up to 1 mg/kg over "
        "40 minutes were studied arms. Other doses are less studied; tell the patient as part "
        "of consent if you keep this dose.",
        found_facts,
        suggestions,
    )


def _site_target(ev: Evaluation, per_kg: float, target: float | None, found_facts: list[Fact]):
    """IM ketamine and injected esketamine: no sourced target; the dose per kg is shown, and
    checked only against a target the site set."""
    if target is None:
        return finding(
            "info",
            f"{ev.drug}: {per_kg:.2f} mg/kg (no site target set for this route)"[:139],
            "There is no sourced antidepressant dose for this drug and route; the dose per kg "
            "is shown for the prescriber's judgement (site policy may set a target).",
            found_facts,
        )
    p = ev.policy
    if target * (1 - p.dose_tolerance) <= per_kg <= target * (1 + p.dose_tolerance):
        return None
    return finding(
        "warning",
        f"{ev.drug}: {per_kg:.2f} mg/kg, site target {target:g} mg/kg"[:139],
        f"The site's target for this drug and route is {target:g} mg/kg ± "
        f"{p.dose_tolerance:.0%} (site policy).",
        found_facts,
    )


@rule(
    "R26",
    title="IV ketamine infusion time",
    applies=Scope.KIV,
    severity="warning",
    source="S3; S1 [E]",
    reads=("MedicationRequest.dosageInstruction",),
    thresholds=("infusion_min_minutes", "infusion_max_minutes"),
    trigger="infusion shorter or longer than the policy window, from the timing duration, the "
    "rate (mg/time with the dose, mL/time with the volume) or the dosage text; not stated on "
    "order-sign",
)
def iv_ketamine_infusion_time(ev: Evaluation):
    p, minutes = ev.policy, ev.order.minutes
    if minutes is None:
        if ev.hook != "order-sign":
            return None
        return finding(
            "warning",
            f"Infusion time not stated on the {ev.drug} order",
            "The studied regimen is an infusion over 40 minutes; the order states no duration "
            "(timing.repeat.duration) or 'over N minutes'. State it.",
            (_order_fact(ev, "no infusion duration"),),
        )
    if p.infusion_min_minutes <= minutes <= p.infusion_max_minutes:
        return None
    if minutes < p.infusion_min_minutes:
        summary = f"IV ketamine over {minutes:g} min: shorter than the studied 40-minute infusion"
        why = "Faster infusions give higher peak levels, more dissociation and blood pressure rise."
    else:
        summary = f"IV ketamine over {minutes:g} min: prolonged infusion, risks poorly understood"
        why = "Long infusions (up to days) carry poorly understood risks (founding editorial)."
    return finding(
        "warning",
        summary,
        f"Most antidepressant studies infused over 40 minutes; this site accepts "
        f"{p.infusion_min_minutes:g}–{p.infusion_max_minutes:g} minutes. {why}",
        (_order_fact(ev, f"infusion over {minutes:g} min"),),
    )


@rule(
    "R27",
    title="Ketamine by a route other than IV",
    applies=Scope.K,
    severity="info",
    source="S1 [E]; S31",
    reads=("MedicationRequest.dosageInstruction.route",),
    trigger="ketamine route not intravenous (named as recognised from code or text), no route, "
    "or a route code not recognised (checked as IV)",
)
def ketamine_by_a_route_other_than_iv(ev: Evaluation):
    route = ev.order.route
    if route == "iv":
        return None
    if route is None:
        return finding(
            "info",
            "No route on the ketamine order: checked as IV",
            "The order states no route; the dose was checked as an IV dose. State the route.",
            (_order_fact(ev, "route not stated"),),
        )
    if route == UNRECOGNISED:
        return finding(
            "info",
            f"{ev.order.route_text} not recognised: checked as IV"[:139],
            "The route's code is not one the service reads (SNOMED CT route codes, HL7 v3 "
            "RouteOfAdministration); the dose was checked as an IV dose. Check the route.",
            (_order_fact(ev, ev.order.route_text or "route code"),),
        )
    return finding(
        "info",
        f"{ev.drug} by the {route} route: less studied than IV for depression"[:139],
        "IM, intranasal (compounded), oral and sublingual ketamine are understudied for "
        "depression; dose equivalence with IV is uncertain.",
        (_order_fact(ev, f"route {ev.order.route_text or route}"),),
    )


@rule(
    "R28",
    title="Esketamine dose",
    applies=Scope.E,
    severity="warning",
    source="S7, S13",
    reads=("MedicationRequest", "MedicationAdministration", "Condition"),
    thresholds=("mdsi_window_days", "allow_28mg_geriatric", "esketamine_elderly_age"),
    trigger="dose not 56 or 84 mg; first dose not 56 mg or 84 mg with no prior 56 mg, unless "
    "MDSI (suicidal ideation/behaviour in the window, or as the order's reason: 84 mg from day "
    "1 is the label regimen); 28 mg not a US-labelled dose unless the site allows it at 65+",
)
def esketamine_dose(ev: Evaluation):
    order, p = ev.order, ev.policy
    if order.dose is None:
        return (
            None
            if ev.hook != "order-sign"
            else finding(
                "warning",
                "No dose on the Spravato order",
                "The order carries no dose: state 56 or 84 mg.",
                (_order_fact(ev, "no dose"),),
            )
        )
    mg = order.dose_mg
    prior = [a for a in ev.record.administrations if a.drug == "esketamine" and a.when < ev.now]
    age = ev.record.age_on(ev.order_time)
    elderly = age is not None and age >= p.esketamine_elderly_age
    mdsi = found(ev, "suicidal_ideation_attempt", since=ev.days_ago(p.mdsi_window_days))
    mdsi_reason = any(ev.terminology.member(r, "suicidal_ideation_attempt") for r in order.reasons)
    problem = None
    if mg is None:
        problem = f"dose unit “{order.dose.unit}” not understood (write mg)"
    elif mg == 28:
        if not (elderly and p.allow_28mg_geriatric):
            problem = (
                "28 mg is not a US-labelled dose (some non-US labels start patients ≥ 65 at 28 mg)"
            )
    elif mg not in (28, 56, 84):
        problem = f"{mg:g} mg is not a labelled dose (56 or 84 mg)"
    elif mdsi or mdsi_reason:
        problem = None  # MDSI: 84 mg from day 1 is the label regimen
    elif not prior and mg != 56:
        problem = f"the first dose should be 56 mg, not {mg:g} mg"
    elif mg == 84 and not any(a.dose_mg == 56 for a in prior):
        problem = "84 mg is used only after a 56 mg start"
    if problem is None:
        return None
    return finding(
        "warning",
        f"Spravato dose: {problem}"[:139],
        "Label schedule (TRD): day 1 56 mg, then 56 or 84 mg; one device is 28 mg. With "
        "suicidal ideation or behaviour (MDSI) 84 mg from day 1. Adjust on efficacy and "
        "tolerability of the previous dose.",
        (
            _order_fact(ev, f"dose {order.dose.value:g} {order.dose.unit}"),
            *(
                Fact(a.ref, None, a.when, f"{a.dose_mg:g} mg" if a.dose_mg else "dose not recorded")
                for a in prior[-3:]
            ),
        ),
    )
