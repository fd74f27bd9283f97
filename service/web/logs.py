"""JSON logs, one object per line. Only fields passed explicitly are written: log calls carry
no patient data, and tokens are never passed to a logger.

gunicorn's own error and access logs are written in the same format (:class:`GunicornLogger`,
its ``logger_class``), so that every line on stderr is one JSON object."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from gunicorn import glogging

from cds_hooks.http import ROUTE_KEY

ALLOWED_EXTRA = ("fields", "reason", "error_type")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        for name in ALLOWED_EXTRA[1:]:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            # the exception type and where it happened, never its message (it may hold data)
            tb = record.exc_info[2]
            while tb and tb.tb_next:
                tb = tb.tb_next
            entry["exception"] = record.exc_info[0].__name__
            if tb:
                entry["at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return orjson.dumps(entry, default=str).decode()


#: the service's own loggers: they follow KCDS_LOG_LEVEL
OWN_LOGGERS = ("service", "cds_hooks")
#: HTTP clients log request URLs, and a FHIR search URL names the patient: errors only
URL_LOGGERS = ("urllib3", "requests")


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr: the service's own loggers at ``level``; libraries, whose
    messages are not vetted for patient data, at WARNING at most; HTTP clients at ERROR;
    Python warnings through the same handler (not printed as text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


#: a query string in a logged URL (a FHIR search or a request URI names the patient)
_QUERY = re.compile(r"\?[^\s\"']*")


class _NoQueryStrings(logging.Filter):
    """Drops query strings from gunicorn's messages ("Error handling request /x?patient=…")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY.sub("?[query removed]", message), None
        return True


class GunicornLogger(glogging.Logger):
    """gunicorn's error and access logs as the service's JSON lines (``logger_class`` in
    ``gunicorn_conf``). Access lines, written only when gunicorn's access log is switched on
    (the app writes its own), carry the method, the matched route (a raw path is the caller's
    choice and may name a patient), the status, the duration and the response size; never the
    path, the query, the referrer or headers."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(_NoQueryStrings())

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status  # "200 OK", or a number
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get(ROUTE_KEY, "unmatched"),
            "status": int(str(status).split(None, 1)[0]),
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "bytes": getattr(resp, "sent", None),
        }
        self.access_log.info("request", extra={"fields": fields})
