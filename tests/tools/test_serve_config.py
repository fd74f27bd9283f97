"""``ketamine-cds serve`` checks the whole configuration before gunicorn starts: every problem
at once, one JSON log line each, exit 3, and nothing created on disk."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from service.config import Settings, problems
from tests.auth_helpers import ISSUER
from tests.conftest import free_port


def serve(tmp_path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``ketamine-cds serve`` in an empty directory with only ``env`` for KCDS_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KCDS_")}
    base["TMPDIR"] = str(tmp_path / "tmp")  # gunicorn's metrics folder would be made here
    (tmp_path / "tmp").mkdir()
    (tmp_path / "run").mkdir()
    return subprocess.run(
        [sys.executable, "-m", "service.tools.cli", "serve", "--port", "1"],
        cwd=tmp_path / "run",
        env={**base, "PYTHONPATH": os.getcwd(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_problem_at_once_one_line_each_exit_3_nothing_on_disk(tmp_path):
    env = {
        "KCDS_FHIR_TIMEOUT": "soon",
        "KCDS_CORS_ORIGINS": "sandbox.cds-hooks.org",
        "KCDS_POLICY_FILE": str(tmp_path / "no-such-policy.yaml"),
        "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/no-such-dir/registry.db",
    }  # and no KCDS_TRUSTED_ISSUERS, no KCDS_PSEUDONYM_KEY (KCDS_AUTH=jwt by default)
    result = serve(tmp_path, env)
    assert result.returncode == 3, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    reasons = [line["reason"] for line in lines]
    assert len(reasons) == 6, reasons
    for variable in (
        "KCDS_FHIR_TIMEOUT",
        "KCDS_CORS_ORIGINS",
        "KCDS_TRUSTED_ISSUERS",
        "KCDS_PSEUDONYM_KEY",
        "KCDS_POLICY_FILE",
        "KCDS_DATABASE_URL",
    ):
        assert sum(variable in reason for reason in reasons) == 1, (variable, reasons)
    assert all(line["level"] == "CRITICAL" for line in lines)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not any((tmp_path / "run").iterdir())  # no ketamine-cds.db, no journal
    assert not any((tmp_path / "tmp").iterdir())  # gunicorn never started


def test_problems_reads_every_variable_and_their_requirements(tmp_path):
    jwks = tmp_path / "broken.json"
    jwks.write_text("{}")
    env = {
        "KCDS_AUTH": "jwt",
        "KCDS_TRUSTED_ISSUERS": json.dumps({ISSUER: str(jwks)}),
        "KCDS_PSEUDONYM_KEY": "short",
        "KCDS_WORKERS": "0",
    }
    found = problems(env)
    assert sorted(p.split()[0].rstrip(":") for p in found) == [
        "KCDS_PSEUDONYM_KEY",
        "KCDS_TRUSTED_ISSUERS",
        "KCDS_WORKERS",
    ], found
    assert any("is not a JWK Set" in p for p in found)
    # a configuration that can work has none
    good = {"KCDS_AUTH": "off", "KCDS_REGISTRY": "off"}
    assert problems(good) == []
    assert Settings.from_env(good).auth == "off"


@pytest.mark.parametrize(
    "env, needed",
    [
        ({}, "KCDS_TRUSTED_ISSUERS"),
        ({"KCDS_AUTH": "jwt", "KCDS_TRUSTED_ISSUERS": "{}"}, "KCDS_TRUSTED_ISSUERS"),
        ({"KCDS_AUTH": "off", "KCDS_REGISTRY": "on"}, None),  # development run: a random key
    ],
)
def test_requirements_between_settings(env, needed):
    found = [p for p in problems(env) if "KCDS_PSEUDONYM_KEY" not in p]
    assert (needed in found[0]) if needed else found == [], found


@pytest.mark.e2e
def test_a_configuration_that_works_starts_gunicorn(tmp_path):
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("KCDS_")}
    env = {**base, "KCDS_AUTH": "off", "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.tools.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.getcwd(), "KCDS_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert process.poll() is None, "serve exited"
        assert requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5).ok
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
