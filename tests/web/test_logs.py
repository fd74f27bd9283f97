"""Every line a real gunicorn run writes is one JSON object in the service's format: the
service's own lines and gunicorn's (start, workers, signals, its access log when switched
on, which names routes, not raw paths); no query string or patient id reaches them."""

import json
import logging

import orjson
import pytest
import requests
from gunicorn.config import Config

from service.tools.fixtures import load
from service.web.logs import GunicornLogger
from tests.conftest import start_gunicorn, stop

PATIENT = "kcds-log-patient-4711"


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    unparsed = []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            unparsed.append(line)
    assert unparsed == [], f"lines that are not JSON: {unparsed[:5]}"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    return records


@pytest.mark.e2e
@pytest.mark.parametrize("access_log", [False, True], ids=["default", "gunicorn-access-log-on"])
def test_every_line_of_a_gunicorn_run_is_json(tmp_path, access_log):
    env = {"GUNICORN_CMD_ARGS": "--access-logfile -"} if access_log else {}
    server = start_gunicorn(tmp_path, env=env)
    try:
        body = load("clean-iv-ketamine-sign")[0]
        r = requests.post(server.url + "/cds-services/ketamine-order-sign", json=body, timeout=10)
        assert r.status_code == 200
        for path in (
            f"/cds-services?patient={PATIENT}",
            f"/Patient?identifier={PATIENT}",  # unmatched: a 404
            f"/Patient/{PATIENT}",
            "/health/ready",
        ):
            requests.get(server.url + path, timeout=10)
        requests.post(
            server.url + "/cds-services/ketamine-order-sign",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
    finally:
        stop(server)
    text = server.logs()
    records = _json_lines(text)
    assert PATIENT not in text
    by_logger = {r["logger"] for r in records}
    assert "gunicorn.error" in by_logger  # gunicorn's own lines are among them
    assert any("Booting worker" in r["message"] for r in records)
    assert any("Shutting down" in r["message"] for r in records)  # the SIGTERM stop
    gunicorn_access = [r for r in records if r["logger"] == "gunicorn.access"]
    if access_log:
        assert {(r["method"], r["path"]) for r in gunicorn_access} >= {
            ("GET", "/cds-services"),
            ("GET", "unmatched"),
            ("POST", "/cds-services/<service_id>"),
        }
        assert all(isinstance(r["status"], int) and r["duration_ms"] >= 0 for r in gunicorn_access)
    else:
        assert gunicorn_access == []


def test_gunicorn_error_lines_lose_query_strings(capsys):
    """gunicorn logs "Error handling request <uri>" with the query string: it is cut."""
    cfg = Config()
    cfg.set("errorlog", "-")
    logger = GunicornLogger(cfg)
    try:
        raise ValueError(f"data {PATIENT}")
    except ValueError:
        logger.exception("Error handling request %s", f"/cds-services?patient={PATIENT}")
    logger.error("Error handling request %s", "/x?a=1&b=2")
    (first, second) = (orjson.loads(line) for line in capsys.readouterr().err.splitlines())
    assert PATIENT not in json.dumps(first)
    assert first["message"] == "Error handling request /cds-services?[query removed]"
    assert first["exception"] == "ValueError" and first["level"] == "ERROR"
    assert second["message"] == "Error handling request /x?[query removed]"
    assert second["logger"] == "gunicorn.error"


@pytest.fixture(autouse=True)
def _restore_gunicorn_loggers():
    """GunicornLogger configures gunicorn's process-wide loggers: undo it after each test."""
    saved = {n: logging.getLogger(n).handlers[:] for n in ("gunicorn.error", "gunicorn.access")}
    yield
    for name, handlers in saved.items():
        logging.getLogger(name).handlers[:] = handlers
