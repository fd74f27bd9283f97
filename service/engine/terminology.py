"""The one matcher every rule uses: FHIR ValueSets first, text where codes do not reach.

Concepts (the names rules ask about) are defined in ``service/engine/data/valuesets.yaml``:
each draws its codes from one or more FHIR ValueSets (:mod:`service.engine.valuesets`,
shipped or a site's), optionally narrowed by a display pattern (a subset of a published set,
so every code still comes from it), plus the few codes no source covered (the gaps
``SOURCES.md`` names), plus the text patterns of the concept. The names the rules used before
the ValueSets map to them in the YAML's ``aliases`` (one place).

Matching a CodeableConcept against a concept (ketamine-rules.md §3a):

* a code in the concept's set counts on the code alone (ICD-10-CM compared after normalising
  case and dots, the sets list headers and leaves; NDC at product level, labeler-product,
  as §2 recognises Spravato by 50458-028; other systems exactly);
* a code the set flags ``secondary-source`` / ``display-not-retrieved`` counts only with a
  matching text or display (``code+text``);
* **text counts where codes do not**: an entry none of whose codes is in the set — text only,
  a local code, a SNOMED CT or RxNorm concept the published sets left out — is matched on its
  text and displays with the concept's patterns. Except for systems the YAML's
  ``code_decides`` names (ICD-10-CM: the sets enumerate the whole release range), where an
  entry coded in that system is judged by its code: a deliberate exclusion (F17 nicotine)
  stays excluded;
* text matching is whole-word (the patterns carry ``\\b``) and negation-aware: a match with
  "no", "not", "without", "denies", "negative for", "rule(d) out", "family history of", …
  shortly before it in the same clause, "non-" right before it, or "ruled out"/"excluded"/
  "negative" right after it, does not count.

The result is typed (:class:`ConceptMatch`): matched on code, code+text or text, with the
record's coding, the set's display and the words that matched, so a card can say
"matched on text: 'h/o AVM'".

What the record and the rules use (stable): :func:`load_terminology` (once, at start-up);
``classify(concept)`` → every :class:`ConceptMatch`; ``member(concept, name)``;
``ingredients(concept)`` → the drug-class :class:`Ingredient` s (``drug_class`` is the concept
or alias asked about, ``how`` says code or text); ``codes(name, system)`` → the codes of a
concept (e.g. ``codes("obs_phq9", "loinc")``); ``loinc_codes`` / ``loinc_filters`` for the
YAML's LOINC lists; ``names()`` / ``drug_classes()``. A name is a ValueSet key
(``aneurysm``), a YAML concept (``hallucinogen_use``) or an alias of an old name (``avm``).
"""

from __future__ import annotations

import re
import re._constants as _c  # the parsed form of a pattern, to pre-test it (see _heads)
import re._parser as _parser
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import valuesets as vs_module
from .valuesets import ValueSet, ValueSetError

DATA = resources.files("service.engine") / "data"


#: libyaml's safe loader when PyYAML was built with it (10x faster than the pure-Python one)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(name: str) -> Any:
    return yaml.load(DATA.joinpath(name).read_text("utf-8"), Loader=_YAML_LOADER)


@dataclass(frozen=True, slots=True)
class CodeRef:
    """A coding as found in the record, for cards: system short name, code, display."""

    system: str
    code: str
    display: str | None

    def label(self) -> str:
        return f"{self.system} {self.code}" + (f" “{self.display}”" if self.display else "")


class MatchedOn(StrEnum):
    CODE = "code"  # a code of the set, on its own
    CODE_AND_TEXT = "code+text"  # a flagged code of the set, confirmed by text
    TEXT = "text"  # no code of the set: the text or a display matched the patterns


@dataclass(frozen=True, slots=True)
class ConceptMatch:
    """Why a CodeableConcept belongs to a concept."""

    valueset: str  # the concept's name (as the rule asked)
    coding: CodeRef | None  # the record's coding that is in the set; None on text
    how: MatchedOn
    text: str = ""  # on text: the entry's text and displays (as recorded, up to 120 chars)
    display: str = ""  # on code: the set's display of the code
    source: str = ""  # on code: the ValueSet key (or "local" / "site" for a gap or site code)
    words: str = ""  # on text: the words the concept's pattern matched

    @property
    def on_text(self) -> bool:
        return self.how is MatchedOn.TEXT

    def describe(self) -> str:
        """How a card says it: "matched on text: 'h/o AVM'", or the code and its set."""
        if self.on_text:
            return f"matched on text: ‘{self.text}’ (no code in the shipped value set: verify)"
        assert self.coding is not None
        how = " with matching text" if self.how is MatchedOn.CODE_AND_TEXT else ""
        return f"{self.coding.label()} in value set {self.source}{how}"


