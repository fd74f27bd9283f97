"""Two service instances behind nginx, sharing one PostgreSQL (the registry and the JWT
replay cache), under a sustained load of signed evaluations and feedback posts; one instance
is killed with SIGKILL mid-run and started again.

Afterwards: no acknowledged (200) feedback is missing, no evaluation is recorded twice, a
token used on one instance is refused by the other, and the failed requests are no more than
the requests that were in flight when the instance was killed. The figures are written to
``multi-instance.txt`` in the test's directory and printed (worded so that a passing run's
"requests unanswered" is not read as pytest's "N failed").

Needs nginx (Debian's package; ``.ci/run`` installs it) and PostgreSQL; skipped, saying
why, without them. Bounded: about 30 s of load.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import requests
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select

from service.registry import schema
from service.registry.store import open_store
from service.tools.fixtures import load
from tests.auth_helpers import ISSUER, JwksServer, bearer, es384
from tests.conftest import Server, free_port, start_gunicorn, stop

pytestmark = [pytest.mark.multi_instance, pytest.mark.e2e, pytest.mark.postgres]

SIGN = "/cds-services/ketamine-order-sign"
FEEDBACK = SIGN + "/feedback"
REQUEST, _ = load("clean-iv-ketamine-sign")
KEY = es384("multi-instance-key")
LOAD_SECONDS = 30.0
KILL_AT = 10.0  # seconds into the load
RESTART_AFTER = 3.0  # seconds the instance stays dead
#: a request that starts within moments of the kill can still fail on its way to the dead
#: instance (a POST nginx has begun to send is not retried: a 502). Seen once in a CI run:
#: one 502, 22 ms long, starting right after the killed processes were gone. Not diagnosed
#: further; such a request is counted as in flight at the kill.
SOCKET_TEARDOWN = 0.25
CLIENTS = 8
NGINX_CONF = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream kcds {{
    server 127.0.0.1:{a} max_fails=1 fail_timeout=2s;
    server 127.0.0.1:{b} max_fails=1 fail_timeout=2s;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 5m;
    location / {{
      proxy_pass http://kcds;
      proxy_set_header Host $host;
      proxy_connect_timeout 1s;
      proxy_read_timeout 30s;
      # a POST is passed to the other instance only when it never reached the first one
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


@dataclass
class Tally:
    """What the load generator saw; every field is updated under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    in_flight: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)  # every request's
    failed_spans: list[tuple[float, float]] = field(default_factory=list)
    answered: list[tuple[float, str]] = field(default_factory=list)  # (time, hookInstance)
    acked_feedback: list[dict] = field(default_factory=list)
    feedback_posts: int = 0


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: its sockets are closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_instance(server: Server) -> float:
    """SIGKILL to the master and every worker at once, as when a machine or container dies;
    returns when all of them are gone. Until then the dying instance's listening socket may
    still take connections, and the requests on them fail: they are in flight at the kill."""
    pids = [*children(server.process.pid), server.process.pid]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.002)
    gone = time.monotonic()
    server.process.wait(10)
    return gone


def feedback_item(card: dict, n: int) -> dict:
    item = {"card": card["uuid"], "outcomeTimestamp": f"2026-03-02T10:{n % 60:02d}:00Z"}
    if n % 2 and card.get("suggestions"):
        return item | {
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        }
    reason = {"system": "urn:test:reasons", "code": f"reason-{n % 3}"}
    return item | {"outcome": "overridden", "overrideReason": {"reason": reason}}


