# ketamine-cds container image.
# BASE_IMAGE must provide python3 with venv (python:3.12-slim, or plain Debian with
# python3-venv, as the smoke test builds it).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/kcds
COPY pyproject.toml README.md ./
COPY cds_hooks ./cds_hooks
COPY service ./service
RUN /opt/kcds/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/kcds/bin/pip install --no-cache-dir . \
 && find /opt/kcds -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/kcds/bin/python -m compileall -q /opt/kcds/lib

FROM ${BASE_IMAGE}
ENV PATH=/opt/kcds/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KCDS_DATABASE_URL=sqlite:////var/lib/kcds/ketamine-cds.db \
    KCDS_FIXTURES_DIR=/opt/kcds/fixtures
COPY --from=build /opt/kcds /opt/kcds
COPY fixtures /opt/kcds/fixtures
RUN groupadd --system --gid 10001 kcds \
 && useradd --system --uid 10001 --gid kcds --home-dir /var/lib/kcds --shell /usr/sbin/nologin kcds \
 && mkdir -p /var/lib/kcds && chown kcds:kcds /var/lib/kcds
USER 10001:10001
WORKDIR /var/lib/kcds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["ketamine-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
