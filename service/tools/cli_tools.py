"""The integration engineers' commands of ``ketamine-cds``: evaluate, request, fixtures, rules
and policy. :func:`register` adds them to the ``main`` group of ``service.tools.cli``.

Every evaluation runs through :func:`service.tools.toolkit.evaluate`, which is the service's own
request pipeline (:func:`cds_hooks.service.handle`), offline: nothing is fetched from a FHIR
server and nothing is recorded in the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.padding import Padding
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from . import toolkit

#: exit codes, shown in ``ketamine-cds --help``
EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_CONFIG = 0, 1, 2, 3
EPILOG = """\b
Exit codes:
  0  success (evaluate: the service answered, whatever its cards)
  1  a check found a difference or a problem (fixtures check, policy validate),
     or the command could not complete (e.g. the registry database did not answer)
  2  bad usage, or the input was refused: unknown option or name, unreadable or
     invalid file, a hook request the service rejects (its JSON error on stderr)
  3  configuration error: a KCDS_* variable or the policy file is unusable
"""

#: indicator → (label, badge style, border colour); the label is spelled out, never colour alone
INDICATORS = {
    "critical": ("CRITICAL", "bold white on red3", "red3"),
    "warning": ("WARNING", "bold black on dark_orange", "dark_orange"),
    "info": ("INFO", "bold white on dodger_blue3", "dodger_blue3"),
}
NDJSON_SUFFIXES = (".json", ".ndjson", ".jsonl")
#: the lines between which `rules --markdown --into FILE` writes the rule table
MARK_BEGIN, MARK_END = "<!-- rules:begin -->", "<!-- rules:end -->"


class InputError(click.ClickException):
    """The input was refused (exit 2)."""

    exit_code = EXIT_INPUT


class ConfigProblem(click.ClickException):
    """A KCDS_* variable or the policy file is unusable (exit 3)."""

    exit_code = EXIT_CONFIG


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _engine(policy_file: str | None = None, clock=None):
    """The ketamine service without HTTP or registry, as configured by KCDS_* variables."""
    from service.config import ConfigError, Settings
    from service.engine.policy import PolicyError
    from service.web.app import build_engine

    try:
        settings = Settings.from_env()
        if policy_file:
            settings = dataclasses.replace(settings, policy_file=policy_file)
        return build_engine(settings, clock)
    except (ConfigError, PolicyError) as exc:
        raise ConfigProblem(str(exc)) from None


def _catalog(clock=None):
    from cds_hooks.service import ServiceCatalog

    return ServiceCatalog(_engine(clock=clock).services())


def _read_json(path: str) -> Any:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def _now_option(help_text: str):
    def convert(_ctx, _param, value: str | None) -> datetime | None:
        try:
            return toolkit.parse_now(value) if value else None
        except toolkit.ToolError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option("--now", callback=convert, metavar="DATE", help=help_text)


# -- evaluate ----------------------------------------------------------------------------


@click.command()
@click.argument("request_file", metavar="REQUEST.json", type=click.Path(allow_dash=True))
@click.option(
    "--service",
    "service_id",
    default=None,
    help="Service id (default: the one whose hook matches the request).",
)
@click.option(
    "--json/--cards",
    "as_json",
    default=None,
    help="The raw response JSON, or the cards as an EHR shows them "
    "(default: cards on a terminal, JSON when piped or redirected).",
)
@click.option(
    "--resources", is_flag=True, help="With the cards: every suggested FHIR resource in full."
)
def evaluate(
    request_file: str, service_id: str | None, as_json: bool | None, resources: bool
) -> None:
    """Run one hook request through the service offline and show its answer.

    REQUEST.json is a CDS Hooks request (a fixture's dates are moved to today); - reads
    standard input. Keys not prefetched are not fetched: they come back as "could not be
    checked" cards. Nothing is recorded in the registry.

    \b
    Examples:
      ketamine-cds evaluate fixtures/r09-bp-185-fires/request.json
      ketamine-cds request build --patient p.json --ketamine 35 | ketamine-cds evaluate -
      ketamine-cds evaluate --json request.json > response.json
    """
    body = _read_json(request_file)
    if isinstance(body, dict):
        from .fixtures import dated

        body = dated(body)
    try:
        outcome = toolkit.evaluate(_catalog(), body, service_id)
    except toolkit.ToolError as exc:
        raise InputError(str(exc)) from None
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if outcome.error is not None:
        if as_json:
            click.echo(_dumps(outcome.error), err=True)
        else:
            _stderr().print(_error_text(outcome.status, outcome.error))
        sys.exit(EXIT_INPUT)
    if as_json:
        click.echo(_dumps(outcome.response))
    else:
        show_outcome(_stdout(), outcome, resources)


def _error_text(status: int, error: dict[str, Any]) -> Text:
    text = Text(f"refused ({status} {error.get('error')}): ", style="bold red")
    text.append(str(error.get("message", "")), style="red")
    if error.get("field"):
        text.append(f"  [field {error['field']}]", style="dim")
    return text


def show_outcome(console: Console, outcome: toolkit.Outcome, resources: bool = False) -> None:
    """The cards of one evaluation, as an EHR shows them, on a terminal."""
    cards = outcome.cards
    counts = Counter(c.get("indicator") for c in cards)
    tally = ", ".join(f"{counts[i]} {i}" for i in INDICATORS if counts[i])
    head = Text.assemble(
        (outcome.service_id, "bold"),
        f" answered {len(cards)} card{'s' if len(cards) != 1 else ''}",
        f" ({tally})" if tally else "",
        (f" · evaluated in {outcome.elapsed_ms:.1f} ms", "dim"),
    )
    console.print(head)
    if not cards:
        console.print("No cards: the service has nothing to say about this request.")
    for card in cards:
        console.print(card_panel(card, resources))
    for action in (outcome.response or {}).get("systemActions") or ():
        console.print(Text("System action: ", style="bold") + _action_text(action))


def card_panel(card: dict[str, Any], resources: bool = False) -> Panel:
    """One card: indicator, summary, detail (markdown), suggestions, links, override reasons
    and source."""
    label, badge, colour = INDICATORS.get(card.get("indicator", ""), ("?", "reverse", "white"))
    parts: list[Any] = [Text(str(card.get("summary", "")), style="bold")]
    if card.get("detail"):
        parts += [Text(""), Markdown(card["detail"], hyperlinks=False)]
    suggestions = card.get("suggestions") or ()
    if suggestions:
        how = {"at-most-one": "choose at most one", "any": "choose any"}.get(
            card.get("selectionBehavior", ""), ""
        )
        parts.append(Text(f"\nSuggestions ({how})" if how else "\nSuggestions", style="bold"))
        for s in suggestions:
            line = Text("[ ") + Text(str(s.get("label", "")), style="bold") + Text(" ]")
            if s.get("isRecommended"):
                line.append("  ★ recommended", style="green")
            parts.append(Padding(line, (0, 0, 0, 2)))
            for action in s.get("actions") or ():
                parts.append(Padding(_action_text(action), (0, 0, 0, 6)))
                if resources and action.get("resource"):
                    parts.append(Syntax(_dumps(action["resource"]), "json", padding=(0, 6)))
    links = card.get("links") or ()
    if links:
        parts.append(Text("\nLinks", style="bold"))
        for link in links:
            kind = " (SMART app, launched by the EHR)" if link.get("type") == "smart" else ""
            text = Text(f"{link.get('label')}{kind} → ") + Text(str(link.get("url")))
            parts.append(Padding(text, (0, 0, 0, 2)))
    reasons = card.get("overrideReasons") or ()
    if reasons:
        parts.append(Text("\nIf overridden, the clinician picks a reason:", style="bold"))
        text = Text(" · ".join(str(r.get("display")) for r in reasons))
        parts.append(Padding(text, (0, 0, 0, 2)))
    source = card.get("source") or {}
    tail = Text(f"\nSource: {source.get('label', '')}", style="dim")
    if source.get("url"):
        tail.append(f" — {source['url']}", style="dim")
    parts.append(tail)
    return Panel(
        Group(*parts),
        title=Text(f" {label} ", style=badge),
        title_align="left",
        border_style=colour,
        padding=(0, 1),
    )


def _action_text(action: dict[str, Any]) -> Text:
    kind = str(action.get("type", "?"))
    text = Text(f"{kind} ", style={"create": "green", "update": "yellow"}.get(kind, "red"))
    resource = action.get("resource") or {}
    target = action.get("resourceId") or resource.get("resourceType")
    if isinstance(resource, dict) and resource.get("id") and not action.get("resourceId"):
        target = f"{resource.get('resourceType')}/{resource['id']}"
    if target:
        text.append(f"{target}: ", style="bold")
    text.append(str(action.get("description", "")))
    return text


# -- request build -----------------------------------------------------------------------


@click.group()
def request() -> None:
    """Hook requests from your own patient data."""


@request.command("build")
@click.option(
    "--patient",
    "patients",
    multiple=True,
    required=True,
    metavar="BUNDLE.json",
    type=click.Path(exists=True, allow_dash=True),
    help="A FHIR R4 Bundle (Synthea, an EHR export), an NDJSON file, or a folder of them "
    "(a Bulk Data export); repeat for several files; - reads standard input.",
)
@click.option("--patient-id", help="Which patient, when the data holds several.")
@click.option("--ketamine", type=click.FloatRange(min=0), metavar="MG", help="Ketamine dose, mg.")
@click.option(
    "--route",
    type=click.Choice(toolkit.ROUTES),
    help="Ketamine route (default iv).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0),
    metavar="N",
    help="Ketamine infusion time (default 40 for iv; not stated otherwise).",
)
@click.option(
    "--esketamine", type=click.FloatRange(min=0), metavar="MG", help="Esketamine dose, mg."
)
@click.option(
    "--hook",
    type=click.Choice(toolkit.HOOKS),
    default="order-sign",
    show_default=True,
    help="The hook the request is for (patient-view takes no drug).",
)
@click.option(
    "--all-observations",
    is_flag=True,
    help="Keep every Observation (default: only the LOINC codes the service's search asks "
    "for, as an EHR answering the prefetch template would send).",
)
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write; - is standard output.",
)
def build(
    patients: tuple[str, ...],
    patient_id: str | None,
    ketamine: float | None,
    route: str | None,
    minutes: float | None,
    esketamine: float | None,
    hook: str,
    all_observations: bool,
    output: str,
) -> None:
    """Turn a patient's FHIR data into a valid hook request, with all eight prefetch keys.

    Give the drug and dose: --ketamine MG [--route iv|im|oral|nasal] [--minutes N], or
    --esketamine MG. The request is written as JSON, ready for `ketamine-cds evaluate -`,
    the preview page, or curl.

    \b
    Examples:
      ketamine-cds request build --patient ../shared/fhir-r4-samples/Addie_Tremblay_*.json \\
          --ketamine 35 --minutes 40 > request.json
      ketamine-cds request build --patient export/ --patient-id 123 --esketamine 56
    """
    if hook == "patient-view":
        if ketamine is not None or esketamine is not None:
            raise click.UsageError(
                "patient-view takes no draft order: drop --ketamine/--esketamine"
            )
        orders = []
    else:
        if (ketamine is None) == (esketamine is None):
            raise click.UsageError("give exactly one of --ketamine MG or --esketamine MG")
        if esketamine is not None and (route or minutes is not None):
            raise click.UsageError("--route and --minutes go with --ketamine only")
        drug, mg = ("ketamine", ketamine) if ketamine is not None else ("esketamine", esketamine)
        orders = [toolkit.draft_order(drug, mg, route, minutes)]
    resources = _read_patient_data(patients)
    codes = None if all_observations else sorted(_engine().builder.observation_codes)
    try:
        body = toolkit.build_request(
            resources, hook=hook, orders=orders, patient_id=patient_id, observation_codes=codes
        )
    except toolkit.ToolError as exc:
        raise InputError(str(exc)) from None
    with click.open_file(output, "w", encoding="utf-8") as out:
        out.write(_dumps(body) + "\n")
    kept = sum(
        len(v.get("entry") or ()) for v in body["prefetch"].values() if v.get("type") == "searchset"
    )
    service = {"order-sign": "ketamine-order-sign", "order-select": "ketamine-order-select"}.get(
        hook, "ketamine-patient-view"
    )
    click.echo(
        f"{hook} request for Patient/{body['context']['patientId']}: {kept} resources in "
        f"{len(body['prefetch'])} prefetch keys; POST it to /cds-services/{service}",
        err=True,
    )


def _patient_files(patients: tuple[str, ...]) -> list[str]:
    files: list[str] = []
    for item in patients:
        path = Path(item)
        if item != "-" and path.is_dir():
            found = sorted(
                str(p) for p in path.iterdir() if p.is_file() and p.suffix in NDJSON_SUFFIXES
            )
            if not found:
                raise InputError(f"no .json, .ndjson or .jsonl file in {item}")
            files += found
        else:
            files.append(item)
    return files


def _read_patient_data(patients: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every resource of the files, with a progress bar (by size) on a terminal."""
    from .convert import ConversionError, resources_from

    files = _patient_files(patients)
    sizes = {f: (Path(f).stat().st_size if f != "-" else 0) for f in files}
    resources: list[dict[str, Any]] = []
    with _progress() as progress:
        task = progress.add_task("reading patient data", total=sum(sizes.values()) or None)
        for f in files:
            progress.update(task, description=f"reading {Path(f).name if f != '-' else 'stdin'}")
            try:
                resources += resources_from(sys.stdin.buffer.read() if f == "-" else f)
            except ConversionError as exc:
                raise InputError(f"{f}: {exc}") from None
            except OSError as exc:
                raise InputError(f"cannot read {f}: {exc.strerror}") from None
            progress.advance(task, sizes[f])
    return resources


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr(),
        transient=True,
    )


