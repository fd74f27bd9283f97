"""The engine's side of snooze (spec §7 v2), pure: which snoozes still run at the evaluation's
clock, and that a source that fails (or none) means no snooze, never a failed answer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from service.engine.overrides import catalogue
from service.engine.snooze import FEEDBACK_LAG, SnoozeOverride, active, add_months, look_up

NOW = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


class Remembered:
    """A SnoozeSource that holds its overrides in memory and records what it was asked."""

    def __init__(self, *overrides: SnoozeOverride):
        self.held = overrides
        self.asked: list[tuple] = []

    def overrides(self, patient_id, drugs, system, codes, since):
        self.asked.append((patient_id, tuple(drugs), system, tuple(codes), since))
        return [o for o in self.held if o.drug in drugs and o.code in codes]


class Down:
    def overrides(self, patient_id, drugs, system, codes, since):
        raise ConnectionError("registry down")


@pytest.mark.parametrize(
    "start, months, end",
    [
        ((2026, 1, 31), 1, (2026, 2, 28)),  # clamped to the month's end
        ((2024, 1, 31), 1, (2024, 2, 29)),
        ((2026, 11, 29), 3, (2027, 2, 28)),
        ((2026, 12, 5), 1, (2027, 1, 5)),
        ((2026, 1, 15), -1, (2025, 12, 15)),
    ],
)
def test_months_are_calendar_months(start, months, end):
    assert add_months(datetime(*start, 10, tzinfo=UTC), months) == datetime(*end, 10, tzinfo=UTC)


def test_only_running_snoozes_count_and_the_latest_end_wins():
    overrides = [
        SnoozeOverride("R20", "ketamine", "snooze-1-month", NOW - timedelta(days=10)),
        SnoozeOverride("R20", "ketamine", "snooze-3-months", NOW - timedelta(days=20)),
        SnoozeOverride("R05", "ketamine", "snooze-1-month", NOW - timedelta(days=40)),  # over
        SnoozeOverride("R07", "ketamine", "benefit-outweighs-risk", NOW),  # not a snooze
    ]
    assert active(overrides, NOW) == {("ketamine", "R20"): add_months(NOW - timedelta(days=20), 3)}


def test_the_source_is_asked_once_for_the_patient_drugs_and_snooze_codes():
    source = Remembered(SnoozeOverride("R20", "esketamine", "snooze-1-month", NOW))
    assert look_up(source, "p1", {"esketamine"}, NOW) == {("esketamine", "R20"): add_months(NOW, 1)}
    reasons = catalogue()
    [(patient, drugs, system, codes, since)] = source.asked
    assert (patient, drugs, system) == ("p1", ("esketamine",), reasons.system)
    assert set(codes) == {s.coding.code for s in reasons.snooze}
    assert since == add_months(NOW, -reasons.longest_snooze_months) - FEEDBACK_LAG


def test_no_source_or_no_drug_asks_nothing():
    source = Remembered()
    assert look_up(None, "p1", {"ketamine"}, NOW) == {}
    assert look_up(source, "p1", set(), NOW) == {}
    assert source.asked == []


def test_a_source_that_fails_means_no_snooze_and_a_log_line_without_patient_data(caplog):
    with caplog.at_level(logging.WARNING, "service.engine.snooze"):
        assert look_up(Down(), "patient-123", {"ketamine"}, NOW) == {}
    [record] = caplog.records
    assert "snooze not applied" in record.getMessage()
    assert record.fields == {"error_type": "ConnectionError"}
    assert "patient-123" not in caplog.text
