"""``GET /health/live`` and ``GET /health/ready``: what an orchestrator's probes ask.

- live: the process answers HTTP. Nothing else is checked, so an outage elsewhere never makes
  an orchestrator restart healthy processes.
- ready: this instance can give decision support: the policy and the value sets are loaded
  and the journal takes writes (see ``service.registry.journal``; a full disk is a
  degradation, not a failure: recording then goes straight to the database). Otherwise
  ``503`` with the failing check and its reason, so a load balancer sends calls elsewhere.
- degradations: what the answer does not depend on, reported in the body of ``ready``
  (``"status": "degraded"``, still ``200``) and in the metrics, to alert on: the registry
  database (an audit log: its outage only delays recording) and the shared JWT replay
  cache (while the site lets calls go on without it, ``KCDS_REPLAY_OUTAGE=memory``).

Neither needs the caller JWT. The reasons name a check and an exception type, never a
message (a driver's message can carry a database URL with its password). A result is kept
for :data:`CACHE_SECONDS`, and a check taking longer than :data:`CHECK_WITHIN` fails, so
probes cannot pile up behind a hung dependency.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, Response

from cds_hooks.http import json_response
from service import __version__

#: seconds a readiness result is reused
CACHE_SECONDS = 1.0
#: seconds one check of readiness may take
CHECK_WITHIN = 2.0
#: seconds a degradation's check may take before it is reported as not answering: the
#: answer must not wait on what it does not depend on
DEGRADATION_WITHIN = 0.25

#: raises when the dependency is not usable; may return a state worth reporting ("ok" if None)
Check = Callable[[], Any]


class Readiness:
    """Runs named checks with a time limit, at most once per :data:`CACHE_SECONDS`."""

    def __init__(self, checks: dict[str, Check], within: float = CHECK_WITHIN):
        self.checks = checks
        self.within = within
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None
        self._running: dict[str, Future] = {}
        self._result: tuple[float, dict[str, str]] | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # no thread survives a fork
            self._pool = ThreadPoolExecutor(max(1, len(self.checks)), "kcds-ready")
            self._pool_pid = os.getpid()
            self._running = {}
        return self._pool

    def results(self) -> dict[str, Any]:
        """check name → ``ok`` (or what it returned) or the reason it failed, as a string
        starting with ``failed`` or ``no answer``."""
        with self._lock:
            now = time.monotonic()
            if self._result is not None and now - self._result[0] < CACHE_SECONDS:
                return self._result[1]
            pool = self._executor()
            for name, check in self.checks.items():
                future = self._running.get(name)
                if future is None or future.done():  # a hung check is waited on, not repeated
                    self._running[name] = pool.submit(check)
            deadline = now + self.within
            results = {}
            for name, future in self._running.items():
                try:
                    value = future.result(timeout=max(0.0, deadline - time.monotonic()))
                    results[name] = "ok" if value is None else value
                except FutureTimeout:
                    results[name] = f"no answer within {self.within:g} s"
                except Exception as exc:
                    results[name] = f"failed ({type(exc).__name__})"
            self._result = (time.monotonic(), results)
            return results


def _failed(result: Any) -> bool:
    return isinstance(result, str) and result.startswith(("failed", "no answer"))


def health_blueprint(
    checks: dict[str, Check], degradations: dict[str, Check] | None = None
) -> Blueprint:
    """``checks`` decide readiness; ``degradations`` are reported in its body only: each
    returns its state (a string, or a dict holding ``state``), ``ok`` when all is well."""
    readiness = Readiness(checks)
    degraded = Readiness(degradations or {}, DEGRADATION_WITHIN)
    bp = Blueprint("kcds_health", __name__)

    def answer(body: dict[str, Any], status: int) -> Response:
        response = json_response(body, status)
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/health/live")
    def live() -> Response:
        return answer({"status": "ok", "version": __version__}, 200)

    @bp.get("/health/ready")
    def ready() -> Response:
        hard, soft = readiness.results(), degraded.results()
        failed = {name: why for name, why in hard.items() if why != "ok"}
        if failed:
            reason = "; ".join(f"{name}: {why}" for name, why in failed.items())
            body = {"status": "unavailable", "reason": reason, "checks": hard}
            return answer(body | ({"dependencies": soft} if soft else {}), 503)
        worse = [
            name
            for name, state in soft.items()
            if _failed(state) or (state if isinstance(state, str) else state.get("state")) != "ok"
        ]
        body = {"status": "degraded" if worse else "ok", "version": __version__}
        body["checks"] = hard
        if soft:
            body["dependencies"] = soft
        return answer(body, 200)

    return bp
