"""Operations: health probes, Prometheus metrics (in one process and across gunicorn
workers), gunicorn settings from the environment, and a graceful SIGTERM."""

from __future__ import annotations

import ast
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import orjson
import psycopg
import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from werkzeug import Request, Response

from cds_hooks.auth import FAILURE_REASONS
from cds_hooks.observer import FETCH_OUTCOMES
from service.config import ConfigError, Settings
from service.engine.rules import RULES
from service.registry import schema
from service.registry.store import open_store
from service.tools.fixtures import load
from service.web.app import create_app
from service.web.metrics import INDICATORS, OTHER, REGISTRY_FAILURES, SNOOZE_OUTCOMES
from tests.auth_helpers import ISSUER, PUBLIC_URL, bearer, es384
from tests.conftest import ROOT, free_port, start_gunicorn, stop

SIGN = "/cds-services/ketamine-order-sign"
REQUEST, _ = load("clean-iv-ketamine-sign")
KEY = "ops-test-pseudonym-key-0123456789abcdef"
TOKEN = "metrics-token-0123456789abcdef0123456789"
TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
SERVICES = {"ketamine-order-select", "ketamine-order-sign", "ketamine-patient-view"}


def app_for(tmp_path: Path, **overrides):
    settings = Settings(auth="off", database_url=f"sqlite:///{tmp_path}/ops.db", **overrides)
    return create_app(settings)


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when it has no value yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post_hook(client, body=None):
    return client.post(SIGN, data=orjson.dumps(body or REQUEST), content_type="application/json")


# -- health ---------------------------------------------------------------------------------


def test_live_and_ready_answer_without_a_caller_jwt(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [es384().jwk()]}))
    issuers = (ISSUER, {"jwks_file": str(jwks)})
    settings = Settings.from_env(
        {
            "KCDS_TRUSTED_ISSUERS": orjson.dumps(dict([issuers])).decode(),
            "KCDS_PSEUDONYM_KEY": KEY,
            "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/ops.db",
        }
    )
    client = create_app(settings).test_client()
    assert client.get("/cds-services").status_code == 401  # auth is on
    live = client.get("/health/live")
    assert live.status_code == 200 and live.json["status"] == "ok"
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"policy": "ok", "journal": "ok"}
    assert ready.json["dependencies"]["replay_cache"] == "ok"  # KCDS_REPLAY_OUTAGE=memory
    assert set(ready.json["dependencies"]["registry"]) == {
        "state",
        "registry",
        "journal",
        "journal_backlog",
    }
    assert ready.headers["Cache-Control"] == "no-store"


@contextmanager
def refusing_connections(postgres_url: str):
    """The test database refuses connections (its sessions cut) until the block ends."""
    name = make_url(postgres_url).database
    admin = make_url(postgres_url).set(database="postgres").render_as_string(False)

    def allow(value: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(name), sql.SQL("true" if value else "false")
                )
            )
            if not value:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [name],
                )

    allow(False)
    try:
        yield
    finally:
        allow(True)


def test_ready_stays_200_and_reports_the_registry_down_while_its_database_refuses(
    postgres_url, monkeypatch, tmp_path
):
    """The registry is an audit log: its outage is a degradation in the body and the
    metrics, never a 503 (issue 14). Hooks and feedback go on meanwhile."""
    monkeypatch.setattr("service.web.health.CACHE_SECONDS", 0.0)
    monkeypatch.setattr("service.registry.journal.PROBE_EVERY", 0.1)
    app = create_app(
        Settings(
            auth="off",
            database_url=postgres_url,
            pseudonym_key=KEY,
            journal=str(tmp_path / "journal.db"),
        )
    )
    client = app.test_client()
    assert post_hook(client).status_code == 200
    assert app.extensions["ketamine-cds.registry"].flush()
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json["status"] == "ok"
    assert ready.json["dependencies"]["registry"]["registry"] == "up"
    with refusing_connections(postgres_url):
        assert post_hook(client).status_code == 200
        item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T10:00:00Z"}
        assert client.post(SIGN + "/feedback", json={"feedback": [item]}).status_code == 200
        for _ in range(400):  # the shipper finds the database gone within a few tries
            down = client.get("/health/ready")
            assert down.status_code == 200
            if down.json["dependencies"]["registry"]["registry"] == "down":
                break
            time.sleep(0.05)
        assert down.json["status"] == "degraded"
        assert down.json["dependencies"]["registry"]["journal_backlog"] == 2
        assert "postgres" not in down.get_data(as_text=True)  # no URL, no driver message
    assert app.extensions["ketamine-cds.registry"].flush(timeout=30)
    back = client.get("/health/ready").json["dependencies"]["registry"]
    assert (back["registry"], back["journal_backlog"]) == ("up", 0)


