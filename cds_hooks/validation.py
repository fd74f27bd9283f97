"""JSON-Schema validation of requests, with errors that name the offending field path.

The schemas ship as JSON files in ``cds_hooks/schemas``; they are loaded and compiled once.
Every request is checked by ``jsonschema-rs`` (compiled, in Rust: the schemas and the input
limits, which are a generated schema too, cost microseconds instead of a Python walk over
the whole body); only a request it refuses goes through the Python ``jsonschema`` reference
validator, whose errors give the message and the field path. Patterns follow ECMA-262, as
JSON Schema specifies: where Python's ``re`` would accept what ECMA-262 does not (``$``
before a final newline), the request is refused all the same, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

from .errors import CDSHooksError, bad_request

#: hooks whose context this package knows how to validate
HOOK_SCHEMAS = {
    "order-select": "order-select.json",
    "order-sign": "order-sign.json",
    "patient-view": "patient-view.json",
}


@dataclass(frozen=True)
class InputLimits:
    """Bounds on the shape of what a caller (or its FHIR server) sends, so that no single
    value can make parsing, validation or the rules slow. The body size limit is separate
    (the HTTP layer refuses an oversized body before reading it)."""

    max_depth: int = 64  # nesting of objects and arrays
    max_string: int = 64 * 1024  # characters in any string but the exempt members
    max_code: int = 256  # characters in a ``code`` (terminology matches codes by prefix)
    max_entries: int = 5000  # resources in one prefetch key's Bundle, and draft orders
    exempt: frozenset[str] = frozenset({"data", "div"})  # base64 attachments, narrative XHTML


def limits_schema(limits: InputLimits) -> dict[str, Any]:
    """The input limits as a JSON Schema: ``n<d>`` is a value at depth ``d`` (a container
    may only be at a depth below ``max_depth``), ``x<d>`` the same when its own string is
    exempt from the length limit (``data``, ``div``); a ``code`` string has its own limit."""
    top = limits.max_depth
    scalar = ["string", "number", "boolean", "null"]
    defs: dict[str, Any] = {
        f"n{top}": {"type": scalar, "maxLength": limits.max_string},
        f"x{top}": {"type": scalar},
    }
    for depth in range(top):
        child = {"$ref": f"#/$defs/n{depth + 1}"}
        properties = {"code": {"maxLength": limits.max_code, "$ref": f"#/$defs/x{depth + 1}"}}
        properties |= {name: {"$ref": f"#/$defs/x{depth + 1}"} for name in limits.exempt}
        children = {"items": child, "properties": properties, "additionalProperties": child}
        defs[f"n{depth}"] = {"maxLength": limits.max_string, **children}
        defs[f"x{depth}"] = children
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **defs["n0"]}


@cache
def _limits_validator(limits: InputLimits) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(limits_schema(limits))


def limit_violation(value: Any, limits: InputLimits) -> tuple[tuple[Any, ...], str] | None:
    """The path of the first value beyond the depth or string limits, and the problem;
    ``None`` when everything is within them. The path is only worked out (iteratively, so
    any depth is safe) once the fast check has found something."""
    if not isinstance(value, dict | list):
        return None
    try:
        if _limits_validator(limits).is_valid(value):
            return None
    except ValueError:  # a value JSON cannot hold (not from a JSON parser): the walk decides
        pass
    return _first_violation(value, limits)


def _first_violation(value: dict | list, limits: InputLimits) -> tuple[tuple[Any, ...], str] | None:
    """The walk that names what :func:`limits_schema` refused (iterative: any depth)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= limits.max_depth:
            return path, f"is nested deeper than {limits.max_depth} levels"
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(child, str):
                limit = limits.max_code if key == "code" else limits.max_string
                if len(child) > limit and key not in limits.exempt:
                    return (*path, key), f"is longer than {limit} characters"
            elif isinstance(child, dict | list):
                stack.append((child, (*path, key)))
    return None


def check_limits(value: Any, limits: InputLimits) -> None:
    """Raise a 400 ``limit_exceeded`` naming the first value beyond the limits."""
    found = limit_violation(value, limits)
    if found is not None:
        path, problem = found
        where = field_path(path) or "body"
        raise CDSHooksError(400, "limit_exceeded", f"{where} {problem}", field=where)


