"""``ketamine-cds valuesets``: the FHIR ValueSets the service matches against — the shipped
ones and a site folder's (``KCDS_VALUESETS_DIR``, or ``--dir``): list them, show one, check
them (valid R4 ValueSets, well-formed codes, every value set a rule or concept names loaded)."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import EXIT_FAILED, ConfigProblem, InputError, dumps

if TYPE_CHECKING:
    from service.engine.terminology import Terminology
    from service.engine.valuesets import ValueSet

DIR_OPTION = click.option(
    "--dir",
    "folder",
    type=click.Path(),
    help="Site folder of ValueSet JSON files (default: KCDS_VALUESETS_DIR).",
)

#: the terminology's own calls whose string arguments name a value set or concept
NAMING_CALLS = frozenset({"member", "codes", "loinc_codes"})
#: a function of the scanned modules with a parameter of one of these names is a naming call
NAMING_PARAMETERS = frozenset(
    {"valueset", "valuesets", "concept", "concepts", "conditions", "drug_class", "classes"}
)
#: attributes that, compared with a string, name a value set or concept
NAMING_ATTRIBUTES = frozenset({"valueset", "drug_class"})


def _folder(folder: str | None) -> str | None:
    """The site folder: ``--dir``, else KCDS_VALUESETS_DIR (None: the shipped sets only)."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise InputError(f"--dir {folder}: not a folder")
        return folder
    from service.config import ConfigError, Settings

    try:
        return Settings.from_env().valuesets_dir
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def _terminology(folder: str | None) -> Terminology:
    """The service's terminology with the site folder; a folder or file it cannot use is a
    configuration error (exit 3), as it would stop the service."""
    from service.engine.terminology import ValueSetError, load_terminology

    try:
        return load_terminology(folder)
    except ValueSetError as exc:
        raise ConfigProblem(str(exc)) from None


def _short(terms: Terminology, uri: str) -> str:
    return terms.short.get(uri, uri)


def _summary(terms: Terminology, vs: ValueSet) -> dict:
    return {
        "key": vs.key,
        "id": vs.id,
        "url": vs.url,
        "title": vs.title,
        "version": vs.version,
        "origin": vs.origin,
        "codes": {_short(terms, s): n for s, n in sorted(vs.systems().items())},
        "concepts": _concepts_using(terms, vs.key),
    }


def _concepts_using(terms: Terminology, key: str) -> list[str]:
    """The concept and alias names whose codes come from the set."""
    direct = {name for name, c in terms.concepts.items() if key in c.valuesets}
    aliases = {a for a, targets in terms.aliases.items() if direct & set(targets)}
    return sorted(direct | aliases)


@click.group("valuesets")
def valuesets() -> None:
    """The FHIR ValueSets the service matches against (shipped, and a site folder's)."""


@valuesets.command("list")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def list_command(folder: str | None, as_json: bool) -> None:
    """Every loaded value set: key, codes per system, where it comes from."""
    terms = _terminology(_folder(folder))
    rows = [_summary(terms, vs) for _, vs in sorted(terms.valuesets.items())]
    if as_json:
        click.echo(dumps(rows))
        return
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        codes = ", ".join(f"{s} {n}" for s, n in r["codes"].items())
        origin = "" if r["origin"] == "shipped" else f"  [site: {r['origin']}]"
        click.echo(f"{r['key']:<{width}}  {codes}{origin}")
    click.echo(f"{len(rows)} value sets; `ketamine-cds valuesets show KEY` shows one")


@valuesets.command("show")
@click.argument("key")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="As JSON, with every code.")
def show(key: str, folder: str | None, as_json: bool) -> None:
    """One value set: its provenance, the concepts that use it, and its codes. KEY is the
    set's id or file name (``acute-coronary-syndrome`` or ``acute_coronary_syndrome``)."""
    from service.engine.valuesets import key_of

    terms = _terminology(_folder(folder))
    vs = terms.valuesets.get(key_of(key.removesuffix(".json")))
    if vs is None:
        close = difflib.get_close_matches(key_of(key), list(terms.valuesets), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"no value set {key!r}{hint}; `ketamine-cds valuesets list` lists them")
    members = [
        {
            "system": _short(terms, m.system),
            "code": m.code,
            "display": m.display,
            **({"needs_text": True} if m.needs_text else {}),
        }
        for m in vs.members
    ]
    if as_json:
        click.echo(dumps({**_summary(terms, vs), "sources": list(vs.sources), "members": members}))
        return
    summary = _summary(terms, vs)
    click.echo(f"{vs.key}: {vs.title}")
    click.echo(f"  id {vs.id} · url {vs.url} · version {vs.version} · {vs.origin}")
    click.echo(f"  used by: {', '.join(summary['concepts']) or 'no concept (matched by code)'}")
    for source in vs.sources:
        click.echo(f"  source: {source}")
    for m in members:
        flag = "  (counts only with matching text)" if m.get("needs_text") else ""
        click.echo(f"  {m['system']:<8} {m['code']:<18} {m['display']}{flag}")
    click.echo(f"{len(members)} codes")


