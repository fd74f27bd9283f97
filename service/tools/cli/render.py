"""How ``ketamine-cds`` shows things on a terminal (rich): cards as an EHR shows them, the
fixture and rule tables, progress bars. Indicators are spelled out, never colour alone."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.markdown import Markdown
from rich.padding import Padding
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..toolkit import Outcome
from .common import dumps

#: indicator → (label, badge style, border colour); the label is spelled out, never colour alone
INDICATORS = {
    "critical": ("CRITICAL", "bold white on red3", "red3"),
    "warning": ("WARNING", "bold black on dark_orange", "dark_orange"),
    "info": ("INFO", "bold white on dodger_blue3", "dodger_blue3"),
}


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr(),
        transient=True,
    )


def error_text(status: int, error: dict[str, Any]) -> Text:
    text = Text(f"refused ({status} {error.get('error')}): ", style="bold red")
    text.append(str(error.get("message", "")), style="red")
    if error.get("field"):
        text.append(f"  [field {error['field']}]", style="dim")
    return text


def show_outcome(console: Console, outcome: Outcome, resources: bool = False) -> None:
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
                    parts.append(Syntax(dumps(action["resource"]), "json", padding=(0, 6)))
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


def fixtures_table(rows: list[dict[str, Any]]) -> Table:
    """Every fixture: its name and description, the service it calls and what it expects."""
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
    return table


def rules_table(chosen: list[dict[str, Any]], cat: dict[str, Any]) -> Table:
    """The rules with their live thresholds, one row each."""
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
    return table


def _severity(rule: dict[str, Any]) -> Text:
    severity = rule["configured_severity"] or rule["severity"]
    style = INDICATORS[severity][2] if severity in INDICATORS else ""
    text = Text(severity, style=style)
    if not rule["enabled"]:
        text = Text("disabled", style="strike dim")
    return text


def _threshold(t: dict[str, Any]) -> str:
    return f"{t['name']} = {t['shown']}"


def rule_panel(r: dict[str, Any], policy_version: str) -> Panel:
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
