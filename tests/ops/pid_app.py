"""A WSGI app for the worker tests: answers, after ``?sleep=`` seconds, with the pid of the
worker process that served the request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    time.sleep(float(parse_qs(environ.get("QUERY_STRING", "")).get("sleep", ["0"])[0]))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
