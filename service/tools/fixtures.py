"""Fixtures: hook requests stored with dates anchored at a fixed instant, shifted to "now" when
loaded so they never go stale. One helper, used by the tests and the CLI.

A fixture request marks its anchor in the spec's reserved ``extension`` member:
``"extension": {"ketamine-cds.fixture-anchor": "2025-06-01T10:00:00Z"}``. Every FHIR dateTime
and instant in it moves by exactly (now − anchor), so "12 hours ago" stays 12 hours ago
whatever the time of day; dates move by whole days (ages stay the same).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from service.config import read

ANCHOR_KEY = "ketamine-cds.fixture-anchor"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
#: the fixtures shipped in the package (package data: ``service/fixtures`` is a link to the
#: checkout's ``fixtures/``, copied into the wheel), so an installed copy can check itself
ROOT = Path(__file__).resolve().parents[1] / "fixtures"


def fixtures_dir() -> Path:
    """KCDS_FIXTURES_DIR, else the fixtures shipped in the package."""
    return Path(read("fixtures_dir") or ROOT)


def shift(value: Any, delta: timedelta, days: int) -> Any:
    """Every dateTime/instant in ``value`` moved by ``delta``, every date by ``days``."""
    if isinstance(value, dict):
        return {k: shift(v, delta, days) for k, v in value.items()}
    if isinstance(value, list):
        return [shift(v, delta, days) for v in value]
    if isinstance(value, str):
        if DATE.match(value):
            return (datetime.fromisoformat(value) + timedelta(days=days)).date().isoformat()
        if DATETIME.match(value):
            moved = (datetime.fromisoformat(value) + delta).isoformat()
            return moved.replace("+00:00", "Z") if value.endswith("Z") else moved
    return value


def dated(request: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The request with its dates moved from its anchor to ``now`` (default: the clock)."""
    anchor = (request.get("extension") or {}).get(ANCHOR_KEY)
    if not anchor:
        return request
    start = datetime.fromisoformat(anchor)
    now = now or datetime.now(UTC)
    return shift(request, now - start, (now.date() - start.date()).days)


def load_request(path: Path | str, now: datetime | None = None) -> dict[str, Any]:
    return dated(orjson.loads(Path(path).read_bytes()), now)


def names() -> list[str]:
    return sorted(p.parent.name for p in fixtures_dir().glob("*/request.json"))


def load(name: str, now: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dated request, expectations) of one fixture."""
    folder = fixtures_dir() / name
    if not (folder / "request.json").exists():
        raise FileNotFoundError(f"no fixture named {name!r} in {fixtures_dir()}")
    expected = orjson.loads((folder / "expected.json").read_bytes())
    return load_request(folder / "request.json", now), expected


def card_rules(response: dict[str, Any]) -> dict[str, str]:
    """rule id → indicator of the card that names it, over a response's cards."""
    out: dict[str, str] = {}
    for card in response.get("cards", ()):
        for rule_id in (card.get("extension") or {}).get("ketamine-cds.rules", ()):
            out.setdefault(rule_id, card["indicator"])
    return out


def compare(response: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Differences between a response and a fixture's expectations (empty: it matches)."""
    fired = card_rules(response)
    problems = []
    if "rules" in expected and sorted(fired) != sorted(expected["rules"]):
        problems.append(f"rules {sorted(fired)} != expected {sorted(expected['rules'])}")
    for rule_id in expected.get("must", ()):
        if rule_id not in fired:
            problems.append(f"{rule_id} did not fire")
    for rule_id in expected.get("must_not", ()):
        if rule_id in fired:
            problems.append(f"{rule_id} fired but must not")
    for rule_id, indicator in (expected.get("indicators") or {}).items():
        if rule_id in fired and fired[rule_id] != indicator:
            problems.append(f"{rule_id} is {fired[rule_id]}, expected {indicator}")
    if "cards" in expected and len(response.get("cards", ())) != expected["cards"]:
        problems.append(f"{len(response.get('cards', ()))} cards, expected {expected['cards']}")
    return problems
