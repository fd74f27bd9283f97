"""The ``ketamine-cds`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import orjson

from . import __version__


@click.group()
@click.version_option(__version__, prog_name="ketamine-cds")
def main() -> None:
    """ketamine-cds: CDS Hooks decision support for ketamine and esketamine orders."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--workers",
    default=None,
    type=int,
    help="gunicorn worker processes (default: KCDS_WORKERS or 2).",
)
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the service under gunicorn (WSGI entry service.wsgi:app)."""
    workers = workers or int(os.environ.get("KCDS_WORKERS", "2"))
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--config",
        "python:service.gunicorn_conf",
        "service.wsgi:app",
    ]
    os.execv(sys.executable, args)


@main.command()
@click.argument("request_file", type=click.Path(allow_dash=True))
@click.option(
    "--service",
    "service_id",
    default=None,
    help="Service id (default: the one whose hook matches the request).",
)
def evaluate(request_file: str, service_id: str | None) -> None:
    """Run one hook request through the service offline and print the response JSON.

    REQUEST_FILE is a CDS Hooks request (a fixture's dates are moved to today); - reads stdin.
    """
    from cds_hooks.errors import CDSHooksError
    from cds_hooks.service import ServiceCatalog, handle

    from .app import build_engine
    from .config import Settings
    from .fixtures import dated

    raw = sys.stdin.buffer.read() if request_file == "-" else Path(request_file).read_bytes()
    try:
        body = dated(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"{request_file} is not valid JSON: {exc}") from None
    engine = build_engine(Settings.from_env())
    catalog = ServiceCatalog(engine.services())
    if service_id is None:
        hook = body.get("hook") if isinstance(body, dict) else None
        matches = [s.id for s in catalog if s.hook == hook]
        if not matches:
            raise click.ClickException(f"no service answers hook {hook!r}; use --service")
        service_id = matches[0]
    try:
        _, response = handle(catalog.get(service_id), body, None, "http://localhost:8080")
    except CDSHooksError as exc:
        click.echo(orjson.dumps(exc.to_json(), option=orjson.OPT_INDENT_2).decode(), err=True)
        sys.exit(2)
    click.echo(orjson.dumps(response.to_json(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
