"""Convert FHIR R4 data into CDS Hooks requests for this service.

Real patient data usually arrives as a FHIR ``Bundle`` (``transaction``, ``collection`` or
``searchset``, often with ``urn:uuid:`` references, as Synthea writes them) or as a Bulk Data
NDJSON export (one resource per line, one or more files). A CDS client sends none of these:
it sends one searchset Bundle per prefetch key, with ``Type/id`` references. This module
turns the former into the latter.

Typical use::

    from service import convert

    resources = convert.resources_from("Milan_Beatty.json")       # or an NDJSON file/folder
    order = convert.ketamine_order(35, "iv", 40)
    body = convert.to_hook_request(resources, hook="order-sign", orders=[order])
    # body is a valid CDS Hooks request: POST it to /cds-services/ketamine-order-sign

The functions:

* :func:`resources_from` reads Bundles, single resources, NDJSON files and folders of them
  into one list of resources, with ``urn:uuid:`` references rewritten to ``Type/id``;
* :func:`one_patient` rewrites the resources of several patients onto one (for load tests
  that need a very large record);
* :func:`to_hook_request` picks the patient, keeps only that patient's resources, groups them
  into the service's eight prefetch keys and wraps the draft orders in the hook's context;
* :func:`ketamine_order` and :func:`esketamine_order` build draft ``MedicationRequest``
  orders (also used by ``fixtures/builder.py``).

Nothing here reads the clock except the order builders' ``authored`` default, and nothing
here talks to a network. Inputs are never modified: every function returns new objects.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from service.engine.prefetch import KEY_OF_TYPE, PREFETCH

__all__ = [
    "PATIENT_FIELDS",
    "ConversionError",
    "concept",
    "esketamine_order",
    "ketamine_order",
    "one_patient",
    "resolve_references",
    "resources_from",
    "searchset",
    "to_hook_request",
]

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

#: the prefetch keys that are searches (all but ``patient``)
_SEARCH_KEYS = tuple(key for key in PREFETCH if key != "patient")
#: the elements that say whose a resource is (``patient`` for AllergyIntolerance)
PATIENT_FIELDS = ("subject", "patient")
#: the elements through which a medication resource names a Medication
_MEDICATION_REF = "medicationReference"
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_JSON_SUFFIXES = (".json",)

PathLike = str | os.PathLike[str]
Source = PathLike | bytes | Mapping[str, Any] | Iterable[Any]


class ConversionError(ValueError):
    """The input cannot be turned into what was asked (no patient, several patients, ...)."""


# -- reading -----------------------------------------------------------------------------


def resources_from(source: Source) -> list[dict[str, Any]]:
    """Every FHIR resource in ``source``, with ``urn:uuid:`` references rewritten.

    ``source`` may be:

    * a path to a ``.json`` file holding a Bundle (any type) or a single resource;
    * a path to an NDJSON file (``.ndjson`` / ``.jsonl``: one resource per line);
    * a path to a folder: every ``*.json``, ``*.ndjson`` and ``*.jsonl`` in it, by name;
    * raw JSON or NDJSON ``bytes``;
    * an already parsed Bundle or resource (a ``dict``);
    * a list (or other iterable) of any of the above, e.g. the files of one NDJSON export.

    Bundle entries with a ``urn:uuid:`` (or ``urn:oid:``) ``fullUrl`` become addressable as
    ``Type/id`` (a missing ``id`` is taken from the ``fullUrl``), and every ``reference`` to
    such a ``fullUrl`` anywhere in the input is rewritten to ``Type/id``. Nested Bundles
    (e.g. a Bundle of Bundles) are flattened. The input objects are not modified.
    """
    resources: list[dict[str, Any]] = []
    full_urls: dict[str, str] = {}
    for item in _items(source):
        _collect(item, resources, full_urls)
    return resolve_references(resources, full_urls)


def _items(source: Source) -> Iterable[Any]:
    """Parsed JSON values (Bundles or resources) from any accepted source."""
    if isinstance(source, Mapping):
        yield source
    elif isinstance(source, bytes | bytearray | memoryview):
        yield from _parse_bytes(bytes(source), "<bytes>")
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in (*_JSON_SUFFIXES, *_NDJSON_SUFFIXES)
            )
            if not files:
                raise ConversionError(f"no .json, .ndjson or .jsonl file in {path}")
            for p in files:
                yield from _items(p)
        else:
            yield from _parse_bytes(path.read_bytes(), str(path))
    elif isinstance(source, Iterable):
        for item in source:
            yield from _items(item)
    else:
        raise ConversionError(f"cannot read FHIR resources from {type(source).__name__}")


def _parse_bytes(raw: bytes, name: str) -> Iterable[Any]:
    """One JSON document, or NDJSON (several lines, each a JSON object)."""
    try:
        yield orjson.loads(raw)
        return
    except orjson.JSONDecodeError:
        pass
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConversionError(f"{name}, line {number}: not JSON ({exc})") from None


def _collect(item: Any, out: list[dict[str, Any]], full_urls: dict[str, str]) -> None:
    if not isinstance(item, Mapping) or not isinstance(item.get("resourceType"), str):
        raise ConversionError(
            "expected a FHIR resource or Bundle (a JSON object with resourceType)"
        )
    if item["resourceType"] != "Bundle":
        out.append(dict(item))
        return
    for entry in item.get("entry") or ():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            continue
        resource = dict(entry["resource"])
        kind = resource.get("resourceType")
        if not isinstance(kind, str):
            continue
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith(("urn:uuid:", "urn:oid:")):
            resource.setdefault("id", full_url.rsplit(":", 1)[1])
        if isinstance(full_url, str) and isinstance(resource.get("id"), str):
            full_urls[full_url] = f"{kind}/{resource['id']}"
        if kind == "Bundle":
            _collect(resource, out, full_urls)
        else:
            out.append(resource)


def resolve_references(
    resources: Iterable[Mapping[str, Any]], full_urls: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Copies of ``resources`` with ``urn:uuid:`` references rewritten to ``Type/id``.

    A reference is rewritten when it is a key of ``full_urls`` (``fullUrl`` → ``Type/id``,
    as :func:`resources_from` collects them) or when it is ``urn:uuid:<x>`` and exactly one
    of the resources has the id ``<x>``. Anything else is left as it is.
    """
    resources = list(resources)
    mapping = dict(full_urls or {})
    by_id: dict[str, list[str]] = {}
    for r in resources:
        if isinstance(r.get("id"), str) and isinstance(r.get("resourceType"), str):
            by_id.setdefault(r["id"], []).append(f"{r['resourceType']}/{r['id']}")
    for rid, targets in by_id.items():
        if len(targets) == 1:
            mapping.setdefault(f"urn:uuid:{rid}", targets[0])
    return [_rewrite(r, mapping) for r in resources]


