"""The shared JWT replay caches (Redis, PostgreSQL): a jti accepted by one instance is a
replay for every other, exactly one of many concurrent first uses wins, an expired entry is
free again, and an unreachable store refuses (503) rather than letting a token through."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import psycopg
import pytest
import requests
from sqlalchemy import create_engine, text

from cds_hooks.auth import JwtAuthenticator, TrustedIssuer
from cds_hooks.replay import (
    TABLE,
    PostgresReplayCache,
    RedisReplayCache,
    ReplayCacheUnavailable,
    SqlReplayCache,
    open_replay_cache,
)
from service.config import Settings
from service.web.app import create_app
from tests.auth_helpers import ISSUER, PUBLIC_URL, bearer, es384
from tests.conftest import free_port, start_gunicorn, stop


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def two_caches(request, tmp_path):
    """Two caches on one store, as two instances (or workers) of the service have, and
    their clock."""
    clock = Clock()
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"kcds:test:{uuid.uuid4().hex}:"
        caches = [RedisReplayCache(url, prefix=prefix, clock=clock) for _ in range(2)]
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        caches = [PostgresReplayCache(url, clock=clock) for _ in range(2)]
    else:
        url = f"sqlite:///{tmp_path}/replay.db"
        caches = [SqlReplayCache(url, clock=clock) for _ in range(2)]
    yield caches, clock
    for cache in caches:
        cache.close()


def test_a_jti_used_on_one_instance_is_a_replay_on_the_other(two_caches):
    (one, other), clock = two_caches
    jti = str(uuid.uuid4())
    expires = clock.now + 300
    assert one.first_use(ISSUER, jti, expires) is True
    assert other.first_use(ISSUER, jti, expires) is False
    assert one.first_use(ISSUER, jti, expires) is False
    # the same jti from another issuer is another token
    assert other.first_use("https://other.example.org", jti, expires) is True


def test_exactly_one_of_many_concurrent_first_uses_wins(two_caches):
    (one, other), clock = two_caches
    jti = str(uuid.uuid4())
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda n: (one, other)[n % 2].first_use(ISSUER, jti, clock.now + 60), range(32)
            )
        )
    assert results.count(True) == 1


def test_an_expired_entry_is_free_again(two_caches):
    (one, other), clock = two_caches
    jti = str(uuid.uuid4())
    assert one.first_use(ISSUER, jti, clock.now + 1) is True
    if isinstance(one, RedisReplayCache):  # Redis expires keys on its own clock
        time.sleep(2.1)
    clock.now += 5
    assert other.first_use(ISSUER, jti, clock.now + 60) is True
    assert one.first_use(ISSUER, jti, clock.now + 60) is False


def test_postgres_purges_expired_rows(postgres_url):
    clock = Clock()
    cache = PostgresReplayCache(postgres_url, clock=clock, purge_every=10)
    for n in range(5):
        cache.first_use(ISSUER, f"old-{n}", clock.now + 1)
    clock.now += 20  # past the purge interval and the entries' expiry
    cache.first_use(ISSUER, "new", clock.now + 60)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.scalar(text(f"SELECT count(*) FROM {TABLE}")) == 1
    engine.dispose()
    cache.close()


def test_an_unreachable_store_refuses_with_503_not_a_pass():
    cache = RedisReplayCache(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ReplayCacheUnavailable) as refused:
        cache.first_use(ISSUER, "jti", time.time() + 60)
    assert refused.value.status == 503


def test_open_replay_cache_by_url(redis_url, tmp_path):
    assert type(open_replay_cache("memory")).__name__ == "MemoryReplayCache"
    assert isinstance(open_replay_cache(redis_url), RedisReplayCache)
    assert isinstance(open_replay_cache(f"sqlite:///{tmp_path}/r.db"), SqlReplayCache)
    with pytest.raises(ValueError):
        open_replay_cache("memcached://127.0.0.1:11211")


@pytest.mark.postgres
def test_a_token_replayed_against_a_second_app_is_refused(postgres_url, tmp_path):
    """Two apps (two instances) configured with KCDS_REPLAY_CACHE on one PostgreSQL."""
    key = es384()
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [key.jwk()]}))
    env = {
        "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_file": str(jwks)}}).decode(),
        "KCDS_PUBLIC_URL": PUBLIC_URL,
        "KCDS_DATABASE_URL": postgres_url,
        "KCDS_JOURNAL": str(tmp_path / "journal.db"),
        "KCDS_PSEUDONYM_KEY": "replay-test-pseudonym-key-0123456789abcdef",
        "KCDS_REPLAY_CACHE": "registry",
    }
    first, second = (create_app(Settings.from_env(env)).test_client() for _ in range(2))
    token = key.token(PUBLIC_URL + "/cds-services")
    assert first.get("/cds-services", headers=bearer(token)).status_code == 200
    assert second.get("/cds-services", headers=bearer(token)).status_code == 401
    assert second.get("/health/ready").json["dependencies"]["replay_cache"] == "ok"
    with psycopg.connect(postgres_url) as conn:
        stored = conn.execute(f"SELECT key FROM {TABLE}").fetchall()
    assert len(stored) == 1 and token not in stored[0][0]  # a hash, not the token


def test_authenticator_uses_a_shared_cache(redis_url):
    key = es384()
    clock = Clock()
    cache = RedisReplayCache(redis_url, prefix=f"kcds:test:{uuid.uuid4().hex}:")
    issuers = [TrustedIssuer(ISSUER, jwks_file="unused")]
    auths = [
        JwtAuthenticator(issuers, replay=cache, clock=clock, loader=lambda _: {"keys": [key.jwk()]})
        for _ in range(2)
    ]
    token = key.token(PUBLIC_URL)
    clock.now = time.time()
    assert auths[0].verify(token, PUBLIC_URL).issuer == ISSUER
    with pytest.raises(Exception, match="authenticated"):
        auths[1].verify(token, PUBLIC_URL)


@pytest.mark.e2e
def test_workers_of_one_host_share_the_sqlite_registry_as_replay_cache(tmp_path):
    """KCDS_REPLAY_CACHE=registry with the default SQLite registry: a token accepted by one
    gunicorn worker is refused by every other (with ``memory`` half of these would pass)."""
    key = es384()
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [key.jwk()]}))
    server = start_gunicorn(
        tmp_path,
        env={
            "KCDS_AUTH": "jwt",
            "KCDS_TRUSTED_ISSUERS": orjson.dumps({ISSUER: {"jwks_file": str(jwks)}}).decode(),
            "KCDS_PUBLIC_URL": PUBLIC_URL,
            "KCDS_PSEUDONYM_KEY": "replay-test-pseudonym-key-0123456789abcdef",
            "KCDS_REPLAY_CACHE": "registry",
        },
        workers=3,
    )
    try:
        outcomes = []
        for _ in range(12):
            token = key.token(PUBLIC_URL + "/cds-services")
            codes = []
            for _ in range(3):  # a new connection each time: any worker may answer
                with requests.Session() as session:
                    r = session.get(server.url + "/cds-services", headers=bearer(token))
                    codes.append(r.status_code)
            outcomes.append(tuple(codes))
    finally:
        stop(server)
    assert set(outcomes) == {(200, 401, 401)}