# -- fixtures ----------------------------------------------------------------------------


@click.group()
def fixtures() -> None:
    """The fixtures: hook requests with the cards they must produce (KCDS_FIXTURES_DIR)."""


def _fixture_names(patterns: tuple[str, ...] = ()) -> list[str]:
    from .fixtures import names

    every = names()
    if not every:
        raise InputError("no fixtures found (set KCDS_FIXTURES_DIR to the fixtures folder)")
    if not patterns:
        return every
    chosen = [n for n in every if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise InputError(f"no fixture matches {' '.join(patterns)}{_did_you_mean(patterns[0])}")
    return chosen


def _did_you_mean(name: str) -> str:
    from .fixtures import names

    close = difflib.get_close_matches(name, names(), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@fixtures.command("list")
@click.option("--json", "as_json", is_flag=True, help="Names with their expectations, as JSON.")
@click.option("--names", "names_only", is_flag=True, help="Only the names, one per line.")
def list_fixtures(as_json: bool, names_only: bool) -> None:
    """Every fixture: its name, the service it calls and what it shows."""
    from .fixtures import load

    rows = []
    for name in _fixture_names():
        _, expected = load(name)
        rows.append({"name": name, **expected})
    if names_only:
        click.echo("\n".join(r["name"] for r in rows))
    elif as_json:
        click.echo(_dumps(rows))
    else:
        table = Table(title=f"{len(rows)} fixtures", title_justify="left", show_lines=True)
        table.add_column("name and description", ratio=1)
        table.add_column("service", no_wrap=True)
        table.add_column("expects", no_wrap=True)
        for r in rows:
            expects = ", ".join(r.get("must") or r.get("rules") or ()) or "no card"
            name = Text(r["name"], style="bold")
            if r.get("description"):
                name.append("\n" + r["description"], style="dim")
            table.add_row(name, r["service"].removeprefix("ketamine-"), expects)
        _stdout().print(table)


@fixtures.command()
@click.argument("patterns", nargs=-1, metavar="[NAME]...")
@_now_option("Evaluate as of this date or time (default: now).")
@click.option("--verbose", "-v", is_flag=True, help="One line per fixture, passed or not.")
def check(patterns: tuple[str, ...], now: datetime | None, verbose: bool) -> None:
    """Run every fixture (or those matching NAME, shell patterns allowed) through the service
    code and compare the cards with its expectations; exit 1 on any difference."""
    chosen = _fixture_names(patterns)
    now = now or datetime.now(UTC)
    catalog = _catalog(clock=lambda: now)
    failed: dict[str, list[str]] = {}
    started = time.perf_counter()
    out = _stdout()
    with _progress() as progress:
        task = progress.add_task("checking fixtures", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"checking {name}")
            problems = toolkit.check_fixture(catalog, name, now)
            if problems:
                failed[name] = problems
                progress.console.print(
                    Text(f"FAIL {name}: ", style="bold red") + "; ".join(problems)
                )
            elif verbose:
                progress.console.print(Text("ok   ", style="green") + name)
            progress.advance(task)
    seconds = time.perf_counter() - started
    passed = len(chosen) - len(failed)
    summary = Text(f"{len(chosen)} fixtures checked: {passed} passed, {len(failed)} failed")
    summary.append(f" ({seconds:.1f} s)", style="dim")
    out.print(summary, style="bold red" if failed else "bold green")
    if failed:
        sys.exit(EXIT_FAILED)


@fixtures.command()
@click.argument("name")
@_now_option("Move the dates to this date or time instead of now.")
@click.option("--compact", is_flag=True, help="One line of JSON instead of indented.")
def render(name: str, now: datetime | None, compact: bool) -> None:
    """Print fixture NAME's request with its dates moved to now, ready for curl:

    \b
    ketamine-cds fixtures render r09-bp-185-fires \\
      | curl -s -H 'Content-Type: application/json' --data-binary @- \\
          http://127.0.0.1:8080/cds-services/ketamine-order-sign
    """
    from .fixtures import load

    try:
        body, _ = load(name, now)
    except FileNotFoundError:
        raise InputError(f"no fixture named {name!r}{_did_you_mean(name)}") from None
    click.echo(orjson.dumps(body).decode() if compact else _dumps(body))


# -- rules -------------------------------------------------------------------------------


@click.command()
@click.option("--id", "rule_id", metavar="ID", help="One rule in full, e.g. R09.")
@click.option("--json", "as_json", is_flag=True, help="As JSON (the same as GET /rules.json).")
@click.option(
    "--markdown",
    is_flag=True,
    help="As a Markdown table: what each card means and which FHIR data drives it.",
)
@click.option(
    "--into",
    type=click.Path(exists=True, dir_okay=False),
    help="With --markdown: write the table into FILE between the lines "
    f"{MARK_BEGIN} and {MARK_END} (docs/integration.md is kept current this way).",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False),
    help="Show the thresholds of this site policy file (default: KCDS_POLICY_FILE).",
)
def rules(
    rule_id: str | None, as_json: bool, markdown: bool, into: str | None, policy_file: str | None
) -> None:
    """The rule catalogue with the live thresholds of the active site policy."""
    from service.engine.rulebook import catalogue

    cat = catalogue(_engine(policy_file).policy)
    chosen = cat["rules"]
    if rule_id:
        chosen = [r for r in chosen if r["id"].lower() == rule_id.lower()]
        if not chosen:
            ids = [r["id"] for r in cat["rules"]]
            close = difflib.get_close_matches(rule_id.upper(), ids, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(f"no rule {rule_id!r}{hint}; `ketamine-cds rules` lists them")
    if as_json:
        click.echo(_dumps({**cat, "rules": chosen} if not rule_id else chosen[0]))
        return
    if markdown:
        table = rules_markdown(chosen, cat["policy_version"])
        if into:
            _write_between_markers(Path(into), table)
            click.echo(f"{into}: rule table updated ({len(chosen)} rules)", err=True)
        else:
            click.echo(table, nl=False)
        return
    if into:
        raise click.UsageError("--into goes with --markdown")
    out = _stdout()
    if rule_id:
        out.print(_rule_panel(chosen[0], cat["policy_version"]))
        return
    table = Table(
        title=f"{len(chosen)} rules · policy {cat['policy_version']} · "
        f"service {cat['service_version']}",
        title_justify="left",
    )
    table.add_column("id", no_wrap=True)
    table.add_column("severity", ratio=1)
    table.add_column("title", ratio=2)
    table.add_column("thresholds (live)", ratio=2, overflow="fold")
    for r in chosen:
        table.add_row(
            r["id"],
            _severity(r),
            r["title"],
            "\n".join(_threshold(t) for t in r["thresholds"]),
        )
    out.print(table)


def rules_markdown(chosen: list[dict[str, Any]], policy_version: str) -> str:
    """The rules as a Markdown table (generated from the catalogue, so it cannot drift)."""

    def cell(text: Any) -> str:
        out = str(text).replace("\\", "\\\\").replace("\n", " ")
        for char in "|*_<[`":
            out = out.replace(char, "\\" + char)
        return out

    lines = [
        f"Generated by `ketamine-cds rules --markdown` from the rule catalogue; thresholds are "
        f"the values of policy `{policy_version}`.",
        "",
        "| rule | card | for | fires when | FHIR data read | policy thresholds |",
        "|---|---|---|---|---|---|",
    ]
    for r in chosen:
        severity = r["configured_severity"] or r["severity"]
        if not r["enabled"]:
            severity = f"disabled ({severity})"
        hooks = ", ".join(r["hooks"])
        thresholds = "; ".join(
            f"`{t['name']}` {t['value']}{' ' + t['unit'] if t.get('unit') else ''}"
            for t in r["thresholds"]
        )
        lines.append(
            f"| **{r['id']}** {cell(r['title'])} | {cell(severity)} | "
            f"{r['applies_to']}; {hooks} | {cell(r['trigger'])} | "
            f"{cell(', '.join(r['reads']))} | {thresholds or '–'} |"
        )
    return "\n".join(lines) + "\n"


def _write_between_markers(path: Path, table: str) -> None:
    text = path.read_text("utf-8")
    if text.count(MARK_BEGIN) != 1 or text.count(MARK_END) != 1:
        raise InputError(f"{path} needs one {MARK_BEGIN} line and one {MARK_END} line")
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n{table}{MARK_END}{tail}", "utf-8")


def _severity(rule: dict[str, Any]) -> Text:
    severity = rule["configured_severity"] or rule["severity"]
    style = INDICATORS[severity][2] if severity in INDICATORS else ""
    text = Text(severity, style=style)
    if not rule["enabled"]:
        text = Text("disabled", style="strike dim")
    return text


def _threshold(t: dict[str, Any]) -> str:
    return f"{t['name']} = {t['value']}{' ' + t['unit'] if t.get('unit') else ''}"


def _rule_panel(r: dict[str, Any], policy_version: str) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    configured = f" (site policy: {r['configured_severity']})" if r["configured_severity"] else ""
    grid.add_row("fires when", r["trigger"])
    grid.add_row("severity", f"{r['severity']}{configured}")
    grid.add_row("enabled", "yes" if r["enabled"] else "no (site policy)")
    grid.add_row("applies to", f"{r['applies']} · hooks {', '.join(r['hooks'])}")
    grid.add_row("reads", "\n".join(r["reads"]) or "-")
    for t in r["thresholds"]:
        grid.add_row(
            "threshold",
            f"{_threshold(t)} — {t.get('description') or ''} [{t.get('source') or 'no source'}]",
        )
    for s in r["sources"]:
        grid.add_row("source", f"{s['id']} — {s['label']} ({s['status']})")
    return Panel(grid, title=f"{r['id']} · {r['title']}", subtitle=f"policy {policy_version}")


# -- policy ------------------------------------------------------------------------------


@click.group("policy")
def policy_group() -> None:
    """Site policy files (KCDS_POLICY_FILE)."""


@policy_group.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
def validate(file: str, strict: bool) -> None:
    """Check a site policy FILE as the service does at start-up: every problem with its key
    path, or OK. Warnings name keys that are accepted but change nothing (an unknown rule,
    value set or drug class)."""
    problems, warnings = toolkit.policy_file_problems(file)
    for p in problems:
        click.echo(f"problem  {p}")
    for w in warnings:
        click.echo(f"warning  {w}")
    if problems or (strict and warnings):
        click.echo(
            f"{file}: {len(problems)} problem(s), {len(warnings)} warning(s)"
            + ("; the service would refuse to start with it" if problems else ""),
            err=True,
        )
        sys.exit(EXIT_FAILED)
    click.echo(
        f"OK: {file} is a valid site policy"
        + (f" ({len(warnings)} warning(s))" if warnings else "")
    )


def register(main: click.Group) -> None:
    """Add the tools to the ``ketamine-cds`` group (``evaluate`` replaces any earlier one)
    and document the exit codes in its help."""
    for command in (evaluate, request, fixtures, rules, policy_group):
        main.add_command(command)
    main.epilog = EPILOG