@pytest.mark.parametrize(("outage", "status"), [("memory", 200), ("refuse", 503)])
def test_a_shared_replay_cache_that_does_not_answer_is_a_503_only_when_the_site_refuses(
    tmp_path, outage, status
):
    """KCDS_REPLAY_OUTAGE=memory (the default): calls go on, checked per process, so the
    outage is a degradation in readiness's body; refuse: no call can pass, so not ready."""
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [es384().jwk()]}))
    settings = Settings.from_env(
        {
            "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_file": str(jwks)}}).decode(),
            "KCDS_REGISTRY": "off",
            "KCDS_REPLAY_CACHE": f"redis://127.0.0.1:{free_port()}/0",  # nobody listens
            "KCDS_REPLAY_OUTAGE": outage,
        }
    )
    ready = create_app(settings).test_client().get("/health/ready")
    assert ready.status_code == status
    assert ready.json["checks"]["policy"] == "ok"
    replay = {**ready.json["checks"], **ready.json.get("dependencies", {})}["replay_cache"]
    assert replay.startswith("failed (")
    assert "journal" not in ready.json["checks"]  # KCDS_REGISTRY=off


# -- metrics in one process -----------------------------------------------------------------


def test_metrics_count_requests_cards_fetches_and_refusals_with_fixed_labels(tmp_path, httpserver):
    client = app_for(tmp_path).test_client()
    route = "/cds-services/<service_id>"
    before = {
        "ok": sample(
            "kcds_http_requests_total",
            route=route,
            service="ketamine-order-sign",
            status="200",
        ),
        "r38": sample(
            "kcds_cards_total", service="ketamine-order-sign", indicator="info", rule="R38"
        ),
        "unknown": sample("kcds_http_requests_total", route=route, service="", status="404"),
        "fetched": sample("kcds_fhir_fetches_total", key="conditions", outcome="ok"),
        "failed": sample("kcds_fhir_fetches_total", key="observations", outcome="failed"),
    }
    response = post_hook(client)
    assert response.status_code == 200
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404

    # without prefetch: the keys come from a FHIR server on loopback, observations fail
    def bundle(_request: Request) -> Response:
        return Response('{"resourceType": "Bundle", "type": "searchset"}', 200)

    httpserver.expect_request("/fhir/Patient/" + REQUEST["context"]["patientId"]).respond_with_json(
        REQUEST["prefetch"]["patient"]
    )
    httpserver.expect_request("/fhir/Observation").respond_with_data("no", status=500)
    httpserver.expect_request(__import__("re").compile("^/fhir/.*")).respond_with_handler(bundle)
    without = {k: v for k, v in REQUEST.items() if k != "prefetch"}
    without["fhirServer"] = httpserver.url_for("/fhir")
    assert post_hook(client, without).status_code == 200

    after_ok = sample(
        "kcds_http_requests_total", route=route, service="ketamine-order-sign", status="200"
    )
    assert after_ok == before["ok"] + 2
    assert (
        sample("kcds_cards_total", service="ketamine-order-sign", indicator="info", rule="R38")
        >= before["r38"] + 1
    )
    assert sample("kcds_http_requests_total", route=route, service="", status="404") == (
        before["unknown"] + 1
    )
    assert (
        sample("kcds_fhir_fetches_total", key="conditions", outcome="ok") == before["fetched"] + 1
    )
    assert (
        sample("kcds_fhir_fetches_total", key="observations", outcome="failed")
        == before["failed"] + 1
    )
    assert (
        sample(
            "kcds_http_request_duration_seconds_count", route=route, service="ketamine-order-sign"
        )
        >= 2
    )

    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = scraped.get_data(as_text=True)
    # nothing of the patient in any label: every value is from a fixed set
    patient = REQUEST["prefetch"]["patient"]
    for secret in (REQUEST["context"]["patientId"], patient["name"][0]["family"]):
        assert secret not in text
    allowed = {
        "service": {
            "",
            OTHER,
            "ketamine-order-select",
            "ketamine-order-sign",
            "ketamine-patient-view",
        },
        "indicator": INDICATORS | {OTHER},
        "rule": set(RULES) | {OTHER},
        "outcome": set(FETCH_OUTCOMES) | SNOOZE_OUTCOMES | {OTHER},
        "reason": FAILURE_REASONS | {OTHER},
        "kind": REGISTRY_FAILURES | {OTHER},
        "status": {str(code) for code in range(100, 600)},
    }
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("kcds_"):
            continue
        for s in family.samples:
            for label, value in s.labels.items():
                if label in allowed:
                    assert value in allowed[label], (family.name, label, value)
                elif label == "route":
                    assert value == "unmatched" or value.startswith("/"), value
                    assert REQUEST["context"]["patientId"] not in value


