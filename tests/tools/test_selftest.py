"""``ketamine-cds selftest``: the shipped fixtures through the engine, and through a running
instance (real gunicorn, JWT on, a self-test issuer trusted); and, from /tmp, a plain
non-editable install into a throwaway virtualenv checks itself."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from service.tools.cli import main
from tests.auth_helpers import es384
from tests.conftest import ROOT, start_gunicorn, stop

ISSUER = "https://selftest.hospital.example"
KEY = es384(kid="selftest-1")
FEW = ("r09-*", "clean-*")  # a handful, so that the HTTP run stays short


def run(*args: str, **env: str):
    return CliRunner().invoke(main, list(args), env=env or None)


def test_selftest_runs_the_fixtures_through_the_engine():
    result = run("selftest", *FEW)
    assert result.exit_code == 0, result.output + result.stderr
    assert "engine:" in result.output and " 0 failed" in result.output


def test_selftest_needs_its_options_together():
    assert run("selftest", "--key", __file__).exit_code == 2  # --key without --issuer/--kid
    assert run("selftest", "--token", "x").exit_code == 2  # --token without --url


@pytest.mark.e2e
def test_selftest_through_a_running_instance_with_a_token_per_call(tmp_path):
    pem = tmp_path / "selftest.pem"
    pem.write_bytes(
        KEY.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    jwks = tmp_path / "selftest-jwks.json"
    jwks.write_text(json.dumps({"keys": [KEY.jwk()]}))
    server = start_gunicorn(
        tmp_path,
        env={
            "KCDS_AUTH": "jwt",
            "KCDS_TRUSTED_ISSUERS": json.dumps({ISSUER: str(jwks)}),
            "KCDS_PSEUDONYM_KEY": "selftest-pseudonym-key-0123456789abcdef",
        },
        workers=1,
    )
    try:
        args = ("--url", server.url, "--key", str(pem), "--issuer", ISSUER, "--kid", KEY.kid)
        result = run("selftest", *FEW, *args, KCDS_PUBLIC_URL=server.url)
        assert result.exit_code == 0, result.output + result.stderr
        assert f"{server.url}: " in result.output and " 0 failed" in result.output
        # without a token the instance refuses, and selftest says so with exit 1
        refused = run("selftest", "r09-*", "--url", server.url)
        assert refused.exit_code == 1
        assert "/cds-services failed" in refused.output and "401" in refused.stderr
    finally:
        stop(server)


#: the preview page of an installed copy offers a fixture, and serves it
PREVIEW_CHECK = """
from service.web.app import create_app
client = create_app().test_client()
page = client.get("/preview?fixture=r09-bp-185-fires")
print(page.status_code, client.get("/preview/fixtures/r09-bp-185-fires.json").status_code)
"""


@pytest.mark.e2e
def test_a_plain_install_checks_itself_from_any_directory(tmp_path):
    """`pip install <checkout>` (not editable) into a new virtualenv, as hospital IT would;
    from a directory without fixtures, `fixtures list|check` and `selftest` use the fixtures
    shipped in the package. Needs the package index pip is configured with (~30 s)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = tmp_path / "source"  # the checkout as it is, without its build leftovers
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    installed_ok = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    if installed_ok.returncode != 0 and "No matching distribution" in installed_ok.stderr:
        pytest.skip("the package index cannot provide the dependencies here")
    assert installed_ok.returncode == 0, installed_ok.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCDS_")}
    env.pop("PYTHONPATH", None)

    def installed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "ketamine-cds"), *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    listed = installed("fixtures", "list", "--names")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.split()) == len(list((ROOT / "fixtures").glob("*/request.json")))
    site = next(venv.glob("lib/python*/site-packages"))
    assert (site / "service" / "fixtures" / "r09-bp-185-fires" / "request.json").is_file()
    assert not (site / "service" / "fixtures" / "build.py").exists()  # data, not the builder
    preview = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PREVIEW_CHECK],
        cwd=elsewhere,
        env={**env, "KCDS_AUTH": "off", "KCDS_REGISTRY": "off"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert preview.stdout.split() == ["200", "200"], preview.stderr[-2000:]
    checked = installed("fixtures", "check")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    selftest = installed("selftest")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert " 0 failed" in selftest.stdout
    assert not any(elsewhere.iterdir())  # nothing written where it ran
