"""The response model: spec serialisation rules and the 3.0-ballot invariants."""

import json

import pytest

from cds_hooks.models import Action, Card, Coding, Link, Response, Source, Suggestion
from cds_hooks.validation import validator
from tests.conftest import CONFORMANCE


def test_optional_fields_are_omitted_not_null():
    card = Card(summary="s", indicator="info", source=Source(label="x"))
    assert card.to_json() == {"summary": "s", "indicator": "info", "source": {"label": "x"}}
    assert Response().to_json() == {"cards": []}


def test_summary_must_stay_under_140_characters():
    with pytest.raises(ValueError, match="140"):
        Card(summary="x" * 140, indicator="info", source=Source(label="x"))
    Card(summary="x" * 139, indicator="info", source=Source(label="x"))


def test_suggestions_require_selection_behavior():
    with pytest.raises(ValueError, match="selectionBehavior"):
        Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            suggestions=(Suggestion(label="do"),),
        )


def test_override_reasons_require_display():
    with pytest.raises(ValueError, match="display"):
        Card(
            summary="s",
            indicator="warning",
            source=Source(label="x"),
            override_reasons=(Coding("c", "urn:x"),),
        )


def test_full_card_serialises_with_spec_names():
    card = Card(
        uuid="u1",
        summary="s",
        indicator="critical",
        detail="d",
        source=Source("l", "https://x", topic=Coding("R01", "urn:r", "t")),
        suggestions=(
            Suggestion(
                "remove",
                uuid="s1",
                actions=(Action("delete", "remove it", resource_id="MedicationRequest/1"),),
            ),
        ),
        selection_behavior="at-most-one",
        override_reasons=(Coding("a", "urn:o", "A"),),
        links=(Link("rule", "https://x/rules/R01"),),
        extension={"ketamine-cds.rules": ["R01"]},
    )
    body = Response((card,), (Action("create", "c", resource={"resourceType": "Task"}),)).to_json()
    assert body["cards"][0]["suggestions"][0]["actions"][0] == {
        "type": "delete",
        "description": "remove it",
        "resourceId": "MedicationRequest/1",
    }
    assert body["cards"][0]["selectionBehavior"] == "at-most-one"
    assert body["systemActions"][0]["type"] == "create"
    assert not list(validator("response.json").iter_errors(body))


@pytest.mark.parametrize("name", ["19-response-example.json", "12-http-response.json"])
def test_spec_response_examples_match_the_response_schema(name):
    example = json.loads((CONFORMANCE / name).read_text())
    assert not list(validator("response.json").iter_errors(example))


def test_spec_autolaunch_example_lacks_the_required_indicator():
    # The 2.0.1 text's autolaunchable example omits `indicator`, which the Card table marks
    # REQUIRED: the schema must catch exactly that and nothing else.
    example = json.loads((CONFORMANCE / "20-response-autolaunchable.json").read_text())
    errors = list(validator("response.json").iter_errors(example))
    assert [e.message for e in errors] == ["'indicator' is a required property"]


def test_spec_discovery_example_matches_the_discovery_schema():
    example = json.loads((CONFORMANCE / "01-discovery-example.json").read_text())
    assert not list(validator("discovery.json").iter_errors(example))
