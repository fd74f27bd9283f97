"""FHIR R4 ValueSets: the service's value sets (ketamine-rules.md §3a).

The shipped sets live in ``service/engine/data/valuesets/`` (one ValueSet JSON per concept,
every code copied from a published source; provenance in the files and in ``SOURCES.md``).
A site adds or replaces sets with a folder of ValueSet files (``KCDS_VALUESETS_DIR``): a set
whose key equals a shipped one replaces it, a new key adds a set. The *key* of a set is its
``id`` in lower case with ``-`` read as ``_`` (``acute-coronary-syndrome`` and the file name
``acute_coronary_syndrome.json`` name the same set).

Read as plain JSON once at start-up: ``expansion.contains`` (nested ``contains`` too) when
the set has an expansion, else ``compose.include`` — enumerated ``concept`` lists and
``valueSet`` references to other loaded sets (a site set that names its own shipped set
extends it), minus ``compose.exclude`` concepts. A ``filter`` cannot be expanded without a
terminology server, so a set that needs one must carry its expansion. ``fhir.resources`` is
used only by :func:`problems` (the ``valuesets check`` command), never on the request path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from stdnum import luhn, verhoeff

SHIPPED = resources.files("service.engine") / "data" / "valuesets"
SOURCE_URL = "urn:ketamine-cds:StructureDefinition:valueset-source"
VERIFICATION_URL = "urn:ketamine-cds:StructureDefinition:code-verification"
#: code-verification values whose codes count only with a matching display or text (§3a)
NEEDS_TEXT = frozenset({"secondary-source", "display-not-retrieved"})

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
NDC = "http://hl7.org/fhir/sid/ndc"


class ValueSetError(ValueError):
    """A ValueSet file or folder that cannot be used; the message names it and the problem."""


@dataclass(frozen=True, slots=True)
class Member:
    """One code of a value set."""

    system: str
    code: str
    display: str
    needs_text: bool = False  # secondary-source / display-not-retrieved: count with text only


@dataclass(frozen=True, slots=True)
class ValueSet:
    key: str
    id: str
    url: str
    title: str
    version: str
    members: tuple[Member, ...]
    origin: str  # "shipped" or the site file it came from
    sources: tuple[str, ...] = ()  # the valueset-source extension strings

    def systems(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.members:
            out[m.system] = out.get(m.system, 0) + 1
        return out


def key_of(identifier: str) -> str:
    """The key of a set from its id, file stem or canonical url's last segment."""
    tail = re.split(r"[/:]", identifier.rstrip("/"))[-1]
    return tail.strip().lower().replace("-", "_")


def _verification(entry: Mapping[str, Any]) -> set[str]:
    return {
        e.get("valueCode")
        for e in entry.get("extension") or ()
        if isinstance(e, dict) and e.get("url") == VERIFICATION_URL
    }


def _contains(entries: Any, where: str) -> Iterator[Member]:
    for entry in entries or ():
        if not isinstance(entry, dict):
            raise ValueSetError(f"{where}: expansion.contains holds a non-object")
        system, code = entry.get("system"), entry.get("code")
        if isinstance(system, str) and isinstance(code, str) and code.strip():
            display = entry.get("display")
            yield Member(
                system,
                code.strip(),
                display if isinstance(display, str) else "",
                bool(_verification(entry) & NEEDS_TEXT),
            )
        yield from _contains(entry.get("contains"), where)


