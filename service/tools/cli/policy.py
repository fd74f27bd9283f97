"""``ketamine-cds policy validate``: a site policy file checked as the service checks it."""

from __future__ import annotations

import sys

import click

from .. import toolkit
from .common import EXIT_FAILED


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