def _rewrite(value: Any, mapping: Mapping[str, str]) -> Any:
    """A deep copy of ``value`` with every ``reference`` found in ``mapping`` replaced."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                out[k] = mapping.get(v, v)
            elif isinstance(v, Mapping | list):
                out[k] = _rewrite(v, mapping)
            else:
                out[k] = v
        return out
    if isinstance(value, list):
        return [_rewrite(v, mapping) if isinstance(v, Mapping | list) else v for v in value]
    return value


def _patient_of(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient a resource belongs to (its subject/patient), if it names one."""
    for name in PATIENT_FIELDS:
        ref = resource.get(name)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            target = ref["reference"]
            if target.startswith("Patient/") or "/Patient/" in target:
                return target.rsplit("Patient/", 1)[1].split("/")[0]
    return None


def one_patient(
    resources: Iterable[Mapping[str, Any]], patient_id: str | None = None
) -> list[dict[str, Any]]:
    """The resources of several patients rewritten as one patient's record.

    Keeps one Patient resource (the one with ``patient_id``, else the first) and points every
    reference to any other Patient at it; the other Patient resources are dropped. Meant for
    load tests that need one very large record, not for clinical use.
    """
    resources = list(resources)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        raise ConversionError("no Patient resource to merge onto")
    keep = next((p for p in patients if p.get("id") == patient_id), patients[0])
    kept = copy.deepcopy(dict(keep))
    if patient_id is not None:
        kept["id"] = patient_id
    target = f"Patient/{kept['id']}"
    mapping = {f"Patient/{p['id']}": target for p in patients if isinstance(p.get("id"), str)}
    out = [kept]
    for r in resources:
        if r.get("resourceType") != "Patient":
            out.append(_rewrite(r, mapping))
    return out


# -- building the request ----------------------------------------------------------------