def _concepts(include: Mapping[str, Any], where: str) -> Iterator[Member]:
    system = include.get("system")
    for c in include.get("concept") or ():
        if not isinstance(system, str) or not isinstance(c, dict):
            raise ValueSetError(f"{where}: compose concept without a system or not an object")
        code, display = c.get("code"), c.get("display")
        if isinstance(code, str) and code.strip():
            yield Member(
                system,
                code.strip(),
                display if isinstance(display, str) else "",
                bool(_verification(c) & NEEDS_TEXT),
            )


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A ValueSet read from JSON, before ``compose.include.valueSet`` references resolve."""

    valueset: ValueSet
    includes: tuple[str, ...]  # keys of included sets
    excludes: frozenset[tuple[str, str]]


def parse(doc: Any, origin: str) -> _Parsed:
    """One ValueSet resource (parsed JSON) → its members; ``origin`` names it in errors."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "ValueSet":
        raise ValueSetError(f"{origin}: not a FHIR ValueSet (resourceType must be 'ValueSet')")
    ident = doc.get("id") or doc.get("url")
    if not isinstance(ident, str) or not ident.strip():
        raise ValueSetError(f"{origin}: the ValueSet has neither an id nor a url")
    expansion = doc.get("expansion")
    compose = doc.get("compose") if isinstance(doc.get("compose"), dict) else {}
    includes: list[str] = []
    excludes: set[tuple[str, str]] = set()
    if isinstance(expansion, dict):
        members = tuple(_contains(expansion.get("contains"), origin))
    else:
        found: list[Member] = []
        for inc in compose.get("include") or ():
            if not isinstance(inc, dict):
                raise ValueSetError(f"{origin}: compose.include holds a non-object")
            if inc.get("filter"):
                raise ValueSetError(
                    f"{origin}: compose.include uses a filter, which needs a terminology "
                    "server; ship the set with its expansion"
                )
            found.extend(_concepts(inc, origin))
            includes.extend(key_of(str(v)) for v in inc.get("valueSet") or ())
        for exc in compose.get("exclude") or ():
            if isinstance(exc, dict):
                excludes.update((m.system, m.code) for m in _concepts(exc, origin))
        members = tuple(found)
        if not members and not includes:
            raise ValueSetError(
                f"{origin}: the ValueSet has no expansion.contains and no compose.include "
                "concepts: nothing to match"
            )
    sources = tuple(
        e["valueString"]
        for e in doc.get("extension") or ()
        if isinstance(e, dict)
        and e.get("url") == SOURCE_URL
        and isinstance(e.get("valueString"), str)
    )
    title = doc.get("title") or doc.get("name") or ident
    return _Parsed(
        ValueSet(
            key_of(ident),
            str(doc.get("id") or ""),
            str(doc.get("url") or ""),
            str(title),
            str(doc.get("version") or ""),
            members,
            origin,
            sources,
        ),
        tuple(includes),
        frozenset(excludes),
    )


def _documents(path: Path) -> Iterator[tuple[Any, str]]:
    """The ValueSets of one JSON file: a ValueSet, or a Bundle of them (a VSAC download)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueSetError(f"{path}: not readable JSON ({e})") from None
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc.get("entry") or ()):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "ValueSet":
                yield resource, f"{path}#entry[{i}]"
    else:
        yield doc, str(path)


@cache
def _read_shipped() -> Mapping[str, _Parsed]:
    """The shipped sets, read once per process (they are immutable; callers copy the map)."""
    out: dict[str, _Parsed] = {}
    for item in sorted(SHIPPED.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            parsed = parse(json.loads(item.read_text("utf-8")), "shipped")
            out[parsed.valueset.key] = parsed
    return out


def site_files(folder: str | Path) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise ValueSetError(f"value set folder {folder}: not a folder (KCDS_VALUESETS_DIR)")
    return sorted(path.glob("*.json"))


def _read_site(folder: str | Path) -> dict[str, _Parsed]:
    out: dict[str, _Parsed] = {}
    for path in site_files(folder):
        for doc, origin in _documents(path):
            parsed = parse(doc, origin)
            key = parsed.valueset.key
            if key in out:
                raise ValueSetError(
                    f"{origin}: value set {key!r} is also defined by {out[key].valueset.origin}"
                )
            out[key] = parsed
    return out


def _resolve(parsed: Mapping[str, _Parsed], shipped: Mapping[str, _Parsed]) -> dict[str, ValueSet]:
    """Members of ``compose.include.valueSet`` references folded in; a set that names its
    own key includes the shipped set of that key (how a site extends a shipped set)."""
    done: dict[str, ValueSet] = {}

    def members(key: str, via: tuple[str, ...]) -> tuple[Member, ...]:
        if key in done:
            return done[key].members
        p = parsed[key]
        found = list(p.valueset.members)
        for ref in p.includes:
            if ref == key and key in shipped and shipped[key] is not p:
                found.extend(shipped[key].valueset.members)  # extends the shipped set
            elif ref in via or ref == key:
                raise ValueSetError(f"{p.valueset.origin}: value set {key!r} includes itself")
            elif ref in parsed:
                found.extend(members(ref, (*via, key)))
            else:
                raise ValueSetError(
                    f"{p.valueset.origin}: compose.include.valueSet {ref!r} is not a loaded "
                    "value set"
                )
        kept = tuple(dict.fromkeys(m for m in found if (m.system, m.code) not in p.excludes))
        done[key] = ValueSet(**{**_fields(p.valueset), "members": kept})
        return kept

    for key in parsed:
        members(key, ())
    return done


def _fields(vs: ValueSet) -> dict[str, Any]:
    return {name: getattr(vs, name) for name in ValueSet.__slots__}


def load(site_folder: str | Path | None = None) -> dict[str, ValueSet]:
    """The shipped sets, with a site folder's sets replacing (same key) or adding to them."""
    shipped = _read_shipped()
    merged = dict(shipped)
    if site_folder:
        merged.update(_read_site(site_folder))
    return _resolve(merged, shipped)


