"""The compiled validators agree with the reference ones: the input-limit schema with the
walk that names a violation, the request schemas with Python ``jsonschema``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_hooks.errors import CDSHooksError
from cds_hooks.validation import (
    InputLimits,
    _first_violation,
    _limits_validator,
    check,
    fast_validator,
    limit_violation,
    validator,
)

SMALL = InputLimits(max_depth=4, max_string=6, max_code=3, exempt=frozenset({"data", "div"}))
KEYS = st.sampled_from(["code", "data", "div", "text", "a"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=9),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(JSON, max_size=3) | st.dictionaries(KEYS, JSON, max_size=4))
def test_the_limits_schema_refuses_exactly_what_the_walk_finds(value):
    assert _limits_validator(SMALL).is_valid(value) == (_first_violation(value, SMALL) is None)


def test_limits_at_their_boundaries():
    ok: dict = {"a": 1}
    for _ in range(SMALL.max_depth - 1):  # containers at depths 0 to 3
        ok = {"a": ok}
    assert limit_violation(ok, SMALL) is None
    assert limit_violation({"a": ok}, SMALL) == (("a",) * 4, "is nested deeper than 4 levels")
    assert limit_violation({"code": "abc", "text": "abcdef"}, SMALL) is None
    assert limit_violation({"code": "abcd"}, SMALL) == (("code",), "is longer than 3 characters")
    assert limit_violation({"data": "x" * 100, "div": "y" * 100}, SMALL) is None
    assert limit_violation([{"data": {"t": "x" * 7}}], SMALL) == (
        (0, "data", "t"),
        "is longer than 6 characters",
    )


def test_values_json_cannot_hold_are_walked():
    assert limit_violation({"a": ("x" * 7,), "b": {1, 2}}, SMALL) is None  # tuples: not walked
    assert limit_violation({"a": {1}, "text": "x" * 7}, SMALL) == (
        ("text",),
        "is longer than 6 characters",
    )


ORDER_SIGN = {
    "userId": "Practitioner/1",
    "patientId": "p-1",
    "draftOrders": {"resourceType": "Bundle"},
}


@pytest.mark.parametrize(
    "name, instance",
    [
        ("order-sign.json", ORDER_SIGN),
        ("order-sign.json", {**ORDER_SIGN, "patientId": "p 1"}),
        ("order-sign.json", {**ORDER_SIGN, "draftOrders": {"resourceType": "List"}}),
        ("order-sign.json", {**ORDER_SIGN, "draftOrders": {}}),
        ("order-sign.json", {**ORDER_SIGN, "userId": 7}),
        ("request.json", {"hook": "order-sign", "hookInstance": "1", "context": {}}),
        ("request.json", {"hook": "", "hookInstance": "1", "context": {}}),
        ("request.json", {"hook": "x", "hookInstance": "1", "context": {}, "prefetch": {"p": 1}}),
        ("feedback.json", {"feedback": []}),
    ],
)
def test_the_compiled_schemas_agree_with_the_reference_validator(name, instance):
    assert fast_validator(name).is_valid(instance) == validator(name).is_valid(instance)


def test_a_pattern_only_ecma_262_refuses_is_still_a_400_naming_the_field():
    body = {**ORDER_SIGN, "patientId": "p-1\n"}  # Python's $ matches before a final newline
    assert validator("order-sign.json").is_valid(body)
    with pytest.raises(CDSHooksError) as refused:
        check("order-sign.json", body, prefix="context")
    assert refused.value.status == 400 and refused.value.field == "context.patientId"


def test_values_json_cannot_hold_go_to_the_reference_validator():
    check("order-sign.json", {**ORDER_SIGN, "encounterId": "e-1", "extra": {1, 2}}, "context")
    with pytest.raises(CDSHooksError) as refused:
        check("order-sign.json", {**ORDER_SIGN, "patientId": "p 1", "extra": {1}}, "context")
    assert refused.value.field == "context.patientId"
