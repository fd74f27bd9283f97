"""Value sets as data, and the one matcher every rule uses.

The value sets live in ``service/engine/data/valuesets.yaml`` (reviewed by clinical governance).
Matching a FHIR CodeableConcept against them follows one rule set:

* a *verified* code matches on its own (ICD-10-CM by prefix with dots ignored, others exactly);
* an *unverified* code matches only when the concept's text or a coding display also matches
  one of the value set's text patterns;
* a text pattern alone matches only where the value set says ``text_alone``;
* ``exclude`` prefixes veto a match (e.g. abortive outcomes O00–O08 in the O chapter).

Drug classes match by ingredient name (whole word) in the text and coding displays, since real
records carry RxNorm product codes that cannot be enumerated but whose names are stable.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

import yaml

DATA = resources.files("service.engine") / "data"


def load_yaml(name: str) -> Any:
    return yaml.safe_load(DATA.joinpath(name).read_text("utf-8"))


@dataclass(frozen=True, slots=True)
class CodeRef:
    """A coding as found in the record, for cards: system short name, code, display."""

    system: str
    code: str
    display: str | None

    def label(self) -> str:
        return f"{self.system} {self.code}" + (f" “{self.display}”" if self.display else "")


@dataclass(frozen=True, slots=True)
class Ingredient:
    name: str
    drug_class: str
    group: str


def listed(value: Any) -> list[Any]:
    """A JSON array from patient data, or nothing: records can hold anything."""
    return value if isinstance(value, list) else []


def text_or_none(value: Any) -> str | None:
    """A JSON string from patient data, or None (a list or object where text belongs)."""
    return value if isinstance(value, str) else None


def obj(value: Any) -> dict[str, Any]:
    """A JSON object from patient data, or an empty one."""
    return value if isinstance(value, dict) else {}


def normalise(system: str, code: str) -> str:
    return code.replace(".", "").upper() if system == "icd10cm" else code.strip()


def concept_text(concept: Any) -> str:
    """All human text of a CodeableConcept: its text and the displays of its codings."""
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")]
    parts.extend(c.get("display") for c in listed(concept.get("coding")) if isinstance(c, dict))
    return " | ".join(p for p in parts if isinstance(p, str))


@dataclass(frozen=True, slots=True)
class ConceptMatch:
    valueset: str
    coding: CodeRef | None  # None when matched on text alone
    how: str  # "code", "code+text" or "text"


class Terminology:
    """All value sets, indexed for fast classification of concepts."""

    def __init__(
        self,
        data: dict[str, Any],
        extra_codes: dict[str, list[dict]] | None = None,
        extra_drugs: dict[str, list[str]] | None = None,
    ):
        self.version: str = str(data["version"])
        self.systems: dict[str, str] = dict(data["systems"])
        self.short: dict[str, str] = {uri: name for name, uri in self.systems.items()}
        self.valuesets: dict[str, dict[str, Any]] = data["valuesets"]
        self.drug_classes: dict[str, dict[str, Any]] = data["drug_classes"]
        self.loinc: dict[str, dict[str, Any]] = data["loinc"]
        # (system, normalised code) → [(valueset, verified)]
        self._exact: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
        self._prefix: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
        self._exclude: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._text: dict[str, re.Pattern[str]] = {}
        for name, vs in self.valuesets.items():
            codes = list(vs.get("codes") or ())
            codes += [dict(c, verified=True) for c in (extra_codes or {}).get(name, ())]
            for c in codes:
                key = (c["system"], normalise(c["system"], str(c["code"])))
                index = self._prefix if c.get("match") == "prefix" else self._exact
                index[key].append((name, bool(c.get("verified"))))
            for c in vs.get("exclude") or ():
                self._exclude[name].append((c["system"], normalise(c["system"], str(c["code"]))))
            if vs.get("text"):
                self._text[name] = re.compile("|".join(f"(?:{p})" for p in vs["text"]), re.I)
        self._ingredients: dict[str, list[Ingredient]] = defaultdict(list)
        for cls, spec in self.drug_classes.items():
            for ing in spec["ingredients"]:
                names = [ing["name"], *(ing.get("synonyms") or ())]
                for n in names:
                    self._ingredients[n.lower()].append(Ingredient(ing["name"], cls, ing["group"]))
        for cls, names in (extra_drugs or {}).items():
            for n in names:
                self._ingredients[n.lower()].append(Ingredient(n, cls, "local"))
        alternation = "|".join(
            sorted((re.escape(n) for n in self._ingredients), key=len, reverse=True)
        )
        self._ingredient_re = re.compile(rf"\b(?:{alternation})\b", re.I)
        self._cache: dict[Any, tuple[ConceptMatch, ...]] = {}
        self._ingredient_cache: dict[str, tuple[Ingredient, ...]] = {}
        self._loinc_index = {
            code: name for name, spec in self.loinc.items() for code in spec["codes"]
        }

    # -- concepts -------------------------------------------------------------------------

    def classify(self, concept: Any) -> tuple[ConceptMatch, ...]:
        """Every value set the concept belongs to, with the coding that put it there."""
        if not isinstance(concept, dict):
            return ()
        codings = tuple(
            (
                text_or_none(c.get("system")),
                text_or_none(c.get("code")),
                text_or_none(c.get("display")),
            )
            for c in listed(concept.get("coding"))
            if isinstance(c, dict)
        )
        key = (codings, text_or_none(concept.get("text")))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        text = concept_text(concept)
        found: dict[str, ConceptMatch] = {}
        vetoed: set[str] = set()
        for system_uri, code, display in codings:
            system = self.short.get(system_uri or "")
            if system is None or not code:
                continue
            norm = normalise(system, code)
            ref = CodeRef(system, code, display)
            candidates = list(self._exact.get((system, norm), ()))
            for i in range(1, len(norm) + 1):
                candidates.extend(self._prefix.get((system, norm[:i]), ()))
            for name, verified in candidates:
                if any(s == system and norm.startswith(p) for s, p in self._exclude.get(name, ())):
                    vetoed.add(name)
                    continue
                if verified:
                    found.setdefault(name, ConceptMatch(name, ref, "code"))
                elif name in self._text and self._text[name].search(text):
                    found.setdefault(name, ConceptMatch(name, ref, "code+text"))
        if text:
            for name, pattern in self._text.items():
                if name in found or name in vetoed:
                    continue
                if self.valuesets[name].get("text_alone") and pattern.search(text):
                    found[name] = ConceptMatch(name, None, "text")
        result = tuple(found.values())
        if len(self._cache) < 50_000:
            self._cache[key] = result
        return result

    def member(self, concept: Any, valueset: str) -> ConceptMatch | None:
        for m in self.classify(concept):
            if m.valueset == valueset:
                return m
        return None

    def first_coding(self, concept: Any) -> CodeRef | None:
        """The concept's first coding in a known system (for naming it on a card)."""
        if not isinstance(concept, dict):
            return None
        for c in listed(concept.get("coding")):
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                uri = text_or_none(c.get("system"))
                return CodeRef(
                    self.short.get(uri or "", uri or "no-system"),
                    c["code"],
                    text_or_none(c.get("display")),
                )
        return None

    # -- drugs ----------------------------------------------------------------------------

    def ingredients(self, concept: Any) -> tuple[Ingredient, ...]:
        """The classified ingredients named in a medication concept."""
        text = concept_text(concept)
        if not text:
            return ()
        hit = self._ingredient_cache.get(text)
        if hit is not None:
            return hit
        out: list[Ingredient] = []
        for m in self._ingredient_re.finditer(text):
            for ing in self._ingredients[m.group(0).lower()]:
                if ing not in out:
                    out.append(ing)
        if len(self._ingredient_cache) < 50_000:  # records repeat the same products
            self._ingredient_cache[text] = tuple(out)
        return tuple(out)

    # -- observations ---------------------------------------------------------------------

    def loinc_filters(self) -> dict[str, re.Pattern[str] | None]:
        """Every listed LOINC code → ``None`` when verified, else the text that confirms it."""
        out: dict[str, re.Pattern[str] | None] = {}
        for spec in self.loinc.values():
            confirm = None
            if not spec.get("verified"):
                confirm = re.compile("|".join(f"(?:{p})" for p in spec["text"]), re.I)
            for code in spec["codes"]:
                out[code] = confirm
        return out

    def loinc_codes(self, name: str) -> tuple[str, ...]:
        return tuple(self.loinc[name]["codes"])

    @cached_property
    def loinc_system(self) -> str:
        return self.systems["loinc"]
