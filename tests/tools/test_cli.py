"""The ketamine-cds command line."""

import subprocess
import sys
from pathlib import Path

import click
import orjson
from click.testing import CliRunner

from service.tools.cli import COMMANDS, main
from service.tools.fixtures import ROOT


def test_evaluate_prints_the_response_json():
    result = CliRunner().invoke(
        main, ["evaluate", str(ROOT / "clean-iv-ketamine-sign" / "request.json")]
    )
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.output)
    assert [c["extension"]["ketamine-cds.rules"] for c in body["cards"]] == [["R38"]]


def test_evaluate_reads_stdin_and_takes_a_service():
    raw = (ROOT / "spravato-order-select" / "request.json").read_bytes()
    result = CliRunner().invoke(
        main, ["evaluate", "-", "--service", "ketamine-order-select"], input=raw
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == {"cards": []}


def test_evaluate_reports_request_errors_with_exit_2():
    result = CliRunner().invoke(main, ["evaluate", "-"], input=b'{"hook": "order-sign"}')
    assert result.exit_code == 2


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "ketamine-cds"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "evaluate" in out.stdout and "serve" in out.stdout


def test_every_registered_command_loads_under_its_name():
    context = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(context, name)
        assert command is not None and command.name == name
    assert main.get_command(context, "nope") is None


def test_a_command_loads_only_its_own_module():
    code = (
        "import sys; from service.tools.cli import main\n"
        "main(['serve', '--help'], standalone_mode=False)\n"
        "print({'rich', 'service.engine', 'service.registry'} & set(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "set()"
