"""What the ``ketamine-cds`` command groups share: exit codes, the input and configuration
errors, JSON output and input, and the ketamine service built as KCDS_* variables configure
it (without HTTP or registry). It imports neither the engine nor rich at import time:
``ketamine-cds serve`` and ``--version`` load no more than they need."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

if TYPE_CHECKING:
    from cds_hooks.service import ServiceCatalog
    from service.engine.hooks import Clock, KetamineCDS

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


class InputError(click.ClickException):
    """The input was refused (exit 2)."""

    exit_code = EXIT_INPUT


class ConfigProblem(click.ClickException):
    """A KCDS_* variable or the policy file is unusable (exit 3)."""

    exit_code = EXIT_CONFIG


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def engine(policy_file: str | None = None, clock: Clock | None = None) -> KetamineCDS:
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


def catalog(clock: Clock | None = None) -> ServiceCatalog:
    from cds_hooks.service import ServiceCatalog

    return ServiceCatalog(engine(clock=clock).services())


def read_json(path: str) -> Any:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def now_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def convert(_ctx, _param, value: str | None) -> datetime | None:
        from .. import toolkit

        try:
            return toolkit.parse_now(value) if value else None
        except toolkit.ToolError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option("--now", callback=convert, metavar="DATE", help=help_text)
