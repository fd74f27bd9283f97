"""The three ketamine services (spec §1) and their prefetch (spec §3)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from cds_hooks.models import Response
from cds_hooks.service import HookRequest, ServiceDefinition

from .cards import RenderContext, render
from .orders import has_ketamine, ketamine_orders
from .policy import Policy
from .prefetch import templates
from .record import PatientRecord, RecordBuilder, ketamine_kind
from .rules import Evaluation, Finding, evaluate
from .rules.dosing import mg_per_kg
from .snooze import SnoozeSource, look_up
from .summary import CardSummary, EvaluationSummary, FindingSummary, OrderSummary
from .terminology import Terminology

Clock = Callable[[], datetime]
#: (the hook request, the evaluation summary) → None; the registry plugs in here
Recorder = Callable[[HookRequest, EvaluationSummary], None]


class KetamineCDS:
    """Builds the record, runs the rules and renders the cards for each hook."""

    def __init__(
        self,
        terminology: Terminology,
        policy: Policy,
        clock: Clock,
        recorder: Recorder | None = None,
        snoozes: SnoozeSource | None = None,
        course_view_url: str | None = None,
    ):
        self.terminology = terminology
        self.policy = policy
        self.clock = clock  # injected: the engine never reads the time itself
        self.recorder = recorder
        self.snoozes = snoozes  # the registry's snooze overrides (spec §7 v2); None: off
        self.course_view_url = course_view_url  # the SMART course view's launch URL, if any
        self.builder = RecordBuilder(terminology, policy.rating_scale_loinc, policy.bp_pair_minutes)
        self.prefetch = templates(sorted(self.builder.observation_codes))

    # -- services -------------------------------------------------------------------------

    def services(self) -> list[ServiceDefinition]:
        common = {"prefetch": self.prefetch, "required_keys": frozenset({"patient"})}
        return [
            ServiceDefinition(
                id="ketamine-order-select",
                hook="order-select",
                title="Ketamine/esketamine order check",
                description="When a ketamine or esketamine order is selected: "
                "contraindications, cautions, interactions, and dose, route and "
                "regimen problems.",
                handler=self.order_hook,
                relevant=self._selected_ketamine,
                usage_requirements="FHIR R4. Send the prefetch keys, or fhirServer with "
                "fhirAuthorization so the service can read them.",
                **common,
            ),
            ServiceDefinition(
                id="ketamine-order-sign",
                hook="order-sign",
                title="Ketamine/esketamine order safety and monitoring",
                description="When a ketamine or esketamine order is signed: everything the "
                "order-select check does, plus missing pre-treatment data and the "
                "monitoring plan with orderable monitoring.",
                handler=self.order_hook,
                relevant=self._any_ketamine,
                usage_requirements="FHIR R4. Send the prefetch keys, or fhirServer with "
                "fhirAuthorization so the service can read them.",
                **common,
            ),
            ServiceDefinition(
                id="ketamine-patient-view",
                hook="patient-view",
                title="Ketamine/esketamine course surveillance",
                description="When the record of a patient with a ketamine or esketamine course "
                "is opened: course summary, overdue reassessment, regimen beyond "
                "the evidence, bladder watch.",
                handler=self.patient_view,
                usage_requirements="FHIR R4 prefetch or fhirServer access.",
                **common,
            ),
        ]

    def _selected_ketamine(self, context: dict[str, Any]) -> bool:
        return has_ketamine(
            self.terminology, context.get("draftOrders"), set(context.get("selections") or ())
        )

    def _any_ketamine(self, context: dict[str, Any]) -> bool:
        return has_ketamine(self.terminology, context.get("draftOrders"), None)

    # -- handlers -------------------------------------------------------------------------

    def patient_record(self, req: HookRequest) -> PatientRecord:
        """The patient's record as the rules read it: the request's prefetch (a key that is
        unavailable or incomplete is a gap, with its reason) and the Medications contained in
        its draft orders. Used by the hooks and by the SMART course view."""
        gaps = {
            key: result.reason or "unavailable"
            for key, result in req.prefetch.items()
            if not result.available or not result.complete
        }
        resources = {key: result.resources for key, result in req.prefetch.items()}
        drafts = [
            e.get("resource")
            for e in (req.context.get("draftOrders") or {}).get("entry") or ()
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Medication"
        ]
        return self.builder.build(req.context["patientId"], resources, gaps, drafts)

    def order_hook(self, req: HookRequest) -> Response:
        only = set(req.context["selections"]) if req.hook == "order-select" else None
        orders = ketamine_orders(self.terminology, req.context["draftOrders"], only)
        if not orders:
            return Response()
        record = self.patient_record(req)
        now = self.clock()
        findings: list[Finding] = []
        summaries = []
        for order in orders:
            ev = Evaluation(record, order, self.policy, self.terminology, now, req.hook)
            findings.extend(evaluate(ev))
            summaries.append(OrderSummary(order.drug, order.route, order.dose_mg, mg_per_kg(ev)))
        return self._respond(
            req,
            findings,
            {o.ref: o.resource for o in orders},
            summaries,
            {o.ref: o.drug for o in orders},
            now,
        )

    def patient_view(self, req: HookRequest) -> Response:
        record = self.patient_record(req)
        now = self.clock()
        on_course = bool(record.administrations) or any(
            m.active and ketamine_kind(self.terminology, m.concept) for m in record.medications
        )
        if not on_course:
            return Response()
        ev = Evaluation(record, None, self.policy, self.terminology, now, req.hook)
        return self._respond(req, evaluate(ev), {}, [], {None: ev.drug}, now)

    def _respond(
        self,
        req: HookRequest,
        findings: list[Finding],
        orders: dict[str, dict[str, Any]],
        order_summaries: list[OrderSummary],
        drugs: dict[str | None, str],
        now: datetime,
    ) -> Response:
        patient_id = req.context["patientId"]
        ctx = RenderContext(
            patient_id,
            req.base_url,
            self.policy.version,
            drugs=drugs,
            # only a warning can be snoozed: a response without one asks the registry nothing
            snoozed=look_up(self.snoozes, patient_id, set(drugs.values()), now)
            if any(f.severity == "warning" for f in findings)
            else {},
            snooze_offered=self.snoozes is not None,
            course_view_url=self.course_view_url,
        )
        cards = render(findings, orders, ctx)
        req.log_fields["rules"] = sorted({f.rule_id for f in findings})
        req.log_fields["policy"] = self.policy.version
        if self.recorder is not None:
            summary = EvaluationSummary(
                policy_version=self.policy.version,
                orders=tuple(order_summaries),
                findings=tuple(FindingSummary(f.rule_id, f.severity) for f in findings),
                cards=tuple(
                    CardSummary(
                        c.uuid,
                        tuple(c.extension["ketamine-cds.rules"]),
                        c.indicator,
                        c.extension["ketamine-cds.drug"],
                    )
                    for c in cards
                ),
            )
            self.recorder(req, summary)
        return Response(tuple(cards))