def rule_names() -> Iterator[tuple[str, str]]:
    """(module, name) for every value set or concept name the rule and record modules pass
    to a naming call (the terminology's, or any function of theirs with a ``valueset``,
    ``concept``, ``drug_class``, … parameter), directly, in a tuple, or through a loop over a
    tuple of names, or compare with ``.valueset`` / ``.drug_class``."""
    engine = resources.files("service.engine")
    sources: dict[str, ast.Module] = {}
    for folder in (engine / "rules", engine / "record"):
        if folder.is_dir():
            for item in sorted(folder.iterdir(), key=lambda p: p.name):
                if item.name.endswith(".py"):
                    sources[f"{folder.name}/{item.name}"] = ast.parse(item.read_text("utf-8"))
    calls = set(NAMING_CALLS)
    for tree in sources.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = {a.arg for a in [*node.args.args, *node.args.kwonlyargs]}
                if params & NAMING_PARAMETERS:
                    calls.add(node.name)
    for module, tree in sources.items():
        for name in _names_in(tree, calls):
            yield module, name


def _strings(node: ast.expr) -> list[str]:
    elements = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [
        e.value
        for e in elements
        if isinstance(e, ast.Constant)
        and isinstance(e.value, str)
        and e.value.isidentifier()
        and e.value.islower()
    ]


def _names_in(tree: ast.Module, calls: set[str]) -> Iterator[str]:
    loops: dict[str, list[str]] = {}  # loop variable → the names of the tuple it runs over
    for node in ast.walk(tree):
        if isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name):
            loops.setdefault(node.target.id, []).extend(_strings(node.iter))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in calls:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    yield from _strings(arg)
                    if isinstance(arg, ast.Name):
                        yield from loops.get(arg.id, ())
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr in NAMING_ATTRIBUTES for s in sides):
                for side in sides:
                    yield from _strings(side)


def _concept_problems(terms: Terminology, named: list[tuple[str, str]]) -> list[str]:
    """Names the rules use that nothing loads, and concepts left without a code."""
    known = {*terms.names(), *terms.loinc, *terms.systems}  # codes(name, "loinc") names a system
    found = []
    if not named:
        found.append("found no value set names in the rule modules: the scan needs updating")
    for module, name in named:
        if name not in known:
            found.append(f"{module}: names {name!r}, which is no loaded value set or concept")
    for name, concept in sorted(terms.concepts.items()):
        if concept.valuesets and not concept.members:
            found.append(f"valuesets.yaml: concept {name!r} selects no code of {concept.valuesets}")
    return found


@valuesets.command("check")
@DIR_OPTION
def check(folder: str | None) -> None:
    """Every file a valid FHIR R4 ValueSet, every code well-formed for its system (ICD-10-CM,
    SNOMED CT with its Verhoeff check digit, RxNorm, LOINC with its mod-10 check digit, ATC,
    NDC), every value set or concept a rule names loaded. Exit 1 on any problem."""
    from service.engine.terminology import load_terminology
    from service.engine.valuesets import ValueSetError, problems

    site = _folder(folder)
    try:
        loaded, found = problems(site)
    except ValueSetError as exc:  # KCDS_VALUESETS_DIR is not a folder
        raise ConfigProblem(str(exc)) from None
    named = list(rule_names())
    if loaded:
        try:
            terms = load_terminology(site)
        except ValueSetError as exc:  # valuesets.yaml against these sets (LOINC lists, …)
            found.append(str(exc))
        else:
            found.extend(_concept_problems(terms, named))
    codes = sum(len(vs.members) for vs in loaded.values())
    where = f" (site folder {site})" if site else ""
    click.echo(
        f"{len(loaded)} value sets, {codes} codes{where}; "
        f"{len({n for _, n in named})} names used by the rules"
    )
    for line in dict.fromkeys(found):
        click.echo(f"problem: {line}", err=True)
    if found:
        click.echo(f"{len(found)} problem(s)", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo("OK")
