"""gunicorn settings from the environment, with defaults for a 2-core container."""

import os

workers = int(os.environ.get("KCDS_WORKERS", "2"))
threads = int(os.environ.get("KCDS_THREADS", "1"))
timeout = int(os.environ.get("KCDS_WORKER_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("KCDS_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
max_requests = int(os.environ.get("KCDS_MAX_REQUESTS", "5000"))
max_requests_jitter = int(os.environ.get("KCDS_MAX_REQUESTS_JITTER", "500"))
preload_app = True  # load policy and value sets once, before forking
accesslog = None  # the app writes its own JSON access log without patient data
errorlog = "-"
