"""Fixtures: the committed files are what build.py writes, and dates move to today."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson

from service.tools.fixtures import ROOT, compare, dated, load, names, shift


def test_committed_fixtures_are_current(tmp_path):
    # build.py writes next to itself: run a copy and compare with the committed files
    for name in ("builder.py", "catalogue.py", "build.py"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "synthea").symlink_to(ROOT / "synthea")
    subprocess.run([sys.executable, str(tmp_path / "build.py")], check=True, capture_output=True)
    for name in names():
        for part in ("request.json", "expected.json"):
            built = (tmp_path / name / part).read_bytes()
            assert built == (ROOT / name / part).read_bytes(), f"{name}/{part} is stale"


def test_dates_shift_to_now_keeping_intervals():
    body = {
        "extension": {"ketamine-cds.fixture-anchor": "2025-06-01T10:00:00Z"},
        "a": "2025-06-01T10:00:00Z",
        "b": ["2025-05-25"],
        "c": "not-a-date",
        "d": "2025-05-31T22:00:00.500+02:00",
    }
    moved = dated(body, now=datetime(2026, 1, 10, 3, 30, tzinfo=UTC))
    assert moved["a"] == "2026-01-10T03:30:00Z"
    assert moved["b"] == ["2026-01-03"]
    assert moved["c"] == "not-a-date"
    assert moved["d"] == "2026-01-09T15:30:00.500000+02:00"  # 12 h before the anchor, still


def test_requests_without_anchor_are_left_alone():
    body = {"a": "2025-06-01"}
    assert dated(body, now=datetime(2030, 1, 1, tzinfo=UTC)) == body
    assert shift({"x": ["2020-02-28"]}, timedelta(days=1), 1) == {"x": ["2020-02-29"]}


def test_every_fixture_has_expectations():
    for name in names():
        request, expected = load(name)
        assert expected["service"].startswith("ketamine-")
        assert request["extension"]["ketamine-cds.fixture-anchor"]


def test_compare_reports_each_difference():
    response = {"cards": [{"indicator": "warning", "extension": {"ketamine-cds.rules": ["R08"]}}]}
    assert compare(response, {"must": ["R08"], "cards": 1}) == []
    problems = compare(
        response,
        {"rules": ["R09"], "must_not": ["R08"], "indicators": {"R08": "critical"}, "cards": 2},
    )
    assert len(problems) == 4


def test_loaded_fixture_json_round_trips():
    request, _ = load("clean-iv-ketamine-sign")
    assert orjson.loads(orjson.dumps(request)) == request
