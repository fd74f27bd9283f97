"""JSON logs, one object per line. Only fields passed explicitly are written: log calls carry
no patient data, and tokens are never passed to a logger."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

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
    messages are not vetted for patient data, at WARNING at most; HTTP clients at ERROR."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
