"""The OpenAPI 3.1 description of a CDS server, served at ``GET /openapi.json``.

It is built from the service catalog and from the same JSON Schemas the requests are
validated with, so the description cannot drift from what the server enforces. Each schema
file becomes a component named after the file (``order-sign``), each of its ``$defs`` a
component of its own (``response.card``; ``_defs.json`` gives ``defs.id``), and every
``$ref`` is rewritten to point at them.
"""

from __future__ import annotations

from typing import Any

from .service import ServiceCatalog
from .validation import HOOK_SCHEMAS, load_schema

SCHEMA_FILES = (
    "_defs.json",
    "request.json",
    *HOOK_SCHEMAS.values(),
    "discovery.json",
    "feedback.json",
    "response.json",
    "error.json",
)

#: status → what it means, for every refusal the endpoints can answer
REFUSALS = {
    "400": "Invalid request: `field` names the offending member (`limit_exceeded` when an "
    "input limit is passed).",
    "401": "The caller could not be authenticated (the body never says why).",
    "412": "Data the service requires could not be obtained from prefetch or fhirServer.",
    "413": "Request body larger than the limit.",
    "415": "Content-Type is not application/json.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def components() -> dict[str, Any]:
    """Every shipped schema as OpenAPI components, with rewritten ``$ref``\\ s."""
    files = {name.removesuffix(".json").lstrip("_"): load_schema(name) for name in SCHEMA_FILES}
    owners = {schema["$id"]: name for name, schema in files.items()}

    def rewrite(node: Any, owner: str) -> Any:
        if isinstance(node, list):
            return [rewrite(item, owner) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "$ref":
                base, _, pointer = value.partition("#")
                name = owners[base] if base else owner
                out[key] = f"#/components/schemas/{name}{pointer.replace('/$defs/', '.')}"
            elif key not in ("$schema", "$id", "$defs"):
                out[key] = rewrite(value, owner)
        return out

    out: dict[str, Any] = {}
    for name, schema in files.items():
        for def_name, definition in schema.get("$defs", {}).items():
            out[f"{name}.{def_name}"] = rewrite(definition, name)
        if name != "defs":
            out[name] = rewrite(schema, name)
    return out


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    ok: tuple[dict[str, Any], str],
    refusals: tuple[str, ...],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    operation["responses"] = {
        "200": _json(*ok),
        **{status: _json(_ref("error"), REFUSALS[status]) for status in refusals},
    }
    return operation


def _hook_request(hook: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [_ref("request")]
    if hook in HOOK_SCHEMAS:
        context = _ref(HOOK_SCHEMAS[hook].removesuffix(".json"))
        parts.append({"properties": {"hook": {"const": hook}, "context": context}})
    return {"allOf": parts}


def document(
    catalog: ServiceCatalog, title: str, version: str, authenticated: bool
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for discovery, each service and each feedback endpoint."""
    auth = ("401",) if authenticated else ()
    paths: dict[str, Any] = {
        "/cds-services": {
            "get": _operation(
                "Discovery: the services offered", (_ref("discovery"), "Services."), auth
            )
        }
    }
    for service in catalog:
        paths[f"/cds-services/{service.id}"] = {
            "post": _operation(
                f"{service.title} ({service.hook} hook)",
                (_ref("response"), "Cards and system actions."),
                ("400", *auth, "412", "413", "415"),
                _hook_request(service.hook),
            )
        }
        paths[f"/cds-services/{service.id}/feedback"] = {
            "post": _operation(
                f"Feedback on the cards of {service.id}",
                ({"type": "object"}, "Feedback recorded."),
                ("400", *auth, "413", "415"),
                _ref("feedback"),
            )
        }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components()},
    }
    if authenticated:
        doc["components"]["securitySchemes"] = {
            "cdsHooksJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
        doc["security"] = [{"cdsHooksJwt": []}]
    return doc
