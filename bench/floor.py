"""The floor of a hook call over HTTP: a bare WSGI app that reads the request body and
parses it with ``orjson.loads``, and answers ``{"cards": []}``.

``bench/run.py`` serves it with the same gunicorn and the same settings as the service
(``service/web/gunicorn_conf.py``), beside it in the same run, so the service's latency
and throughput can be stated as a ratio to what reading the request costs at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

ANSWER = b'{"cards":[]}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/health/live":  # loadtest.start waits for this
        start_response("200 OK", HEADERS)
        return [ANSWER]
    orjson.loads(environ["wsgi.input"].read())
    start_response("200 OK", HEADERS)
    return [ANSWER]