def client_loop(base: str, public: str, tally: Tally, stop_at: float, number: int) -> None:
    session = requests.Session()

    def post(path: str, body: dict) -> requests.Response | None:
        token = KEY.token(public + path)
        with tally.lock:
            tally.requests += 1
            tally.in_flight += 1
        began = time.monotonic()
        failure = None
        try:
            response = session.post(
                base + path,
                data=orjson.dumps(body),
                headers={**bearer(token), "Content-Type": "application/json"},
                timeout=15,
            )
            if response.status_code != 200:
                failure = f"{path}: HTTP {response.status_code}"
        except requests.RequestException as exc:
            failure = f"{path}: {type(exc).__name__}"
            session.close()
        span = (began, time.monotonic())
        with tally.lock:
            tally.in_flight -= 1
            tally.spans.append(span)
            if failure:
                tally.failures.append(failure)
                tally.failed_spans.append(span)
        return None if failure else response

    n = number * 1_000_000
    while time.monotonic() < stop_at:
        n += 1
        hook_instance = str(uuid.uuid4())
        answer = post(SIGN, {**REQUEST, "hookInstance": hook_instance})
        if answer is None:
            continue
        with tally.lock:
            tally.answered.append((time.monotonic(), hook_instance))
        items = [feedback_item(card, n) for card in answer.json()["cards"]]
        if not items:
            continue
        with tally.lock:
            tally.feedback_posts += 1
        if post(FEEDBACK, {"feedback": items}) is not None:
            with tally.lock:
                tally.acked_feedback.extend(items)