@dataclass(frozen=True, slots=True)
class Ingredient:
    """A drug of a class found in a medication concept."""

    name: str
    drug_class: str
    group: str
    how: MatchedOn = MatchedOn.TEXT
    coding: CodeRef | None = field(default=None, compare=False)


def listed(value: Any) -> list[Any]:
    """A JSON array from patient data, or nothing: records can hold anything."""
    return value if isinstance(value, list) else []


def text_or_none(value: Any) -> str | None:
    """A JSON string from patient data, or None (a list or object where text belongs)."""
    return value if isinstance(value, str) else None


def obj(value: Any) -> dict[str, Any]:
    """A JSON object from patient data, or an empty one."""
    return value if isinstance(value, dict) else {}


def concept_text(concept: Any) -> str:
    """All human text of a CodeableConcept: its text and the displays of its codings."""
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")]
    parts.extend(c.get("display") for c in listed(concept.get("coding")) if isinstance(c, dict))
    return " | ".join(p for p in parts if isinstance(p, str))


# -- code normalisation ---------------------------------------------------------------------


def normalise(system: str, code: str) -> str:
    """A code as compared: ICD-10-CM/PCS upper case without dots, ATC upper case, NDC as its
    product (see :func:`ndc_product`), others stripped."""
    code = code.strip()
    if system in ("icd10cm", "icd10pcs"):
        return code.replace(".", "").upper()
    if system == "atc":
        return code.upper()
    if system == "ndc":
        return ndc_product(code) or code
    return code


def ndc_product(code: str) -> str | None:
    """The labeler-product part of an NDC in the 11-digit 5-4 form ("50458-0028"), from a
    hyphenated package or product code (4-4-2, 5-3-2, 5-4-1, 4-4, 5-3, 5-4) or 11 digits;
    None when the code cannot be read unambiguously (10 digits without hyphens)."""
    parts = code.strip().split("-")
    if len(parts) == 1:
        return f"{code[:5]}-{code[5:9]}" if len(code) == 11 and code.isdigit() else None
    if not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    labeler, product = parts[0], parts[1]
    if len(labeler) > 5 or len(product) > 4:
        return None
    return f"{labeler.zfill(5)}-{product.zfill(4)}"


# -- negation-aware text matching -----------------------------------------------------------

_CLAUSE_END = re.compile(r"[,;.|()\[\]\n:]")
_NEGATED_BEFORE = re.compile(
    r"\b(?:no|not|without|denies|denied|deny|negative(?: for)?|never|free of|absence of|"
    r"rule out|ruled out|r/o|family history(?: of)?|fh of|fhx)\b",
    re.I,
)
_NEGATED_AFTER = re.compile(r"^\W{0,3}(?:ruled out|excluded|negative|denied)\b", re.I)
_WINDOW_WORDS = 6
_NON_PREFIX = re.compile(r"\bnon[- ]?$", re.I)


def affirmed(text: str, start: int, end: int) -> bool:
    """The match text[start:end] is not negated in its clause (a NegEx-like window: up to
    six words before it, or a negation right after it)."""
    if _NON_PREFIX.search(text[max(0, start - 4) : start]):
        return False  # "non-psychotic", "non-epileptic", "non-ischemic"
    before = _CLAUSE_END.split(text[max(0, start - 80) : start])[-1]
    window = " ".join(before.split()[-_WINDOW_WORDS:])
    if _NEGATED_BEFORE.search(window):
        return False
    after = _CLAUSE_END.split(text[end : end + 30])[0]
    return not _NEGATED_AFTER.search(after)


def find_affirmed(pattern: re.Pattern[str], text: str) -> str | None:
    """The first affirmed match of ``pattern`` in ``text`` (the words), or None."""
    for m in pattern.finditer(text):
        if affirmed(text, m.start(), m.end()):
            return m.group(0)
    return None


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.I) if patterns else None


