"""``ketamine-cds selftest``: the check hospital IT runs after each deployment.

Every shipped fixture (or those matching NAME) goes through the installed engine and must
give the cards it expects; with ``--url``, the same fixtures go through a running instance
over HTTP, as an EHR calls it: ``/health/ready``, discovery, then each hook call, with a
caller token when one is given.

A CDS Hooks JWT is bound to one URL (``aud``) and used once (``jti``), so a running instance
with ``KCDS_AUTH=jwt`` needs a fresh token per call: ``--key`` signs one per call, as an
issuer the instance trusts (a dedicated self-test issuer in ``KCDS_TRUSTED_ISSUERS``).
``--token`` sends one fixed bearer token with every call instead (for a gateway in front of
the instance that checks its own tokens). Fixtures that send no prefetch need the EHR's FHIR
server and are checked offline only.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click

from .. import toolkit
from .common import EXIT_FAILED, InputError, catalog
from .fixtures import fixture_names

#: the algorithm a self-test token is signed with, by key type
ALGORITHM_OF_KEY = {"EC": "ES384", "RSA": "RS384"}


class Signer:
    """Signs one short-lived token per call with a private key (PEM or JWK file)."""

    def __init__(self, path: str, issuer: str, kid: str):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        raw = Path(path).read_bytes()
        try:
            if raw.lstrip().startswith(b"{"):
                self.key = jwt.PyJWK.from_json(raw.decode()).key
            else:
                self.key = load_pem_private_key(raw, password=None)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise InputError(
                f"--key {path}: not an unencrypted PEM or JWK private key ({exc})"
            ) from None
        kinds = {ec.EllipticCurvePrivateKey: "EC", rsa.RSAPrivateKey: "RSA"}
        kind = next((k for t, k in kinds.items() if isinstance(self.key, t)), None)
        if kind is None:
            raise InputError(f"--key {path}: an EC (P-384) or RSA private key is needed")
        self.alg, self.issuer, self.kid = ALGORITHM_OF_KEY[kind], issuer, kid

    def token(self, aud: str) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": self.issuer, "aud": aud, "iat": now, "exp": now + 300}
        claims["jti"] = str(uuid.uuid4())
        return jwt.encode(claims, self.key, algorithm=self.alg, headers={"kid": self.kid})


def _offline(names: list[str], now: datetime) -> dict[str, list[str]]:
    services = catalog(clock=lambda: now)
    return {name: toolkit.check_fixture(services, name, now) for name in names}


def _online(
    names: list[str], url: str, signer: Signer | None, token: str | None
) -> tuple[int, dict[str, list[str]]]:
    """(how many fixtures were sent, the problems by fixture or route)."""
    import requests

    from ..fixtures import compare, load

    session = requests.Session()

    def headers(target: str) -> dict[str, str]:
        bearer = signer.token(target) if signer else token
        return {"Authorization": f"Bearer {bearer}"} if bearer else {}

    def get(path: str) -> requests.Response:
        return session.get(url + path, headers=headers(url + path), timeout=10)

    try:
        ready = session.get(url + "/health/ready", timeout=10)
        found = get("/cds-services")
    except requests.RequestException as exc:
        raise InputError(f"{url} does not answer ({type(exc).__name__})") from None
    problems: dict[str, list[str]] = {}
    if ready.status_code != 200:
        problems["/health/ready"] = [f"answered {ready.status_code}: {ready.text[:200]}"]
    if found.status_code != 200:
        problems["/cds-services"] = [f"answered {found.status_code}: {found.text[:200]}"]
        return 0, problems
    offered = {s.get("id") for s in found.json().get("services", ())}
    sent = 0
    for name in names:
        body, expected = load(name)
        if "fhir_data_from" in expected:
            continue  # needs the EHR's FHIR server: checked offline only
        service = expected["service"]
        if service not in offered:
            problems[name] = [f"the instance offers no service {service!r}"]
            continue
        target = f"{url}/cds-services/{service}"
        sent += 1
        r = session.post(target, json=body, headers=headers(target), timeout=30)
        if r.status_code != 200:
            problems[name] = [f"answered {r.status_code}: {r.text[:200]}"]
        elif found_problems := compare(r.json(), expected):
            problems[name] = found_problems
    return sent, problems


def _report(where: str, checked: int, problems: dict[str, list[str]], seconds: float) -> bool:
    """Print each problem and a summary line; True when there was none."""
    failed = {name: found for name, found in problems.items() if found}
    for name, found in failed.items():
        click.echo(f"FAIL {where} {name}: {'; '.join(found)}", err=True)
    fixtures = sum(1 for name in failed if not name.startswith("/"))
    click.echo(
        f"{where}: {checked} fixtures, {checked - fixtures} passed, {fixtures} failed"
        + "".join(f"; {name} failed" for name in failed if name.startswith("/"))
        + f" ({seconds:.1f} s)"
    )
    return not failed


@click.command()
@click.argument("patterns", nargs=-1, metavar="[NAME]...")
@click.option(
    "--url",
    metavar="URL",
    help="Also through the instance running at URL (its public URL: the tokens' aud).",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Private key (PEM or JWK) of an issuer the instance trusts: a fresh token per call.",
)
@click.option("--issuer", help="With --key: the iss of the tokens.")
@click.option("--kid", help="With --key: the kid of the key in the issuer's JWK Set.")
@click.option("--token", help="A fixed bearer token sent with every call (instead of --key).")
def selftest(
    patterns: tuple[str, ...],
    url: str | None,
    key_file: str | None,
    issuer: str | None,
    kid: str | None,
    token: str | None,
) -> None:
    """Check this installation: every shipped fixture (or those matching NAME) through the
    installed engine and, with --url, through a running instance; exit 1 on any difference.

    \b
    Examples:
      ketamine-cds selftest
      ketamine-cds selftest --url https://cds.hospital.example \\
          --key selftest.pem --issuer https://selftest.hospital.example --kid selftest-1
    """
    if key_file and not (issuer and kid):
        raise click.UsageError("--key needs --issuer and --kid")
    if (key_file or token) and not url:
        raise click.UsageError("--key and --token go with --url")
    if key_file and token:
        raise click.UsageError("give --key or --token, not both")
    names = fixture_names(patterns)
    started = time.perf_counter()
    ok = _report("engine", len(names), _offline(names, datetime.now(UTC)), _since(started))
    if url:
        signer = Signer(key_file, issuer, kid) if key_file and issuer and kid else None
        started = time.perf_counter()
        sent, online = _online(names, url.rstrip("/"), signer, token)
        ok = _report(url, sent, online, _since(started)) and ok
    if not ok:
        sys.exit(EXIT_FAILED)


def _since(started: float) -> float:
    return time.perf_counter() - started
