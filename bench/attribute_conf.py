"""gunicorn settings for ``bench/attribute.py``: the production settings, plus the CPU
accounting of ``bench/cpu_account.py`` installed in each worker after it starts."""

import sys
from pathlib import Path

from service.web import gunicorn_conf as production
from service.web.gunicorn_conf import *  # noqa: F403 (the production settings, unchanged)

sys.path.insert(0, str(Path(__file__).resolve().parent))


def post_worker_init(worker):
    production.post_worker_init(worker)
    import cpu_account

    cpu_account.install(worker.wsgi)
