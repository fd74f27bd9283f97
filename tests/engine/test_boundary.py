"""The engine's boundary (service/engine/README.md): importing it loads no web, HTTP or
database library, and no engine module reads the clock. Each check is also shown failing on
a module that breaks the rule, so a green run means something."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import service.engine

ENGINE = Path(service.engine.__file__).parent
FORBIDDEN = ("flask", "werkzeug", "requests", "sqlalchemy", "gunicorn", "urllib3")
#: (object, attribute) of the calls that read the clock
CLOCK_READS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
}

PROBE = """
import importlib, json, pkgutil, sys
import service.engine
service.engine.__path__.extend(sys.argv[1:])
for module in pkgutil.walk_packages(service.engine.__path__, "service.engine."):
    importlib.import_module(module.name)
print(json.dumps(sorted(name for name in {forbidden} if name in sys.modules)))
"""


def forbidden_after_import(*extra_folders: Path) -> list[str]:
    """The forbidden libraries loaded, in a fresh interpreter, by importing service.engine
    and every module in it (and in ``extra_folders``, as if they were part of it)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(forbidden=FORBIDDEN), *map(str, extra_folders)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def clock_reads(source: str) -> list[str]:
    """``name.attr(...)`` calls that read the clock, e.g. ``datetime.now(UTC)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if (name, node.func.attr) in CLOCK_READS:
                found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
    return found


def test_importing_the_engine_loads_no_web_http_or_database_library():
    assert forbidden_after_import() == []


def test_the_import_check_fails_when_an_engine_module_imports_flask(tmp_path):
    (tmp_path / "leak.py").write_text("import flask\n", "utf-8")
    assert {"flask", "werkzeug"} <= set(forbidden_after_import(tmp_path))


def test_no_engine_module_reads_the_clock():
    modules = sorted(ENGINE.rglob("*.py"))
    assert len(modules) > 10
    found = {
        str(path.relative_to(ENGINE)): reads
        for path in modules
        if (reads := clock_reads(path.read_text("utf-8")))
    }
    assert found == {}


def test_the_clock_check_finds_every_form_of_clock_read():
    source = """
import datetime as dt, time
from datetime import UTC, date, datetime
a = datetime.now(UTC)
b = dt.datetime.now()
c = date.today()
d = time.time()
e = ev.now  # the injected clock: not a read
"""
    assert clock_reads(source) == [
        "line 4: datetime.now()",
        "line 5: datetime.now()",
        "line 6: date.today()",
        "line 7: time.time()",
    ]
