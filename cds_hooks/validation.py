"""JSON-Schema validation of requests, with errors that name the offending field path.

The schemas ship as JSON files in ``cds_hooks/schemas``; they are loaded and compiled once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

from .errors import bad_request

#: hooks whose context this package knows how to validate
HOOK_SCHEMAS = {
    "order-select": "order-select.json",
    "order-sign": "order-sign.json",
    "patient-view": "patient-view.json",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("cds_hooks.schemas").joinpath(name).read_text("utf-8"))


@cache
def _registry() -> Registry:
    defs = _load("_defs.json")
    return Registry().with_resource(defs["$id"], Resource.from_contents(defs))


@cache
def validator(name: str) -> Draft202012Validator:
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=_registry())


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
    if error.validator == "type":
        return where, f"must be of type {error.validator_value}"
    if error.validator in ("pattern", "const", "enum"):
        return where, f"has an invalid value ({_short(error.instance)})"
    if error.validator == "minItems":
        return where, "must not be empty"
    if error.validator == "oneOf" and where.startswith("prefetch."):
        return where, "must be null or a FHIR resource with a resourceType"
    return where, error.message


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(name: str, instance: Any, prefix: str = "") -> None:
    """Validate ``instance`` against schema ``name``; raise a 400 naming the first bad field."""
    error = best_match(validator(name).iter_errors(instance))
    if error is not None:
        where, problem = _describe(error, prefix)
        raise bad_request(f"{where} {problem}", field=where)


def check_request(body: Any, expected_hook: str | None = None) -> None:
    """Validate a hook request: the common envelope, the hook the service answers, then the
    hook's own context."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", field="body")
    check("request.json", body)
    if expected_hook is not None and body["hook"] != expected_hook:
        raise bad_request(
            f"hook {body['hook']!r} does not match this service, which answers {expected_hook!r}",
            field="hook",
        )
    schema = HOOK_SCHEMAS.get(body["hook"])
    if schema:
        check(schema, body["context"], prefix="context")
