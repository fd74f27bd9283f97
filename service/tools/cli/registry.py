"""``ketamine-cds registry …``: the registry for governance, from the command line.

Each command opens the database named by ``KCDS_DATABASE_URL`` (migrating it if needed, as
the service does at start-up); none needs the pseudonym key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson

from service.config import ConfigError, Settings
from service.registry import governance
from service.registry.schema import RegistryError
from service.registry.store import TRANSIENT, Store, open_store


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _store(settings: Settings) -> Store:
    try:
        return open_store(settings.database_url)
    except (ConfigError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
    except TRANSIENT as exc:
        raise click.ClickException(f"the registry database did not answer: {exc.orig}") from None


def _since(_ctx, _param, value: str | None) -> datetime | None:
    try:
        return governance.parse_since(value) if value else None
    except ValueError:
        raise click.BadParameter("a date (YYYY-MM-DD) or an ISO 8601 time") from None


since_option = click.option(
    "--since",
    callback=_since,
    metavar="DATE",
    help="Only what was recorded from this date or time on (UTC unless it says otherwise).",
)


@click.group()
def registry() -> None:
    """The ketamine registry (KCDS_DATABASE_URL): export, summary, purge."""


@registry.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ndjson", "csv"]),
    default="ndjson",
    show_default=True,
    help="One JSON record per line, or CSV with lists as JSON cells.",
)
@since_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="File to write; - is standard output.",
)
def export(fmt: str, since: datetime | None, output: str) -> None:
    """Every evaluation, then every feedback item, oldest first."""
    records = governance.export(_store(_settings()), since)
    if fmt == "ndjson":
        with click.open_file(output, "wb") as out:
            n = governance.write_ndjson(records, out)
    else:
        with click.open_file(output, "w", encoding="utf-8") as out:
            n = governance.write_csv(records, out)
    click.echo(f"{n} records exported", err=True)


@registry.command()
@since_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def summary(since: datetime | None, fmt: str) -> None:
    """Per rule: fired, accepted, overridden, top override reasons; per drug and route: orders
    evaluated (the same as GET /registry/summary)."""
    data = governance.summary(_store(_settings()), since)
    if fmt == "json":
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_text(data))


def _text(data: dict[str, Any]) -> str:
    lines = [
        f"registry since {data['since'] or 'the start'}: {data['evaluations']} evaluations, "
        f"{data['feedback']} feedback items ({data['feedback_on_unknown_cards']} on unknown cards)",
        "",
        f"{'rule':<6} {'fired':>7} {'accepted':>9} {'overridden':>11}  top override reasons",
    ]
    for rule in data["rules"]:
        reasons = ", ".join(
            f"{r['code']} ({r['system']}) ×{r['count']}" for r in rule["top_override_reasons"]
        )
        lines.append(
            f"{rule['rule']:<6} {rule['fired']:>7} {rule['accepted']:>9} "
            f"{rule['overridden']:>11}  {reasons or '-'}"
        )
    lines += ["", f"{'drug':<12} {'route':<12} {'orders evaluated':>16}"]
    for row in data["orders_evaluated"]:
        lines.append(f"{row['drug']:<12} {row['route'] or 'not stated':<12} {row['count']:>16}")
    return "\n".join(lines)


@registry.command()
def purge() -> None:
    """Delete what is older than KCDS_RETENTION_DAYS: evaluations with their cards and the
    feedback on them, and feedback received before then."""
    settings = _settings()
    if settings.retention_days is None:
        raise click.ClickException("KCDS_RETENTION_DAYS is not set: nothing to purge by")
    before = datetime.now(UTC) - timedelta(days=settings.retention_days)
    removed = governance.purge(_store(settings), before)
    click.echo(
        f"purged {removed['evaluations']} evaluations and {removed['feedback']} feedback items "
        f"from before {before.isoformat(timespec='seconds')}"
    )