# -- a cheap pre-test for the text patterns ----------------------------------------------------
# Most entries match none of a concept's patterns; running ~60 regexes on each new entry is
# what a cold record costs. Every pattern starts at a word (\b), so the first letters a match
# can start with are known from the pattern: a concept whose possible starts do not occur at
# any word start of the text cannot match, and its regex is not run. A pattern whose starts
# cannot be read (no leading \b, an optional first letter) makes its concept always run.

_HEAD = 4  # letters of a match's start that are compared


def _heads(items: Any, prefixes: set[str]) -> tuple[set[str], bool]:
    """The possible lower-case starts (up to _HEAD characters) of a parsed regex sequence,
    extending ``prefixes``; the flag says the whole sequence was read (the caller may go on)."""
    items = list(items)
    for i, (op, av) in enumerate(items):
        if all(len(p) >= _HEAD for p in prefixes):
            return prefixes, False
        if op in (_c.ASSERT_NOT, _c.ASSERT) or (op is _c.AT and av is _c.AT_BOUNDARY):
            continue  # zero width
        if op is _c.LITERAL:
            prefixes = {p + chr(av).lower() if len(p) < _HEAD else p for p in prefixes}
        elif op is _c.IN and all(o is _c.LITERAL for o, _ in av) and len(av) <= 8:
            prefixes = {
                p + chr(v).lower() if len(p) < _HEAD else p for p in prefixes for _, v in av
            }
        elif op is _c.SUBPATTERN:
            prefixes, whole = _heads(av[-1], prefixes)
            if not whole:
                return prefixes, False
        elif op is _c.BRANCH:
            found: set[str] = set()
            whole = True
            for branch in av[1]:
                heads, done = _heads(branch, prefixes)
                found |= heads
                whole = whole and done
            prefixes = found
            if not whole:
                return prefixes, False
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            taken, _ = _heads(av[2], prefixes)  # once, then the start is as far as read
            if av[0] == 0:  # or not at all: what follows starts the match
                taken |= _heads(items[i + 1 :], prefixes)[0]
            return taken, False
        else:  # a class, any: the start is as far as it was read
            return prefixes, False
    return prefixes, True


def pattern_heads(pattern: str) -> set[str] | None:
    """The possible starts of a match of one text pattern, or None when they cannot be read
    (the pattern does not start with \b and a letter)."""
    try:
        items = list(_parser.parse(pattern, re.I))
    except (re.error, TypeError, ValueError):
        return None
    lead = [(op, av) for op, av in items if op not in (_c.ASSERT_NOT, _c.ASSERT)]
    if not lead or lead[0] != (_c.AT, _c.AT_BOUNDARY):
        return None
    heads, _ = _heads(items, {""})
    if not heads or any(not h or not h[0].isalnum() for h in heads):
        return None
    return heads


_WORD_START = re.compile(r"\b\w")


def word_starts(text: str) -> set[str]:
    """Every 1 to _HEAD character string that starts at a word of ``text`` (lower case)."""
    low = text.lower()
    return {
        low[m.start() : m.start() + k]
        for m in _WORD_START.finditer(low)
        for k in range(1, _HEAD + 1)
    }


# -- concepts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    concept: str
    needs_text: bool
    display: str
    source: str
    prefix: bool = False


@dataclass
class Concept:
    """A name rules ask about: codes from value sets (and gap codes), and text patterns."""

    name: str
    title: str
    valuesets: tuple[str, ...]
    patterns: list[str]  # text patterns, compiled into ``text`` with the ingredient names
    ingredients: dict[str, str]  # lower-case name or synonym → (canonical name) for drugs
    groups: dict[str, str]  # canonical ingredient name → group
    code_systems: set[str] = field(default_factory=set)  # short names of its codes' systems
    members: set[tuple[str, str]] = field(default_factory=set)  # (system, code) as written
    text: re.Pattern[str] | None = None
    text_not: re.Pattern[str] | None = None  # text that vetoes a text match (never a code)
    heads: set[str] | None = None  # possible starts of a text match; None: always try
    ingredient_re: re.Pattern[str] | None = None