def searchset(
    resources: Sequence[Mapping[str, Any]],
    included: Sequence[Mapping[str, Any]] = (),
    base_url: str | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of ``resources`` (``search.mode`` match) and ``included`` (include);
    ``fullUrl`` is set when ``base_url`` (the FHIR server) is known."""
    entries = []
    for mode, group in (("match", resources), ("include", included)):
        for r in group:
            entry: dict[str, Any] = {}
            if base_url and isinstance(r.get("id"), str):
                entry["fullUrl"] = f"{base_url.rstrip('/')}/{r['resourceType']}/{r['id']}"
            entry["resource"] = r
            entry["search"] = {"mode": mode}
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": entries,
    }


def to_hook_request(
    resources: Iterable[Mapping[str, Any]],
    *,
    hook: str,
    orders: Sequence[Mapping[str, Any]] = (),
    patient_id: str | None = None,
    instance: str | None = None,
    user_id: str = "Practitioner/ketamine-cds-convert",
    selections: Sequence[str] | None = None,
    fhir_server: str | None = None,
    observation_codes: Iterable[str] | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """A CDS Hooks request for ``hook`` about one patient of ``resources``.

    * ``hook``: ``order-sign``, ``order-select`` or ``patient-view``;
    * ``orders``: the draft orders (e.g. from :func:`ketamine_order`), sent as
      ``context.draftOrders`` (a collection Bundle); an order without ``subject`` gets the
      patient's. Ignored for patient-view;
    * ``patient_id``: which patient, required when ``resources`` hold more than one;
    * ``instance``: the ``hookInstance`` (a random UUID by default);
    * ``selections``: for order-select, the selected order references (default: every order);
    * ``fhir_server``: sent as ``fhirServer`` and used for the entries' ``fullUrl``;
    * ``observation_codes``: LOINC codes to keep, as the service's observation search asks;
      ``None`` (default) keeps every observation, like a server ignoring the code filter.

    ``prefetch`` carries every key of the service's prefetch table
    (``service.engine.prefetch.PREFETCH``): ``patient`` the Patient resource, the others
    searchset Bundles (empty when the patient has none). Only resources whose
    ``subject``/``patient`` is the chosen patient are kept; Medication resources referenced
    by a kept medication resource are added as ``include`` entries.
    ``urn:uuid:`` references left in ``resources`` are rewritten to ``Type/id``. With
    ``validate`` (default) the result is checked against the service's request schemas and
    :class:`cds_hooks.errors.CDSHooksError` is raised if it is not valid.
    """
    resources = resolve_references(resources)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if patient_id is None:
        ids = sorted({str(p.get("id")) for p in patients})
        if len(ids) != 1:
            raise ConversionError(
                f"found {len(ids)} patients; pass patient_id (one of {', '.join(ids[:10])})"
                if ids
                else "no Patient resource in the input"
            )
        patient_id = ids[0]
    patient = next((p for p in patients if p.get("id") == patient_id), None)
    if patient is None:
        raise ConversionError(f"no Patient with id {patient_id!r} in the input")

    codes = set(observation_codes) if observation_codes is not None else None
    medications = {
        f"Medication/{r['id']}": r
        for r in resources
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)
    }
    matches: dict[str, list[dict[str, Any]]] = {key: [] for key in _SEARCH_KEYS}
    included: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in _SEARCH_KEYS}
    for r in resources:
        key = KEY_OF_TYPE.get(r.get("resourceType"))  # type: ignore[arg-type]
        if key is None or key == "patient" or _patient_of(r) != patient_id:
            continue
        if key == "observations" and codes is not None and not _has_loinc(r, codes):
            continue
        matches[key].append(r)
        ref = r.get(_MEDICATION_REF)
        if isinstance(ref, Mapping) and ref.get("reference") in medications:
            included[key][ref["reference"]] = medications[ref["reference"]]

    prefetch: dict[str, Any] = {"patient": patient}
    for key in _SEARCH_KEYS:
        prefetch[key] = searchset(matches[key], list(included[key].values()), fhir_server)

    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if hook != "patient-view":
        drafts = []
        for order in orders:
            order = copy.deepcopy(dict(order))
            order.setdefault("subject", {"reference": f"Patient/{patient_id}"})
            drafts.append(order)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in drafts],
        }
        if hook == "order-select":
            context["selections"] = list(
                selections
                if selections is not None
                else (f"{o['resourceType']}/{o['id']}" for o in drafts)
            )
    body: dict[str, Any] = {
        "hookInstance": instance or str(uuid.uuid4()),
        "hook": hook,
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
    body["context"] = context
    body["prefetch"] = prefetch
    if validate:
        from cds_hooks.validation import check_request

        check_request(body, hook)
    return body


def _has_loinc(resource: Mapping[str, Any], codes: set[str]) -> bool:
    code = resource.get("code")
    if not isinstance(code, Mapping):
        return False
    return any(
        isinstance(c, Mapping) and c.get("system") == LOINC and c.get("code") in codes
        for c in code.get("coding") or ()
    )


# -- draft orders ------------------------------------------------------------------------


def concept(
    system: str | None, code: str | None, display: str | None = None, text: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if code:
        coding = {"system": system, "code": code}
        if display:
            coding["display"] = display
        out["coding"] = [coding]
    if text:
        out["text"] = text
    return out


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


#: route name → the dosage.route concept a ketamine order carries
KETAMINE_ROUTES = {
    "iv": ("47625008", "Intravenous route (qualifier value)", "Intravenous"),
    "im": (None, None, "Intramuscular"),
    "oral": (None, None, "Oral"),
    "nasal": (None, None, "Intranasal (compounded)"),
}


def ketamine_order(
    mg: float | None = 40,
    route: str | None = "iv",
    minutes: float | None = 40,
    *,
    patient_id: str | None = None,
    order_id: str = "draft-ketamine-1",
    unit: str = "mg",
    authored: str | None = None,
) -> dict[str, Any]:
    """A draft ketamine ``MedicationRequest`` (RxNorm 238083, 50 mg/mL injectable solution).

    ``mg``: the dose in ``unit`` (``None``: no dose); ``route``: ``iv``, ``im``, ``oral``,
    ``nasal`` or ``None`` (not stated); ``minutes``: the infusion time (``None``: not stated);
    ``patient_id``: sets ``subject`` (``to_hook_request`` fills it otherwise); ``authored``:
    the ``authoredOn`` instant (default: now, UTC).
    """
    if route is not None and route not in KETAMINE_ROUTES:
        raise ValueError(f"route must be one of {', '.join(KETAMINE_ROUTES)}, not {route!r}")
    dosage: dict[str, Any] = {"sequence": 1}
    if minutes is not None:
        dosage["text"] = f"{mg:g} {unit} IV infusion over {minutes:g} minutes" if mg else None
        dosage["timing"] = {"repeat": {"count": 1, "duration": minutes, "durationUnit": "min"}}
    if route:
        code, display, text = KETAMINE_ROUTES[route]
        dosage["route"] = concept(SNOMED if code else None, code, display, text)
    if mg is not None:
        dosage["doseAndRate"] = [
            {"doseQuantity": {"value": mg, "unit": unit, "system": UCUM, "code": unit}}
        ]
    dosage = {k: v for k, v in dosage.items() if v is not None}
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept(
            RXNORM,
            "238083",
            "ketamine hydrochloride 50 MG/ML Injectable Solution",
            "Ketamine hydrochloride injection",
        ),
    }
    if patient_id is not None:
        order["subject"] = {"reference": f"Patient/{patient_id}"}
    order["authoredOn"] = authored or _now()
    order["dosageInstruction"] = [dosage]
    return order


def esketamine_order(
    mg: float = 56,
    *,
    patient_id: str | None = None,
    order_id: str = "draft-esketamine-1",
    authored: str | None = None,
) -> dict[str, Any]:
    """A draft esketamine (Spravato, NDC 50458-028-02) nasal ``MedicationRequest`` of ``mg``.

    ``patient_id`` sets ``subject``; ``authored`` the ``authoredOn`` instant (default: now).
    """
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": NDC,
                    "code": "50458-028-02",
                    "display": "SPRAVATO 56 mg dose kit (2 x 28 mg nasal spray devices)",
                }
            ],
            "text": "Spravato (esketamine) nasal spray",
        },
    }
    if patient_id is not None:
        order["subject"] = {"reference": f"Patient/{patient_id}"}
    order["authoredOn"] = authored or _now()
    order["dosageInstruction"] = [
        {
            "sequence": 1,
            "text": f"{mg:g} mg intranasally under supervision",
            "route": concept(None, None, text="Nasal"),
            "doseAndRate": [
                {"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}
            ],
        }
    ]
    return order
