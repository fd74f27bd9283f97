"""``ketamine-cds serve``: the service under gunicorn."""

from __future__ import annotations

import os
import sys

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--workers",
    default=None,
    type=int,
    help="gunicorn worker processes (default: KCDS_WORKERS or 2).",
)
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the service under gunicorn (WSGI entry service.web.wsgi:app)."""
    args = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}"]
    if workers:  # else the config's KCDS_WORKERS
        args += ["--workers", str(workers)]
    args += ["--config", "python:service.web.gunicorn_conf", "service.web.wsgi:app"]
    os.execv(sys.executable, args)