def test_auth_failures_are_counted_by_a_fixed_reason(tmp_path):
    key = es384()
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [key.jwk()]}))
    settings = Settings.from_env(
        {
            "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_file": str(jwks)}}).decode(),
            "KCDS_REGISTRY": "off",
            "KCDS_PUBLIC_URL": PUBLIC_URL,
        }
    )
    client = create_app(settings).test_client()
    reasons = ("no bearer token", "untrusted issuer", "jti replayed", "algorithm refused")
    before = {r: sample("kcds_auth_failures_total", reason=r) for r in reasons}
    token = key.token(PUBLIC_URL + "/cds-services")
    assert client.get("/cds-services").status_code == 401
    assert client.get("/cds-services", headers=bearer(token)).status_code == 200
    assert client.get("/cds-services", headers=bearer(token)).status_code == 401
    stranger = key.token(PUBLIC_URL + "/cds-services", iss="https://patient-name.example")
    assert client.get("/cds-services", headers=bearer(stranger)).status_code == 401
    for reason in reasons[:3]:
        assert sample("kcds_auth_failures_total", reason=reason) == before[reason] + 1, reason
    text = client.get("/metrics").get_data(as_text=True)
    assert "patient-name" not in text


def test_every_refusal_reason_in_auth_is_a_fixed_label():
    """An AuthenticationError raised with a literal reason uses one of FAILURE_REASONS; one
    whose reason is built from the token's values passes a fixed code."""
    tree = ast.parse((ROOT / "cds_hooks" / "auth.py").read_text("utf-8"))
    raised = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "AuthenticationError"
    ]
    assert len(raised) > 15
    for call in raised:
        if len(call.args) == 2:
            assert call.args[1].value in FAILURE_REASONS  # type: ignore[attr-defined]
        elif isinstance(call.args[0], ast.Constant):
            assert call.args[0].value in FAILURE_REASONS, call.args[0].value
        elif isinstance(call.args[0], ast.JoinedStr):  # f"{claim} missing" and the like
            expr = call.args[0].values[0].value  # type: ignore[attr-defined]
            assert isinstance(expr, ast.Attribute | ast.Name), ast.unparse(call)
        else:  # the PyJWT mapping: reasons from _PYJWT_REASONS or "invalid token"
            assert ast.unparse(call.args[0]) == "reason"


