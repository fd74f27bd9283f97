# ketamine-cds container image.
#
#   docker build -t ketamine-cds .            (podman: add --format docker to keep HEALTHCHECK)
#   docker run -p 8080:8080 --env-file kcds.env ketamine-cds
#
# BASE_IMAGE must provide python3 with venv (python:3.12-slim, or plain Debian with
# python3-venv, as ../shared/tools/container-smoke.sh builds it). Two stages: the build stage
# installs the service into a virtualenv; the final stage copies only that virtualenv (no
# pip, no build tools, no caches; the fixtures are in it as package data), and runs as an
# unprivileged user.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/kcds
COPY pyproject.toml README.md ./
COPY cds_hooks ./cds_hooks
COPY service ./service
# service/fixtures links to fixtures/: the fixtures are package data, as in any install
COPY fixtures ./fixtures
# the database drivers are extras: the image has both, so any KCDS_DATABASE_URL or
# KCDS_REPLAY_CACHE of the configuration table works in it
RUN /opt/kcds/bin/pip install --no-cache-dir --disable-pip-version-check '.[postgres,redis]' \
 && /opt/kcds/bin/pip uninstall --yes --quiet pip \
 && find /opt/kcds -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/kcds/bin/python -m compileall -q /opt/kcds/lib

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ketamine-cds" \
      org.opencontainers.image.description="CDS Hooks 2.0 decision support for ketamine and esketamine orders (FHIR R4)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Every KCDS_* variable of the README's table can be set at run time; their defaults (in
# service/config.py) suit a 2-core container. Only what differs in the image is set here.
# KCDS_AUTH=jwt is the default: the container needs KCDS_TRUSTED_ISSUERS and, with the
# registry on, KCDS_PSEUDONYM_KEY (see docs/production.md).
ENV PATH=/opt/kcds/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KCDS_DATABASE_URL=sqlite:////var/lib/kcds/ketamine-cds.db
COPY --from=build /opt/kcds /opt/kcds
RUN groupadd --gid 10001 kcds \
 && useradd --uid 10001 --gid kcds --no-create-home --home-dir /var/lib/kcds \
      --shell /usr/sbin/nologin kcds \
 && mkdir -p /var/lib/kcds && chown kcds:kcds /var/lib/kcds
USER 10001:10001
WORKDIR /var/lib/kcds
EXPOSE 8080
# Liveness only (the process answers): a database outage must not get the container
# restarted. Readiness is /health/ready, for the load balancer or Kubernetes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status == 200 else 1)"]
# gunicorn is PID 1 (ketamine-cds serve execs it): SIGTERM is its graceful stop, in-flight
# requests finish and the registry queue is written within KCDS_GRACEFUL_TIMEOUT (20 s);
# give it longer than that (docker stop -t 30).
STOPSIGNAL SIGTERM
CMD ["ketamine-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
