"""The container image, built and run for real: ../shared/tools/container-smoke.sh builds the
Dockerfile with podman on a Debian base and probes /health/ready; then the same image runs
locked down as Kubernetes runs it (read-only root filesystem, all capabilities dropped, no
privilege escalation) with authentication on, answers a signed call and /metrics, and stops
gracefully on SIGTERM.

Needs root (rootful podman). ~3 min the first time on a machine (debootstrap of the base,
cached in /tmp/container-smoke), ~30 s after. Select with ``-m container``; skipped, saying
why, without root, without the script, or when podman cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import requests

from tests.auth_helpers import ISSUER, PUBLIC_URL, bearer, es384
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.container

SMOKE = ROOT.parent / "shared" / "tools" / "container-smoke.sh"
SMOKE_HOME = Path(os.environ.get("SMOKE_HOME", "/tmp/container-smoke"))
IMAGE = "localhost/ketamine-cds-smoke:latest"
KEY = es384("container-key")
#: how the smoke run and the second run start the container: as Kubernetes runs it
LOCKED_DOWN = (
    "--read-only --tmpfs /var/lib/kcds:rw,U --cap-drop ALL --security-opt no-new-privileges"
)


def _have_podman() -> bool:
    return bool(shutil.which("podman") and shutil.which("debootstrap"))


def _install_podman() -> str | None:
    """None when podman and debootstrap are there (installing them if need be); otherwise
    why not."""
    if _have_podman():
        return None
    if not shutil.which("apt-get"):
        return "podman is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "podman", "runc", "debootstrap"]
    for attempt in ([], ["apt-get", "update", "-qq"]):
        try:
            if attempt:
                subprocess.run(attempt, env=env, capture_output=True, timeout=300, check=False)
            done = subprocess.run(install, env=env, capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            return "installing podman timed out"
        if done.returncode == 0 and _have_podman():
            return None
    return f"podman could not be installed: {done.stderr.decode(errors='replace')[-300:]}"


@pytest.fixture(scope="module")
def container_env(tmp_path_factory) -> dict[str, Path]:
    """The files a container run needs: a JWK Set, mounted read-only, and an env file."""
    if os.geteuid() != 0:
        pytest.skip("the container smoke test needs root (rootful podman)")
    if not SMOKE.is_file():
        pytest.skip(f"{SMOKE} is absent (CI lays shared/ beside the clone)")
    why = _install_podman()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("container")
    jwks = tmp / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [KEY.jwk()]}))
    jwks.chmod(0o644)
    env_file = tmp / "kcds.env"
    issuers = orjson.dumps({ISSUER: {"jwks_file": "/etc/kcds/jwks.json"}}).decode()
    env_file.write_text(
        f"KCDS_TRUSTED_ISSUERS={issuers}\n"
        "KCDS_PSEUDONYM_KEY=container-smoke-pseudonym-key-0123456789\n"
        f"KCDS_PUBLIC_URL={PUBLIC_URL}\n"
        "KCDS_REPLAY_CACHE=registry\n"  # the SQLite registry: one host's workers share it
    )
    return {"jwks": jwks, "env_file": env_file, "tmp": tmp}


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    w = SMOKE_HOME
    return subprocess.run(
        ["podman", "--root", str(w / "storage"), "--runroot", str(w / "run"), *args],
        env={**os.environ, "CONTAINERS_CONF": str(w / "containers.conf")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def smoke_args(files: dict[str, Path]) -> str:
    return (
        f"--env-file {files['env_file']} -v {files['jwks']}:/etc/kcds/jwks.json:ro " + LOCKED_DOWN
    )


def test_smoke_build_and_readiness_probe(container_env):
    """The shared smoke script: the image builds and answers 200 on /health/ready with
    authentication on (the default), a JWK Set file and a pseudonym key."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SMOKE), str(ROOT), "/health/ready"],
        env={**os.environ, "SMOKE_ENV": smoke_args(container_env)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    elapsed = time.monotonic() - started
    steps = "\n".join(line for line in done.stderr.splitlines() if line.startswith("[smoke]"))
    size = podman("images", "--format", "{{.Size}}", IMAGE).stdout.strip()
    (container_env["tmp"] / "smoke-summary.txt").write_text(
        f"{elapsed:.0f} s, image {size}\n{steps}\n{done.stdout}"
    )
    assert done.returncode == 0, (
        f"smoke failed after {elapsed:.0f} s:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    assert "user=10001:10001" in done.stdout


def test_image_runs_locked_down_answers_and_stops_gracefully(container_env):
    """The image the smoke run built: a signed call, the metrics, then SIGTERM."""
    if podman("image", "exists", IMAGE).returncode != 0:
        pytest.skip("the smoke build did not produce the image")
    port = free_port()
    name = f"kcds-test-{port}"
    run = podman(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:8080",
        *smoke_args(container_env).split(),
        IMAGE,
    )
    assert run.returncode == 0, run.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        ready = requests.get(url + "/health/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        # readiness is what decision support needs; the registry database and the shared
        # replay cache are degradations reported beside it (docs/durability.md)
        assert ready.json()["checks"] == {"policy": "ok", "journal": "ok"}
        assert set(ready.json()["dependencies"]) == {"registry", "replay_cache"}

        assert requests.get(url + "/cds-services", timeout=5).status_code == 401
        token = KEY.token(PUBLIC_URL + "/cds-services")
        discovery = requests.get(url + "/cds-services", headers=bearer(token), timeout=5)
        assert discovery.status_code == 200, discovery.text
        replayed = requests.get(url + "/cds-services", headers=bearer(token), timeout=5)
        assert replayed.status_code == 401

        metrics = requests.get(url + "/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'kcds_auth_failures_total{reason="no bearer token"} 1.0' in metrics.text
        assert 'kcds_auth_failures_total{reason="jti replayed"} 1.0' in metrics.text
        assert (
            'kcds_http_requests_total{route="/cds-services",service="",status="200"} 1.0'
            in metrics.text
        )

        started = time.monotonic()
        stopped = podman("stop", "-t", "30", name, timeout=60)
        took = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stderr
        state = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        logs = podman("logs", name).stderr + podman("logs", name).stdout
        assert state == "0", logs[-2000:]
        assert "Shutting down: Master" in logs
        assert took < 25, f"SIGTERM took {took:.1f} s: not a graceful stop"
    finally:
        podman("rm", "-f", name)
        podman("image", "prune", "-f")  # earlier builds' layers: the cache keeps growing else
