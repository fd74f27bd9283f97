"""The gunicorn entry point: ``gunicorn service.web.wsgi:app``.

A configuration that cannot work (a setting missing or malformed, a journal or a SQLite
registry that cannot be written) stops the start at once, before any worker is forked: one
JSON log line naming the cause, and exit status 3 (gunicorn passes it on).
"""

import logging

from service.config import ConfigError

from . import logs
from .app import create_app

try:
    app = create_app()
except ConfigError as exc:
    logs.configure()  # the error may come before the app configured the logs
    logging.getLogger("service.web.wsgi").critical(
        "configuration unusable", extra={"fields": {"reason": str(exc)}}
    )
    raise SystemExit(3) from None