def test_two_instances_behind_nginx_survive_a_sigkill(tmp_path, postgres_url, capsys):
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    jwks_http = HTTPServer(host="127.0.0.1", port=free_port())
    jwks_http.start()
    jwks = JwksServer(jwks_http, keys=[KEY.jwk()])
    ports = (free_port(), free_port())
    nginx_port = free_port()
    public = f"http://127.0.0.1:{nginx_port}"
    env = {
        "KCDS_AUTH": "jwt",
        "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_url": jwks.url}}).decode(),
        "KCDS_PUBLIC_URL": public,
        "KCDS_DATABASE_URL": postgres_url,
        "KCDS_PSEUDONYM_KEY": "multi-instance-pseudonym-key-0123456789abcdef",
        "KCDS_REPLAY_CACHE": "registry",
        "KCDS_LOG_LEVEL": "WARNING",
        "KCDS_THREADS": "4",
    }
    servers = [start_gunicorn(tmp_path, env, workers=2, port=p) for p in ports]
    nginx = None
    try:
        nginx, port = start_nginx_on(tmp_path, ports, nginx_port)
        base = f"http://127.0.0.1:{port}"
        tally = Tally()
        started = time.monotonic()
        stop_at = started + LOAD_SECONDS
        threads = [
            threading.Thread(target=client_loop, args=(base, public, tally, stop_at, i))
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(KILL_AT)
        with tally.lock:
            failures_before_kill = len(tally.failures)
        killed_at = time.monotonic()
        kill_done = kill_instance(servers[0])
        time.sleep(RESTART_AFTER)
        servers[0] = start_gunicorn(tmp_path, env, workers=2, port=ports[0])
        restarted_at = time.monotonic()
        for t in threads:
            t.join(LOAD_SECONDS + 30)
        elapsed = time.monotonic() - started

        # a token used on one instance is refused by the other (the shared replay cache)
        replays = []
        for first, second in ((servers[0], servers[1]), (servers[1], servers[0])):
            token = KEY.token(public + "/cds-services")
            used = requests.get(first.url + "/cds-services", headers=bearer(token), timeout=10)
            again = requests.get(second.url + "/cds-services", headers=bearer(token), timeout=10)
            replays.append((used.status_code, again.status_code))
        token = KEY.token(public + "/cds-services")
        through_nginx = [
            requests.get(base + "/cds-services", headers=bearer(token), timeout=10).status_code
            for _ in range(2)
        ]
    finally:
        for server in servers:
            if server.process.poll() is None:
                stop(server)  # SIGTERM: queued evaluations are written
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        jwks_http.stop()

    store = open_store(postgres_url)
    with store.reading() as conn:
        evaluations = conn.scalar(select(func.count()).select_from(schema.evaluation))
        doubled = conn.execute(
            select(schema.evaluation.c.hook_instance)
            .group_by(schema.evaluation.c.hook_instance)
            .having(func.count() > 1)
        ).all()
        recorded = set(conn.scalars(select(schema.evaluation.c.hook_instance)))
        feedback_rows = conn.execute(
            select(
                schema.feedback.c.card_uuid,
                schema.feedback.c.outcome,
                schema.feedback.c.outcome_time,
            )
        ).all()
        replay_rows = conn.exec_driver_sql("SELECT count(*) FROM kcds_jwt_replay").scalar()
    stored_feedback = {(card, outcome, when.timestamp()) for card, outcome, when in feedback_rows}
    acked = {
        (i["card"], i["outcome"], datetime.fromisoformat(i["outcomeTimestamp"]).timestamp())
        for i in tally.acked_feedback
    }
    missing_feedback = acked - stored_feedback
    answered = {hi for _, hi in tally.answered}
    lost = answered - recorded
    answered_just_before_kill = sum(1 for t, _ in tally.answered if killed_at - 1 <= t < killed_at)
    failures = len(tally.failures)

    def at_kill(span: tuple[float, float]) -> bool:
        return span[0] <= kill_done + SOCKET_TEARDOWN and span[1] >= killed_at

    in_flight_at_kill = sum(1 for span in tally.spans if at_kill(span))
    failed_elsewhen = [span for span in tally.failed_spans if not at_kill(span)]
    summary = (
        f"multi-instance: {tally.requests} requests in {elapsed:.1f} s "
        f"({tally.requests / elapsed:.0f}/s through nginx, {CLIENTS} clients); "
        f"{failures} requests unanswered ({failures_before_kill} before the kill), "
        f"{in_flight_at_kill} in flight at the SIGKILL (the "
        f"{(kill_done - killed_at) * 1000:.0f} ms from the signal until every process was "
        f"gone); instance back after "
        f"{restarted_at - killed_at:.1f} s\n"
        f"  evaluations answered 200: {len(answered)}, recorded: {evaluations}, "
        f"recorded twice: {len(doubled)}, answered but lost with the killed instance's "
        f"queue: {len(lost)} (answered in the second before the kill: "
        f"{answered_just_before_kill})\n"
        f"  feedback posts: {tally.feedback_posts}, items acknowledged: {len(acked)}, "
        f"rows: {len(feedback_rows)}, acknowledged but missing: {len(missing_feedback)}\n"
        f"  replay cache rows: {replay_rows}; replay across instances (first, second): "
        f"{replays}; through nginx: {through_nginx}\n"
        f"  why unanswered: {sorted(set(tally.failures))[:8]}\n"
    )
    (tmp_path / "multi-instance.txt").write_text(summary)
    with capsys.disabled():
        print("\n" + summary)

    assert not missing_feedback, summary
    assert not doubled, summary
    assert replays == [(200, 401), (200, 401)], summary
    assert through_nginx == [200, 401], summary
    assert failures_before_kill == 0, summary
    assert not failed_elsewhen, summary  # every failure was a request in flight at the kill
    assert failures <= in_flight_at_kill, summary
    assert len(lost) <= answered_just_before_kill, summary
    assert tally.requests > 500, summary  # it was a load, not a trickle


def start_nginx_on(tmp: Path, ports: tuple[int, int], port: int) -> tuple[subprocess.Popen, int]:
    """nginx on ``port`` (the one KCDS_PUBLIC_URL names) in front of the two instances."""
    for _ in range(3):
        try:
            return _start_nginx_fixed(tmp, ports, port)
        except RuntimeError:
            time.sleep(0.5)
    raise RuntimeError("nginx did not start")


def _start_nginx_fixed(tmp: Path, ports: tuple[int, int], port: int):
    binary = nginx_binary()
    assert binary
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(tmp=tmp, user=user, a=ports[0], b=ports[1], port=port))
    process = subprocess.Popen(
        [
            binary,
            "-p",
            str(tmp),
            "-e",
            str(tmp / "nginx-error.log"),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp / "nginx-error.log").read_text()[-2000:])
        try:
            requests.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
            return process, port
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("nginx did not start")
