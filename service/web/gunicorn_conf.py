"""gunicorn settings from the environment, with defaults for a 2-core container.

Each setting's default is declared once, in ``service.config`` (the README's table lists
them); why they suit a 2-core container:

- ``KCDS_WORKERS``: one process per core. A hook answer is ~2 ms of CPU in Python, so more
  processes than cores only add memory (85-125 MB each) and contention.
- ``KCDS_THREADS`` (gthread workers): a request that fetches from the EHR's FHIR server
  waits up to ``KCDS_FHIR_TIMEOUT`` on the network; with threads the worker answers other
  calls meanwhile. ``KCDS_THREADS=1`` gives the sync worker. The gthread worker is
  ``service.web.worker.ThreadWorker``, which takes a new connection only while it has a free
  thread, so that connections opened together are spread over the workers.
- ``KCDS_WORKER_TIMEOUT``: a worker silent that long is killed and replaced.
- ``KCDS_GRACEFUL_TIMEOUT``: on SIGTERM (a rolling update, ``docker stop``, a scale-down)
  the workers stop accepting, finish their in-flight requests, ship what the journal
  holds while the registry database takes it (at most 2 s; the rest stays journaled, see
  ``service.registry``) and exit; whatever still runs after this long is killed. Keep the
  orchestrator's grace period above it (Kubernetes: ``terminationGracePeriodSeconds`` 30;
  ``docker stop -t 30``).
- ``KCDS_MAX_REQUESTS`` (``0``, off): no leak was found under load (issue 14), so workers
  are not recycled by request count; when a site turns it on, ``KCDS_MAX_REQUESTS_JITTER``
  spreads the workers' recycling so they do not restart together.
- After a SIGKILL of the master, its workers notice their parent is gone and exit once their
  in-flight requests are answered (about a second); a restart binds the port after that
  (an orchestrator's restart back-off waits long enough).
- ``KCDS_KEEPALIVE``: seconds an idle keep-alive connection is held (gthread); keep it
  above the idle timeout of the proxy in front when it reuses connections.

Metrics: prometheus-client's multiprocess mode needs a directory shared by the workers,
``PROMETHEUS_MULTIPROC_DIR``. It is created here under the temporary directory when unset
(and removed at exit); when set (a Kubernetes ``emptyDir``) it is emptied at start, as the
library requires. A worker's files are marked dead when it exits.
"""

import os
import shutil
import tempfile

from service.config import ConfigError, read
from service.web import gc_settings


def _setting(name: str) -> int:
    try:
        return read(name)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


workers = _setting("workers")
threads = _setting("threads")
# gthread that takes a new connection only while it has a free thread (service.web.worker)
worker_class = "service.web.worker.ThreadWorker" if threads > 1 else "sync"
timeout = _setting("worker_timeout")
graceful_timeout = _setting("graceful_timeout")
keepalive = _setting("keepalive")
max_requests = _setting("max_requests")
max_requests_jitter = _setting("max_requests_jitter")
preload_app = True  # load policy and value sets once, before forking
accesslog = None  # the app writes its own JSON access log without patient data
errorlog = "-"
# gunicorn's own lines (start, workers, signals; its access log if switched on) as JSON too
logger_class = "service.web.logs.GunicornLogger"
# the workers' heartbeat files: in memory where there is /dev/shm, so a read-only root
# filesystem (or a slow disk) does not matter
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
# gunicorn >= 25 opens a control socket under $HOME by default: one path for every instance
# on a host, and a write to a read-only root filesystem; nothing here uses it
control_socket_disable = True

_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kcds-metrics-")
else:  # values left by an earlier run would be added to this one's
    _dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(_dir, exist_ok=True)
    for _name in os.listdir(_dir):
        if _name.endswith(".db"):
            os.remove(os.path.join(_dir, _name))


def when_ready(server):
    """In the master, the app loaded (``preload_app``), before the first fork: collect what
    start-up left and raise the young GC threshold (``service.web.gc_settings``)."""
    gc_settings.settle()


def pre_fork(server, worker):
    """In the master, before each fork: the preloaded objects move to the permanent GC
    generation, which the workers' collections never traverse (``service.web.gc_settings``)."""
    gc_settings.freeze()


def child_exit(server, worker):
    """In the master, when a worker has exited: its live gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _registry(worker):
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("ketamine-cds.registry")


def post_worker_init(worker):
    """In a new worker: start its journal shipper now, so what a crashed worker (or instance)
    left in the journal is shipped before any request comes."""
    registry = _registry(worker)
    if registry is not None:
        registry.start()


def worker_exit(server, worker):
    """In the worker, as it exits (SIGTERM, recycling): stop the journal shipper (it ships
    what waits for at most 2 s, and only while the database takes it; the rest stays in the
    journal for a sibling or the next start). Never waits on a database that is down."""
    registry = _registry(worker)
    if registry is not None:
        registry.close()


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