class Terminology:
    """All concepts, indexed once for O(1) code lookups; classification results are cached."""

    def __init__(
        self,
        data: Mapping[str, Any],
        valuesets: Mapping[str, ValueSet],
        extra_codes: Mapping[str, list[dict]] | None = None,
        extra_drugs: Mapping[str, list[str]] | None = None,
    ):
        self.version: str = str(data["version"])
        self.systems: dict[str, str] = dict(data["systems"])
        self.short: dict[str, str] = {uri: name for name, uri in self.systems.items()}
        self.code_decides: frozenset[str] = frozenset(data.get("code_decides") or ())
        self.valuesets: dict[str, ValueSet] = dict(valuesets)
        self.loinc: dict[str, dict[str, Any]] = data["loinc"]
        self.aliases: dict[str, tuple[str, ...]] = {
            name: tuple(target if isinstance(target, list) else [target])
            for name, target in (data.get("aliases") or {}).items()
        }
        self.concepts: dict[str, Concept] = {}
        # (system short name, normalised code) → entries; prefix entries by system
        self._exact: dict[tuple[str, str], list[_Entry]] = defaultdict(list)
        self._prefix: dict[str, list[tuple[str, _Entry]]] = defaultdict(list)
        for name, spec in (data.get("concepts") or {}).items():
            self._add_concept(name, spec or {})
        for key in self.valuesets.keys() - self.concepts.keys():
            self._add_concept(key, {})  # a set no concept names (a site's new one): by code
        # a site policy's extra codes and drug names; names no concept knows have no effect
        # (``ketamine-cds policy check`` warns about them)
        # (an alias of several concepts gives them to its last, the catch-all: a local drug
        # under cns_depressants is an "other CNS depressant", not a benzodiazepine or opioid)
        for name, codes in (extra_codes or {}).items():
            for target in self._targets(name, strict=False)[-1:]:
                for c in codes:
                    prefix = c.get("match") == "prefix"
                    self._index(target, c["system"], str(c["code"]), False, "", "site", prefix)
        for name, drugs in (extra_drugs or {}).items():
            for target in self._targets(name, strict=False)[-1:]:
                concept = self.concepts[target]
                for drug in drugs:
                    concept.ingredients[drug.lower()] = drug
                    concept.groups.setdefault(drug, "local")
        for concept in self.concepts.values():
            names = [rf"\b{re.escape(n)}\b" for n in concept.ingredients]  # names are text too
            concept.text = _compile([*concept.patterns, *names])
            concept.heads = _all_heads([*concept.patterns, *names])
            if concept.ingredients:
                concept.ingredient_re = _names_pattern(concept.ingredients)
        unknown = {t for targets in self.aliases.values() for t in targets} - set(self.concepts)
        if unknown:
            raise ValueSetError(f"valuesets.yaml: aliases name unknown concepts {sorted(unknown)}")
        self._cache: dict[Any, tuple[ConceptMatch, ...]] = {}
        # checked here, so a site set that drops a listed LOINC code fails at start-up
        self._loinc_filters = self._read_loinc_lists()
        self._ingredient_cache: dict[Any, tuple[Ingredient, ...]] = {}

    # -- building -----------------------------------------------------------------------

    def _add_concept(self, name: str, spec: Mapping[str, Any]) -> None:
        sets = tuple(spec.get("valuesets") or ((name,) if name in self.valuesets else ()))
        missing = [s for s in sets if s not in self.valuesets]
        if missing:
            raise ValueSetError(f"concept {name!r} names value sets that are not loaded: {missing}")
        ingredients: dict[str, str] = {}
        groups: dict[str, str] = {}
        for ing in spec.get("ingredients") or ():
            for n in (ing["name"], *(ing.get("synonyms") or ())):
                ingredients[n.lower()] = ing["name"]
            groups[ing["name"]] = ing.get("group", name)
        concept = Concept(
            name,
            str(spec.get("title") or (self.valuesets[sets[0]].title if sets else name)),
            sets,
            list(spec.get("text") or ()),
            ingredients,
            groups,
            text_not=_compile(spec.get("text_not") or ()),
        )
        self.concepts[name] = concept
        keep = _compile([spec["display"]]) if spec.get("display") else None
        drop = _compile([spec["display_not"]]) if spec.get("display_not") else None
        for key in sets:
            for m in self.valuesets[key].members:
                system = self.short.get(m.system, m.system)  # a local system by its URI
                if keep is not None and not keep.search(m.display):
                    continue
                if drop is not None and drop.search(m.display):
                    continue
                self._index(name, system, m.code, m.needs_text, m.display, key)
        for c in spec.get("codes") or ():
            self._index(
                name,
                c["system"],
                str(c["code"]),
                bool(c.get("needs_text")),
                str(c.get("display") or ""),
                "local",
                prefix=c.get("match") == "prefix",
            )

    def _index(
        self,
        concept: str,
        system: str,
        code: str,
        needs_text: bool,
        display: str,
        source: str,
        prefix: bool = False,
    ) -> None:
        entry = _Entry(concept, needs_text, display, source, prefix)
        self.concepts[concept].code_systems.add(system)
        self.concepts[concept].members.add((system, code))
        if prefix:
            self._prefix[system].append((normalise(system, code), entry))
        else:
            self._exact[(system, normalise(system, code))].append(entry)

    def _targets(self, name: str, strict: bool = True) -> tuple[str, ...]:
        """The concepts a name stands for (an alias may stand for several); an unknown name
        is an error, or nothing when not ``strict``."""
        if name in self.aliases:
            return self.aliases[name]
        if name in self.concepts:
            return (name,)
        if strict:
            raise ValueSetError(f"unknown value set or concept {name!r}")
        return ()

    # -- what is known ------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name a rule or a site policy may use: concepts and aliases."""
        return sorted({*self.concepts, *self.aliases})

    def drug_classes(self) -> list[str]:
        """The names a site's ``extra_drugs`` may extend: drug concepts and their aliases."""
        drugs = {name for name, c in self.concepts.items() if c.ingredients}
        drugs |= {a for a, targets in self.aliases.items() if set(targets) & drugs}
        return sorted(drugs)

    def codes(self, name: str, system: str | None = None) -> frozenset[str]:
        """The codes (as written) of a concept or alias — its sets' after any display filter,
        gap and site codes — optionally of one system (a short name such as ``loinc``, or a
        system URI)."""
        short = self.short.get(system, system) if system else None
        return frozenset(
            code
            for target in self._targets(name)
            for s, code in self.concepts[target].members
            if short is None or s == short
        )

    # -- concepts -------------------------------------------------------------------------

    def classify(self, concept: Any) -> tuple[ConceptMatch, ...]:
        """Every concept (and alias) the CodeableConcept belongs to, with why."""
        if not isinstance(concept, dict):
            return ()
        key = _concept_key(concept)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        codings = key[0]
        text = concept_text(concept)
        found: dict[str, ConceptMatch] = {}
        coded_in: set[str] = set()  # code_decides systems the entry is coded in
        for system_uri, code, display in codings:
            if not system_uri or not code:
                continue
            system = self.short.get(system_uri, system_uri)  # a local system by its URI
            if system in self.code_decides:
                coded_in.add(system)
            ref = CodeRef(system, code, display)
            for entry in self._entries(system, code):
                if entry.concept in found:
                    continue
                if not entry.needs_text:
                    found[entry.concept] = ConceptMatch(
                        entry.concept, ref, MatchedOn.CODE, "", entry.display, entry.source
                    )
                    continue
                pattern = self.concepts[entry.concept].text
                if pattern is not None and find_affirmed(pattern, text):
                    found[entry.concept] = ConceptMatch(
                        entry.concept, ref, MatchedOn.CODE_AND_TEXT, "", entry.display, entry.source
                    )
        if text:
            starts = word_starts(text)
            for name, c in self.concepts.items():
                if name in found or c.text is None or coded_in & c.code_systems:
                    continue
                if c.heads is not None and c.heads.isdisjoint(starts):
                    continue  # no word of the text starts as a match would
                if c.text_not is not None and c.text_not.search(text):
                    continue
                words = find_affirmed(c.text, text)
                if words:
                    found[name] = ConceptMatch(name, None, MatchedOn.TEXT, text[:120], words=words)
        for alias, targets in self.aliases.items():
            for target in targets:
                if target in found:
                    found[alias] = _renamed(found[target], alias)
                    break
        result = tuple(found.values())
        if len(self._cache) < 50_000:
            self._cache[key] = result
        return result

    def _entries(self, system: str, code: str) -> list[_Entry]:
        norm = normalise(system, code)
        out = list(self._exact.get((system, norm), ()))
        for prefix, entry in self._prefix.get(system, ()):
            if norm.startswith(prefix):
                out.append(entry)
        return out

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
        """The drug-class ingredients of a medication concept: by code (the ingredient named
        in the set's display, else the display itself), then by name in the text."""
        if not isinstance(concept, dict):
            return ()
        key = _concept_key(concept)  # what decides the matches and the text
        hit = self._ingredient_cache.get(key)
        if hit is not None:
            return hit
        matches = self.classify(concept)
        text = concept_text(concept)
        out: list[Ingredient] = []
        by_name = {m.valueset: m for m in matches}
        for m in matches:
            for target in self.aliases.get(m.valueset, (m.valueset,)):
                own, c = by_name.get(target), self.concepts[target]
                if own is None or not c.ingredients:
                    continue
                ing = self._ingredient(c, own, text, m.valueset)
                if ing is not None and ing not in out:
                    out.append(ing)
                break
        result = tuple(out)
        if len(self._ingredient_cache) < 50_000:  # records repeat the same products
            self._ingredient_cache[key] = result
        return result

    @staticmethod
    def _ingredient(c: Concept, m: ConceptMatch, text: str, drug_class: str) -> Ingredient | None:
        source = m.display if not m.on_text else m.words
        named = c.ingredient_re.search(source) if c.ingredient_re and source else None
        if named is None and c.ingredient_re is not None:
            named = c.ingredient_re.search(text)
        if named is not None:
            name = c.ingredients[named.group(0).lower()]
            return Ingredient(name, drug_class, c.groups.get(name, c.name), m.how, m.coding)
        label = m.display or (m.coding.display if m.coding else None) or m.text
        if not label:
            return None
        return Ingredient(label[:60], drug_class, c.name, m.how, m.coding)

    # -- observations ---------------------------------------------------------------------

    @cached_property
    def _loinc_plain(self) -> frozenset[str]:
        """LOINC codes a shipped or site set holds without a verification flag."""
        loinc = self.systems["loinc"]
        return frozenset(
            m.code
            for vs in self.valuesets.values()
            for m in vs.members
            if m.system == loinc and not m.needs_text
        )

    def loinc_filters(self) -> dict[str, re.Pattern[str] | None]:
        """Every listed LOINC code → ``None`` when a value set holds it unflagged (counts on
        the code), else the list's text that must confirm it (a gap or a flagged code)."""
        return dict(self._loinc_filters)

    def _read_loinc_lists(self) -> dict[str, re.Pattern[str] | None]:
        out: dict[str, re.Pattern[str] | None] = {}
        for name, spec in self.loinc.items():
            confirm = _compile(spec.get("text") or ())
            for code in spec["codes"]:
                if code in self._loinc_plain:
                    out[code] = None
                elif confirm is None:
                    raise ValueSetError(
                        f"valuesets.yaml loinc.{name}: {code} is in no loaded value set (a site "
                        "set may have replaced the one holding it) and the list has no text to "
                        "confirm it"
                    )
                else:
                    out[code] = confirm
        return out

    def loinc_codes(self, name: str) -> tuple[str, ...]:
        return tuple(self.loinc[name]["codes"])

    @cached_property
    def loinc_system(self) -> str:
        return self.systems["loinc"]


