"""``ketamine-cds evaluate``: one hook request through the service, offline.

It runs through :func:`service.tools.toolkit.evaluate`, which is the service's own request
pipeline (:func:`cds_hooks.service.handle`): nothing is fetched from a FHIR server and
nothing is recorded in the registry.
"""

from __future__ import annotations

import sys

import click

from .. import toolkit
from . import render
from .common import EXIT_INPUT, ConfigProblem, InputError, catalog, dumps, read_json


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
@click.option(
    "--base-url",
    default=None,
    metavar="URL",
    help="Where the cards' links point: the service's public URL (default: KCDS_PUBLIC_URL, "
    f"else the placeholder {toolkit.OFFLINE_BASE_URL}).",
)
def evaluate(
    request_file: str,
    service_id: str | None,
    as_json: bool | None,
    resources: bool,
    base_url: str | None,
) -> None:
    """Run one hook request through the service offline and show its answer.

    REQUEST.json is a CDS Hooks request (a fixture's dates are moved to today); - reads
    standard input. Keys not prefetched are not fetched: they come back as "could not be
    checked" cards. Nothing is recorded in the registry. The cards' links (the rule pages)
    point at the service's public URL, as a running service's do.

    \b
    Examples:
      ketamine-cds evaluate fixtures/r09-bp-185-fires/request.json
      ketamine-cds request build --patient p.json --ketamine 35 | ketamine-cds evaluate -
      ketamine-cds evaluate --json request.json > response.json
    """
    body = read_json(request_file)
    if isinstance(body, dict):
        from ..fixtures import dated

        body = dated(body)
    if base_url is None:
        from service.config import ConfigError, read

        try:
            base_url = read("public_url") or toolkit.OFFLINE_BASE_URL
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None
    base_url = base_url.rstrip("/")
    try:
        outcome = toolkit.evaluate(catalog(), body, service_id, base_url=base_url)
    except toolkit.ToolError as exc:
        raise InputError(str(exc)) from None
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if outcome.error is not None:
        if as_json:
            click.echo(dumps(outcome.error), err=True)
        else:
            render.stderr().print(render.error_text(outcome.status, outcome.error))
        sys.exit(EXIT_INPUT)
    if as_json:
        click.echo(dumps(outcome.response))
    else:
        render.show_outcome(render.stdout(), outcome, resources)
        if base_url == toolkit.OFFLINE_BASE_URL and outcome.cards:
            click.echo(
                f"Links point at {base_url}, a placeholder: a running service puts its public "
                "URL there (KCDS_PUBLIC_URL; --base-url here).",
                err=True,
            )