def test_registry_write_failures_are_counted(tmp_path, monkeypatch):
    """A journal that does not take a write: counted (kind journal); the feedback goes
    straight to the database."""
    journal = tmp_path / "journal.db"
    client = create_app(
        Settings(
            auth="off",
            database_url=f"sqlite:///{tmp_path}/ops.db",
            pseudonym_key=KEY,
            journal=str(journal),
        )
    ).test_client()
    before = sample("kcds_registry_write_failures_total", kind="journal")
    monkeypatch.setattr("service.registry.journal.Journal._connection", _unopenable)
    item = {"card": str(uuid.uuid4()), "outcome": "overridden"}
    item["outcomeTimestamp"] = "2026-03-02T10:00:00Z"
    r = client.post(SIGN + "/feedback", json={"feedback": [item]})
    assert r.status_code == 200 and r.json["stored"] == 1
    assert sample("kcds_registry_write_failures_total", kind="journal") == before + 1


def _unopenable(self):
    raise sqlite3.OperationalError("unable to open database file")


def test_metrics_token_when_configured(tmp_path):
    client = app_for(tmp_path, metrics_token=TOKEN).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("x" * 40)).status_code == 403
    ok = client.get("/metrics", headers=bearer(TOKEN))
    assert ok.status_code == 200 and b"kcds_build_info" in ok.data
    with pytest.raises(ConfigError, match="KCDS_METRICS_TOKEN"):
        Settings.from_env({"KCDS_AUTH": "off", "KCDS_METRICS_TOKEN": "short"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("memory", True),
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://cache.example.org:6380/1", True),
        ("postgresql://kcds@db.example.org/kcds", True),
        ("sqlite:////var/lib/kcds/replay.db", True),
        ("memcached://127.0.0.1:11211", False),
        ("redis", False),
    ],
)
def test_replay_cache_setting_is_validated(value, ok):
    env = {"KCDS_AUTH": "off", "KCDS_REPLAY_CACHE": value}
    if ok:
        assert Settings.from_env(env).replay_cache == value
    else:
        with pytest.raises(ConfigError, match="KCDS_REPLAY_CACHE"):
            Settings.from_env(env)


def test_replay_cache_registry_means_the_registry_database():
    url = "postgresql://kcds:secret@db.example.org/kcds"
    env = {"KCDS_AUTH": "off", "KCDS_REPLAY_CACHE": "registry", "KCDS_DATABASE_URL": url}
    settings = Settings.from_env(env)
    assert settings.replay_cache == url
    default = Settings.from_env({"KCDS_AUTH": "off", "KCDS_REPLAY_CACHE": "registry"})
    assert default.replay_cache == default.database_url == "sqlite:///./ketamine-cds.db"


# -- gunicorn -------------------------------------------------------------------------------


