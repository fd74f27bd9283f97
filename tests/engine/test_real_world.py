"""The real-world set (issue 12): 19 Synthea patients × {IV ketamine 0.5 mg/kg over 40 min,
Spravato 56 mg}, converted with the project's converter, checked against expectations
written from reading each record (fixtures/real-world/expected.json)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest

from cds_hooks.service import ServiceCatalog, handle
from cds_hooks.validation import validator
from service.config import Settings
from service.web.app import build_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))
from real_world import expectations, names, requests

EXPECTED = expectations()["patients"]
ORDERS = ("iv", "spravato")


def evaluate(name: str) -> dict[str, list[dict]]:
    now, bodies = requests(name)
    clock = datetime.fromisoformat(now)
    catalog = ServiceCatalog(build_engine(Settings(), clock=lambda: clock).services())
    out = {}
    for kind, body in bodies.items():
        _, response = handle(catalog.get("ketamine-order-sign"), body, None, "http://cds.test")
        answer = response.to_json()
        assert not list(validator("response.json").iter_errors(answer))
        out[kind] = answer["cards"]
    return out


def test_every_sample_patient_has_expectations_for_both_orders():
    assert len(names()) == 19
    assert sorted(EXPECTED) == names()
    for name, expected in EXPECTED.items():
        assert expected["record"] and set(expected) == {"record", *ORDERS}, name


@pytest.mark.parametrize("name", names())
def test_patient(name):
    answers = evaluate(name)
    for kind in ORDERS:
        cards, expected = answers[kind], EXPECTED[name][kind]
        serious = {
            c["extension"]["ketamine-cds.rules"][0]: c["indicator"]
            for c in cards
            if c["indicator"] != "info"
        }
        assert serious == expected["serious"], (name, kind)
        fired = {r for c in cards for r in c["extension"]["ketamine-cds.rules"]}
        assert not fired & set(expected["must_not"]), (name, kind)
        assert ("R38" if kind == "iv" else "R37") in fired  # the plan of the drug ordered


def test_alert_burden():
    """Warning and critical cards per order, as the expectations fix them (issue 12 target:
    at most 1.0; see the closing note for why this set stays above it)."""
    orders = [EXPECTED[name][kind] for name in names() for kind in ORDERS]
    burden = sum(len(o["serious"]) for o in orders) / len(orders)
    assert burden == pytest.approx(63 / 38)
