"""Item 2 of issue 16: the course card (patient-view) and the plan card (order-sign) carry a
``smart`` link to the course view when SMART is configured, and no card does otherwise."""

from __future__ import annotations

import pytest

from cds_hooks.service import ServiceCatalog, handle
from service.config import Settings
from service.tools.convert import ketamine_order, to_hook_request
from service.web.app import build_engine

from .conftest import SESSION_KEY, course_patient

PUBLIC = "https://cds.example.org"
SMART = {
    "KCDS_AUTH": "off",
    "KCDS_PUBLIC_URL": PUBLIC,
    "KCDS_SMART_CLIENT_ID": "kcds-course-view",
    "KCDS_SMART_ISSUERS": "https://ehr.example.org/fhir",
    "KCDS_SESSION_KEY": SESSION_KEY,
}


def cards(env: dict[str, str], service: str) -> list[dict]:
    engine = build_engine(Settings.from_env(env))
    resources = course_patient()
    if service == "ketamine-patient-view":
        body = to_hook_request(resources, hook="patient-view")
    else:
        body = to_hook_request(resources, hook="order-sign", orders=[ketamine_order(35, "iv", 40)])
    _, response = handle(ServiceCatalog(engine.services()).get(service), body, None, PUBLIC)
    return response.to_json()["cards"]


def smart_links(card: dict) -> list[dict]:
    return [link for link in card.get("links", ()) if link.get("type") == "smart"]


@pytest.mark.parametrize(
    ("service", "anchor"), [("ketamine-patient-view", "P01"), ("ketamine-order-sign", "R38")]
)
def test_the_course_and_plan_cards_link_to_the_course_view_when_smart_is_on(service, anchor):
    found = cards(SMART, service)
    linked = [c for c in found if smart_links(c)]
    assert len(linked) == 1
    assert linked[0]["extension"]["ketamine-cds.rules"][0] == anchor
    assert smart_links(linked[0]) == [
        {
            "label": "Open the course view",
            "url": f"{PUBLIC}/smart/launch",
            "type": "smart",
            "appContext": "course-view",
        }
    ]


@pytest.mark.parametrize("service", ["ketamine-patient-view", "ketamine-order-sign"])
def test_no_card_links_to_the_course_view_when_smart_is_off(service):
    found = cards({"KCDS_AUTH": "off", "KCDS_PUBLIC_URL": PUBLIC}, service)
    assert found and not any(smart_links(c) for c in found)