def gunicorn_settings(env: dict[str, str]) -> dict:
    code = (
        "import json, service.web.gunicorn_conf as c; print(json.dumps({k: getattr(c, k) for k in "
        "('workers','threads','worker_class','timeout','graceful_timeout','keepalive',"
        "'max_requests','max_requests_jitter','preload_app','control_socket_disable')}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KCDS_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "PROMETHEUS_MULTIPROC_DIR": "", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return orjson.loads(out.stdout)


def test_gunicorn_defaults_for_a_two_core_container_and_overrides():
    assert gunicorn_settings({}) == {
        "workers": 2,
        "threads": 4,
        "worker_class": "service.web.worker.ThreadWorker",
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "max_requests": 0,
        "max_requests_jitter": 500,
        "preload_app": True,
        "control_socket_disable": True,
    }
    tuned = gunicorn_settings(
        {
            "KCDS_WORKERS": "3",
            "KCDS_THREADS": "1",
            "KCDS_WORKER_TIMEOUT": "60",
            "KCDS_GRACEFUL_TIMEOUT": "25",
            "KCDS_MAX_REQUESTS": "100",
            "KCDS_MAX_REQUESTS_JITTER": "10",
            "KCDS_KEEPALIVE": "75",
        }
    )
    assert tuned["workers"] == 3 and tuned["worker_class"] == "sync"
    assert (tuned["timeout"], tuned["graceful_timeout"], tuned["keepalive"]) == (60, 25, 75)
    assert (tuned["max_requests"], tuned["max_requests_jitter"]) == (100, 10)


@pytest.mark.e2e
def test_metrics_add_up_across_workers_and_survive_worker_recycling(tmp_path):
    """Two workers recycled every 15 requests: /metrics, whichever worker answers it, counts
    every request of every worker, the recycled ones included."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # a previous run's: removed at start
    server = start_gunicorn(
        tmp_path,
        env={
            "KCDS_MAX_REQUESTS": "15",
            "KCDS_MAX_REQUESTS_JITTER": "0",
            "KCDS_THREADS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        workers=2,
    )
    calls = 60
    try:
        session = requests.Session()
        for _ in range(calls):
            assert session.get(server.url + "/cds-services", timeout=10).status_code == 200
            session.close()  # a new connection each time: spread over the workers
        time.sleep(1)  # let the last recycled workers come back
        texts = [requests.get(server.url + "/metrics", timeout=10).text for _ in range(4)]
    finally:
        stop(server)
    line = 'kcds_http_requests_total{route="/cds-services",service="",status="200"}'
    for text in texts:
        value = next(s for s in text.splitlines() if s.startswith(line)).split()[-1]
        assert float(value) == calls
    assert server.logs().count("Booting worker") >= 4  # workers were recycled


@pytest.mark.e2e
def test_sigterm_lets_in_flight_requests_finish_and_writes_the_registry(tmp_path, httpserver):
    """A hook call waiting on a slow FHIR server when SIGTERM arrives still gets its 200, and
    its evaluation is in the registry after the server exits."""

    def slow(_request: Request) -> Response:
        time.sleep(2.0)
        return Response(
            orjson.dumps(REQUEST["prefetch"]["patient"]), content_type="application/fhir+json"
        )

    def empty(_request: Request) -> Response:
        return Response('{"resourceType": "Bundle", "type": "searchset"}', 200)

    httpserver.expect_request(
        "/fhir/Patient/" + REQUEST["context"]["patientId"]
    ).respond_with_handler(slow)
    httpserver.expect_request(__import__("re").compile("^/fhir/.*")).respond_with_handler(empty)
    database = tmp_path / "graceful.db"
    server = start_gunicorn(
        tmp_path,
        env={
            "KCDS_DATABASE_URL": f"sqlite:///{database}",
            "KCDS_PSEUDONYM_KEY": KEY,
            "KCDS_FHIR_TIMEOUT": "5",
        },
        workers=1,
    )
    hook_instance = str(uuid.uuid4())
    body = {k: v for k, v in REQUEST.items() if k != "prefetch"}
    body |= {"hookInstance": hook_instance, "fhirServer": httpserver.url_for("/fhir")}
    result: dict = {}

    def call() -> None:
        result["response"] = requests.post(server.url + SIGN, json=body, timeout=30)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.8)  # the call is now waiting on the FHIR server
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(30)
    server.process.wait(30)
    took = time.monotonic() - started
    assert result["response"].status_code == 200, result["response"].text
    assert result["response"].json()["cards"]
    assert server.process.returncode == 0, server.logs()[-2000:]
    assert took < 15
    store = open_store(f"sqlite:///{database}")
    with store.reading() as conn:
        recorded = conn.scalar(
            select(func.count())
            .select_from(schema.evaluation)
            .where(schema.evaluation.c.hook_instance == hook_instance)
        )
    assert recorded == 1
