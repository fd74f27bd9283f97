"""The ``ketamine-cds`` command line: the main group, and one module per command group.

A new command group is one line in :data:`COMMANDS`. A group's module is imported only when
it runs or the help lists it, so ``ketamine-cds serve`` does not load the engine, the
registry or rich.
"""

from __future__ import annotations

import importlib

import click

from service import __version__

from .common import EPILOG

#: command name → where the command is ("module:attribute", the module under service.tools)
COMMANDS = {
    "evaluate": "cli.evaluate:evaluate",
    "fixtures": "cli.fixtures:fixtures",
    "policy": "cli.policy:policy_group",
    "registry": "cli.registry:registry",
    "request": "cli.request:request",
    "rules": "cli.rules:rules",
    "selftest": "cli.selftest:selftest",
    "serve": "cli.serve:serve",
    "valuesets": "cli.valuesets:valuesets",
}


class LazyGroup(click.Group):
    """A click group whose commands are the :data:`COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(f"service.tools.{module}"), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, epilog=EPILOG)
@click.version_option(__version__, prog_name="ketamine-cds")
def main() -> None:
    """ketamine-cds: CDS Hooks decision support for ketamine and esketamine orders."""