def _check_entries(bundle: Any, where: str, limits: InputLimits) -> None:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if isinstance(entries, list) and len(entries) > limits.max_entries:
        raise CDSHooksError(
            400,
            "limit_exceeded",
            f"{where}.entry has {len(entries)} entries; at most {limits.max_entries} are accepted",
            field=f"{where}.entry",
        )


def load_schema(name: str) -> dict[str, Any]:
    """One of the JSON Schemas shipped in ``cds_hooks/schemas``, parsed."""
    return json.loads(resources.files("cds_hooks.schemas").joinpath(name).read_text("utf-8"))


@cache
def _registry() -> Registry:
    defs = load_schema("_defs.json")
    return Registry().with_resource(defs["$id"], Resource.from_contents(defs))


@cache
def validator(name: str) -> Draft202012Validator:
    """The reference validator of schema ``name``: it explains what :func:`fast_validator`
    refused."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=_registry())


@cache
def fast_validator(name: str) -> jsonschema_rs.Validator:
    """The compiled validator of schema ``name``: says whether an instance is valid. The
    reference one is compiled with it, so that both are ready before gunicorn forks."""
    validator(name)
    defs = load_schema("_defs.json")
    registry = jsonschema_rs.Registry([(defs["$id"], defs)])
    return jsonschema_rs.validator_for(load_schema(name), registry=registry)


def field_path(parts: Iterable[Any], prefix: str = "") -> str:
    """``("context", "draftOrders", "entry", 0)`` → ``context.draftOrders.entry[0]``."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: ValidationError, prefix: str) -> tuple[str, str]:
    path = list(error.absolute_path)
    if error.validator == "required":
        # name the missing member itself, not its parent
        missing = error.message.split("'")[1] if "'" in error.message else ""
        path.append(missing)
        return field_path(path, prefix), "is required"
    if error.validator == "dependentRequired":
        needed = error.message.split("'")[1] if "'" in error.message else ""
        return field_path([*path, needed], prefix), "is required when fhirAuthorization is sent"
    where = field_path(path, prefix) or prefix or "body"
    if error.validator == "type" and len(path) == 2 and path[0] == "prefetch":
        return where, "must be null or a FHIR resource with a resourceType"
    if error.validator == "type":
        return where, f"must be of type {error.validator_value}"
    if error.validator in ("pattern", "const", "enum"):
        return where, f"has an invalid value ({_short(error.instance)})"
    if error.validator == "minItems":
        return where, "must not be empty"
    if error.validator == "maxItems":
        return where, f"must not have more than {error.validator_value} items"
    if error.validator == "maxLength":
        return where, f"must not be longer than {error.validator_value} characters"
    return where, error.message


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(name: str, instance: Any, prefix: str = "") -> None:
    """Validate ``instance`` against schema ``name``; raise a 400 naming the first bad field."""
    try:
        if fast_validator(name).is_valid(instance):
            return
    except ValueError:  # a value JSON cannot hold (not from a JSON parser)
        pass
    error = best_match(validator(name).iter_errors(instance))
    if error is not None:
        where, problem = _describe(error, prefix)
        raise bad_request(f"{where} {problem}", field=where)
    try:
        refused = next(iter(fast_validator(name).iter_errors(instance)), None)
    except ValueError:  # not JSON data, and the reference validator found nothing wrong
        return
    if refused is not None:  # an ECMA-262 pattern that Python's re would have matched
        where = field_path(refused.instance_path, prefix) or prefix or "body"
        raise bad_request(f"{where} has an invalid value", field=where)


def check_request(
    body: Any, expected_hook: str | None = None, limits: InputLimits | None = None
) -> None:
    """Validate a hook request: its size limits, the common envelope, the hook the service
    answers, then the hook's own context."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", field="body")
    limits = limits or InputLimits()
    check_limits(body, limits)
    check("request.json", body)
    for key, value in (body.get("prefetch") or {}).items():
        _check_entries(value, f"prefetch.{key}", limits)
    _check_entries(body["context"].get("draftOrders"), "context.draftOrders", limits)
    if expected_hook is not None and body["hook"] != expected_hook:
        raise bad_request(
            f"hook {body['hook']!r} does not match this service, which answers {expected_hook!r}",
            field="hook",
        )
    schema = HOOK_SCHEMAS.get(body["hook"])
    if schema:
        check(schema, body["context"], prefix="context")