# -- well-formed codes, per system (for ``valuesets check``) -------------------------------


def verhoeff_ok(digits: str) -> bool:
    """The Verhoeff check digit (the last digit) of a SNOMED CT identifier is right."""
    return verhoeff.is_valid(digits)


def mod10_ok(digits: str) -> bool:
    """The LOINC mod-10 check digit (the last digit) is right (it is Luhn's algorithm)."""
    return luhn.is_valid(digits)


_SHAPES = {
    # a code, or a tabular-list block such as F10-F19 (the sets list headers too)
    ICD10CM: re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?|[A-Z][0-9]{2}-[A-Z][0-9]{2}"),
    RXNORM: re.compile(r"[1-9][0-9]{0,7}"),
    ATC: re.compile(r"[ABCDGHJLMNPRSV]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?"),
    NDC: re.compile(r"[0-9]{4}-[0-9]{4}(-[0-9]{2})?|[0-9]{5}-[0-9]{3,4}(-[0-9]{1,2})?|[0-9]{11}"),
}
_LOINC = re.compile(r"([0-9]{1,7})-([0-9])")
_LOINC_ANSWER = re.compile(r"L[AP][0-9]{1,7}-[0-9]")  # answer/part codes: shape only
_SNOMED = re.compile(r"[1-9][0-9]{5,17}")


def code_problem(system: str, code: str) -> str | None:
    """Why ``code`` is not a well-formed code of ``system`` (None when it is, or when the
    system has no rule here)."""
    if system == SNOMED:
        if not _SNOMED.fullmatch(code):
            return "SNOMED CT id must be 6-18 digits, no leading zero"
        if code[-3:-1] not in ("00", "10"):
            return f"SNOMED CT partition {code[-3:-1]} is not a concept id"
        return None if verhoeff_ok(code) else "SNOMED CT Verhoeff check digit is wrong"
    if system == LOINC:
        if _LOINC_ANSWER.fullmatch(code):
            return None
        m = _LOINC.fullmatch(code)
        if not m:
            return "LOINC code must be digits, '-', check digit"
        return None if mod10_ok(m[1] + m[2]) else "LOINC mod-10 check digit is wrong"
    shape = _SHAPES.get(system)
    if shape is not None and not shape.fullmatch(code):
        names = {ICD10CM: "ICD-10-CM", RXNORM: "RxNorm", ATC: "ATC", NDC: "NDC"}
        return f"not a well-formed {names[system]} code"
    return None


def problems(
    site_folder: str | Path | None = None, wanted: Iterable[str] = ()
) -> tuple[dict[str, ValueSet], list[str]]:
    """Everything ``valuesets check`` reports: files that are not readable, not ValueSets or
    not valid R4 (checked with the fhir.resources R4B models, which accept R4 JSON), sets
    that cannot be resolved (duplicate ids, unknown includes), malformed codes, and value
    sets in ``wanted`` that are not loaded. Every file is checked; the loaded sets are empty
    when a problem keeps them from loading. Raises :class:`ValueSetError` only for a folder
    that is not one."""
    from fhir.resources.R4B.valueset import ValueSet as R4ValueSet
    from pydantic import ValidationError

    found: list[str] = []
    docs: list[tuple[Any, str]] = []
    for item in sorted(SHIPPED.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            docs.append((json.loads(item.read_text("utf-8")), f"shipped {item.name}"))
    for path in site_files(site_folder) if site_folder else ():
        try:
            docs.extend(_documents(path))
        except ValueSetError as e:
            found.append(str(e))
    for doc, origin in docs:
        try:
            parse(doc, origin)
            R4ValueSet.model_validate(doc)
        except ValueSetError as e:
            found.append(str(e))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            found.append(f"{origin}: not a valid R4 ValueSet at {where}: {first['msg']}")
    if found:
        return {}, found
    try:
        loaded = load(site_folder)
    except ValueSetError as e:
        return {}, [str(e)]
    for vs in loaded.values():
        for m in vs.members:
            why = code_problem(m.system, m.code)
            if why:
                found.append(f"{vs.key}: {m.code} ({m.system}): {why}")
    for key in sorted(set(wanted) - set(loaded)):
        found.append(f"{key}: named by the rules but not loaded")
    return loaded, found