def _concept_key(concept: dict[str, Any]) -> tuple[Any, ...]:
    """What of a CodeableConcept classifying it reads: each coding's system, code and display,
    and the text. The key of the classification and ingredient caches."""
    codings = tuple(
        (
            text_or_none(c.get("system")),
            text_or_none(c.get("code")),
            text_or_none(c.get("display")),
        )
        for c in listed(concept.get("coding"))
        if isinstance(c, dict)
    )
    return codings, text_or_none(concept.get("text"))


def _all_heads(patterns: list[str]) -> set[str] | None:
    out: set[str] = set()
    for p in patterns:
        heads = pattern_heads(p)
        if heads is None:
            return None
        out |= heads
    return out


def _renamed(m: ConceptMatch, name: str) -> ConceptMatch:
    return ConceptMatch(name, m.coding, m.how, m.text, m.display, m.source, m.words)


def _names_pattern(names: Mapping[str, str]) -> re.Pattern[str]:
    alternation = "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternation})\b", re.I)


def load_terminology(
    site_folder: str | Path | None = None,
    extra_codes: Mapping[str, list[dict]] | None = None,
    extra_drugs: Mapping[str, list[str]] | None = None,
) -> Terminology:
    """The service's terminology: the shipped ValueSets (with a site folder's), the concepts
    of ``valuesets.yaml``, and a site policy's extra codes and drug names. Raises
    :class:`ValueSetError` naming the file or setting at fault."""
    return Terminology(
        load_yaml("valuesets.yaml"), vs_module.load(site_folder), extra_codes, extra_drugs
    )
