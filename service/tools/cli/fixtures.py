"""``ketamine-cds fixtures list|check|render``: the fixtures (KCDS_FIXTURES_DIR), hook
requests with the cards they must produce."""

from __future__ import annotations

import difflib
import fnmatch
import sys
import time
from datetime import UTC, datetime

import click
import orjson
from rich.text import Text

from .. import toolkit
from . import render
from .common import EXIT_FAILED, InputError, catalog, dumps, now_option


@click.group()
def fixtures() -> None:
    """The fixtures: hook requests with the cards they must produce (KCDS_FIXTURES_DIR)."""


def fixture_names(patterns: tuple[str, ...] = ()) -> list[str]:
    """The fixtures' names matching any of the shell-style ``patterns`` (all with none); an
    InputError when there are no fixtures, or none match. Used by ``fixtures`` and
    ``selftest``."""
    from ..fixtures import names

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
    from ..fixtures import names

    close = difflib.get_close_matches(name, names(), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@fixtures.command("list")
@click.option("--json", "as_json", is_flag=True, help="Names with their expectations, as JSON.")
@click.option("--names", "names_only", is_flag=True, help="Only the names, one per line.")
def list_fixtures(as_json: bool, names_only: bool) -> None:
    """Every fixture: its name, the service it calls and what it shows."""
    from ..fixtures import load

    rows = []
    for name in fixture_names():
        _, expected = load(name)
        rows.append({"name": name, **expected})
    if names_only:
        click.echo("\n".join(r["name"] for r in rows))
    elif as_json:
        click.echo(dumps(rows))
    else:
        render.stdout().print(render.fixtures_table(rows))


@fixtures.command()
@click.argument("patterns", nargs=-1, metavar="[NAME]...")
@now_option("Evaluate as of this date or time (default: now).")
@click.option("--verbose", "-v", is_flag=True, help="One line per fixture, passed or not.")
def check(patterns: tuple[str, ...], now: datetime | None, verbose: bool) -> None:
    """Run every fixture (or those matching NAME, shell patterns allowed) through the service
    code and compare the cards with its expectations; exit 1 on any difference."""
    chosen = fixture_names(patterns)
    now = now or datetime.now(UTC)
    services = catalog(clock=lambda: now)
    failed: dict[str, list[str]] = {}
    started = time.perf_counter()
    out = render.stdout()
    with render.progress() as progress:
        task = progress.add_task("checking fixtures", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"checking {name}")
            problems = toolkit.check_fixture(services, name, now)
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


@fixtures.command("render")
@click.argument("name")
@now_option("Move the dates to this date or time instead of now.")
@click.option("--compact", is_flag=True, help="One line of JSON instead of indented.")
def render_fixture(name: str, now: datetime | None, compact: bool) -> None:
    """Print fixture NAME's request with its dates moved to now, ready for curl:

    \b
    ketamine-cds fixtures render r09-bp-185-fires \\
      | curl -s -H 'Content-Type: application/json' --data-binary @- \\
          http://127.0.0.1:8080/cds-services/ketamine-order-sign
    """
    from ..fixtures import load

    try:
        body, _ = load(name, now)
    except FileNotFoundError:
        raise InputError(f"no fixture named {name!r}{_did_you_mean(name)}") from None
    click.echo(orjson.dumps(body).decode() if compact else dumps(body))
