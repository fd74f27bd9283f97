"""CPU time per request, by part of the request path, inside a gunicorn worker under load.

Installed in a worker by ``bench/attribute_conf.py`` (never by the service itself): wraps the
functions that mark the parts of a hook call (body read, parse, validation, prefetch, each
engine stage, the journal write, serialisation, the access log, the metrics) and adds the
*thread CPU time* (``time.thread_time``) each one used, exclusive of the wrapped parts it
called. CPU time, unlike wall time, is not stretched when other processes share the cores,
so the figures hold on a busy machine. What no wrapper claims inside the Flask app is
Flask/Werkzeug; what the worker's threads used outside the app is gunicorn (HTTP parsing,
socket I/O, the gthread loop) or a background thread (the journal shipper), read per
thread from ``/proc/self/task``.

``GET /__bench/cpu`` answers the accumulated figures; ``POST /__bench/cpu`` resets them.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

PATH = "/__bench/cpu"
REQUESTS = "requests"  # the bucket that counts the app's requests instead of seconds
GC = "garbage collection"
TICK = os.sysconf("SC_CLK_TCK")
clock = time.thread_time


class Account:
    """Exclusive thread CPU seconds per bucket, per thread (no lock on the hot path)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[dict[str, float]] = []
        self._lock = threading.Lock()

    def _state(self) -> tuple[list[float], dict[str, float]]:
        local = self._local
        if not hasattr(local, "stack"):
            local.stack = []
            local.buckets = defaultdict(float)
            with self._lock:
                self._all.append(local.buckets)
        return local.stack, local.buckets

    def wrap(self, fn: Callable, bucket: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack, buckets = self._state()
            stack.append(0.0)
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - started
                inner = stack.pop()
                buckets[bucket] += spent - inner
                if stack:
                    stack[-1] += spent

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` entry: a collection's CPU goes to its own bucket, not to the
        part of the path whose allocation triggered it."""
        stack, buckets = self._state()
        if phase == "start":
            self._local.gc_started = clock()
            return
        spent = clock() - getattr(self._local, "gc_started", clock())
        buckets[GC] += spent
        if stack:
            stack[-1] += spent

    def count_request(self) -> None:
        self._state()[1][REQUESTS] += 1

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        with self._lock:
            for buckets in self._all:
                for name, value in list(buckets.items()):
                    out[name] += value
        return dict(out)

    def reset(self) -> None:
        with self._lock:
            for buckets in self._all:
                buckets.clear()


def thread_seconds() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by Python thread name."""
    out: dict[str, float] = defaultdict(float)
    main = threading.main_thread()
    for thread in threading.enumerate():
        # after a fork, the thread that forked is the main one and its id is the process id
        tid = os.getpid() if thread is main else thread.native_id
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = thread.name.rsplit("_", 1)[0] if "ThreadPoolExecutor" in thread.name else thread.name
        out[name] += (int(fields[11]) + int(fields[12])) / TICK
    return dict(out)


def _patch(account: Account, owner: Any, name: str, bucket: str) -> None:
    setattr(owner, name, account.wrap(getattr(owner, name), bucket))


def install(app: Any) -> Account:
    """Wrap the parts of the request path in ``app`` (a ``create_app`` Flask app)."""
    import flask.wrappers

    import cds_hooks.http as http
    import cds_hooks.service as pipeline
    import cds_hooks.validation as validation
    import service.engine.hooks as hooks
    from cds_hooks.models import Response
    from service.engine.record import RecordBuilder
    from service.web.metrics import Metrics

    account = Account()
    patches = [
        (flask.wrappers.Request, "get_data", "read body (werkzeug)"),
        (http, "_parse_json", "parse (orjson)"),
        (http, "handle", "pipeline glue (cds_hooks.service)"),
        (pipeline, "check_request", "validation: other"),
        (validation, "check_limits", "validation: input limits"),
        (validation, "check", "validation: JSON Schema"),
        (pipeline, "resolve_prefetch", "prefetch resolution"),
        (hooks, "ketamine_orders", "engine: orders"),
        (RecordBuilder, "build", "engine: record"),
        (hooks, "evaluate", "engine: rules"),
        (hooks, "look_up", "engine: snooze lookup"),
        (hooks, "render", "engine: cards"),
        (http, "json_response", "serialise (orjson + Response)"),
        (Response, "to_json", "serialise (orjson + Response)"),
        (Metrics, "request_done", "metrics"),
        (Metrics, "cards_returned", "metrics"),
        # the hook view leaves what the call built to the response's close (after the answer
        # is written): freeing it shows here
        (flask.wrappers.Response, "close", "freeing the request's objects (after the answer)"),
    ]
    for owner, name, bucket in patches:
        if hasattr(owner, name):
            _patch(account, owner, name, bucket)
    for name in ("info", "handle"):  # the access line goes to handle; errors through info
        setattr(http.log, name, account.wrap(getattr(http.log, name), "logging (access line)"))
    engine = app.extensions["ketamine-cds"]
    if engine.recorder is not None:
        engine.recorder = account.wrap(engine.recorder, "registry: journal write")
    # the engine handler: its remainder (Evaluation, summaries) is the engine's own glue
    catalog = _catalog(app)
    for sid, definition in list(catalog._services.items()):
        wrapped = account.wrap(definition.handler, "engine: handler glue")
        catalog._services[sid] = dataclasses.replace(definition, handler=wrapped)
    # the view's own code (what the call built is freed at the response's close, above)
    view = app.view_functions["cds_hooks.call"]
    app.view_functions["cds_hooks.call"] = account.wrap(view, "view (its own code)")

    inner = app.wsgi_app
    timed_app = account.wrap(inner, "Flask/Werkzeug (routing, request, hooks)")

    def wsgi_app(environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == PATH:
            if environ["REQUEST_METHOD"] == "POST":
                account.reset()
                body = b"{}"
            else:
                body = orjson.dumps(
                    {
                        "buckets": account.totals(),
                        "threads": thread_seconds(),
                        "process": time.process_time(),
                        "pid": os.getpid(),
                        "gc_frozen": gc.get_freeze_count(),
                    }
                )
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        account.count_request()
        return timed_app(environ, start_response)

    app.wsgi_app = wsgi_app
    gc.callbacks.append(account.on_gc)
    return account


def _catalog(app: Any) -> Any:
    """The ServiceCatalog the CDS Hooks view closes over."""
    from cds_hooks.service import ServiceCatalog

    view = app.view_functions["cds_hooks.call"]
    for cell in view.__closure__ or ():
        if isinstance(cell.cell_contents, ServiceCatalog):
            return cell.cell_contents
    raise RuntimeError("no ServiceCatalog in the view's closure")


def overhead_seconds(runs: int = 20000) -> float:
    """Thread CPU one wrapped call adds (two clock reads and the bookkeeping)."""
    account = Account()
    noop = account.wrap(lambda: None, "x")
    bare = lambda: None  # noqa: E731
    started = clock()
    for _ in range(runs):
        bare()
    base = clock() - started
    started = clock()
    for _ in range(runs):
        noop()
    return max(0.0, (clock() - started - base) / runs)
