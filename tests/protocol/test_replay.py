"""The ReplayCache seam: every cache open_replay_cache gives holds to the protocol (first use,
ping, close, shared), and the app asks readiness of a shared cache only. Sharing between
instances and outages are tested in tests/ops/test_ops_replay.py."""

from __future__ import annotations

import inspect
import uuid

import orjson
import pytest

from cds_hooks.auth import JwtAuthenticator, TrustedIssuer
from cds_hooks.replay import MemoryReplayCache, ReplayCache, open_replay_cache
from service.config import Settings
from service.web.app import create_app
from tests.auth_helpers import ISSUER, es384


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "redis",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def cache(request, tmp_path):
    """A cache of each kind, as ``KCDS_REPLAY_CACHE`` names it."""
    url = {
        "memory": lambda: "memory",
        "sqlite": lambda: f"sqlite:///{tmp_path}/replay.db",
        "redis": lambda: request.getfixturevalue("redis_url"),
        "postgresql": lambda: request.getfixturevalue("postgres_url"),
    }[request.param]()
    opened = open_replay_cache(url)
    yield opened
    opened.close()


def test_every_cache_implements_the_protocol(cache):
    assert isinstance(cache, ReplayCache)
    for name in ("first_use", "ping", "close"):
        expected = inspect.signature(getattr(ReplayCache, name))
        actual = inspect.signature(getattr(type(cache), name))
        assert list(actual.parameters) == list(expected.parameters), name
    assert cache.shared is not isinstance(cache, MemoryReplayCache)


def test_every_cache_answers_ping_and_refuses_a_second_use(cache):
    cache.ping()
    jti = str(uuid.uuid4())
    expires = 4102444800.0  # 2100-01-01: far enough for every store's own clock
    assert cache.first_use(ISSUER, jti, expires) is True
    assert cache.first_use(ISSUER, jti, expires) is False


def test_the_authenticator_defaults_to_the_in_process_cache():
    auth = JwtAuthenticator([TrustedIssuer(ISSUER, jwks={"keys": [es384().jwk()]})])
    assert isinstance(auth.replay, MemoryReplayCache)


@pytest.mark.parametrize("replay", ["memory", "registry"])
def test_readiness_checks_the_replay_cache_only_when_it_is_shared(tmp_path, replay):
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [es384().jwk()]}))
    settings = Settings.from_env(
        {
            "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_file": str(jwks)}}).decode(),
            "KCDS_REGISTRY": "off",
            "KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/kcds.db",
            "KCDS_REPLAY_CACHE": replay,
        }
    )
    ready = create_app(settings).test_client().get("/health/ready")
    assert ready.status_code == 200
    # a shared cache is reported: a degradation by default (KCDS_REPLAY_OUTAGE=memory)
    reported = {**ready.json["checks"], **ready.json.get("dependencies", {})}
    assert ("replay_cache" in reported) is (replay == "registry")
