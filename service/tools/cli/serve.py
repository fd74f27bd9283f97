"""``ketamine-cds serve``: the service under gunicorn, once its configuration is known to
work: every problem is listed at once, one JSON log line each, and the command exits 3
before gunicorn starts and before anything is written."""

from __future__ import annotations

import os
import sys

import click

from .common import EXIT_CONFIG


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
    """Run the service under gunicorn (WSGI entry service.web.wsgi:app), once the whole
    configuration has been checked (exit 3 listing every problem)."""
    found = configuration_problems()
    if found:
        import logging

        from service.web import logs

        logs.configure()
        for problem in found:
            logging.getLogger("service.tools.cli.serve").critical(
                "configuration unusable", extra={"fields": {"reason": problem}}
            )
        sys.exit(EXIT_CONFIG)
    args = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}"]
    if workers:  # else the config's KCDS_WORKERS
        args += ["--workers", str(workers)]
    args += ["--config", "python:service.web.gunicorn_conf", "service.web.wsgi:app"]
    os.execv(sys.executable, args)


def configuration_problems() -> list[str]:
    """Every problem of the configuration: :func:`service.config.problems` (each variable,
    the settings' requirements, the files they name), then what only the engine and the SMART
    settings can tell (the policy file, the site ValueSets, the SMART client). Writes
    nothing, connects to nothing."""
    from service.config import ConfigError, problems, read_all
    from service.engine.policy import PolicyError
    from service.web.app import build_engine
    from service.web.smart import SmartSettings

    found = problems()
    settings, _ = read_all()  # what could not be read is listed already
    try:
        build_engine(settings)
    except PolicyError as exc:
        found.append(f"KCDS_POLICY_FILE: {exc}")
    except ConfigError as exc:
        found.append(str(exc))
    try:
        SmartSettings.of(settings)
    except ConfigError as exc:
        found.append(str(exc))
    return found
