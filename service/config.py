"""Configuration from the environment (12-factor); every variable is in the README's table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cds_hooks.auth import TrustedIssuer, parse_trusted_issuers
from cds_hooks.fhir import AllowedServers

#: fhirServer prefixes allowed by default: any https server, and loopback http without auth
HTTPS_ANY = ("https://",)
LOOPBACK_HTTP = ("http://127.0.0.1", "http://localhost", "http://[::1]")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


def _number(env: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {raw}")
    return value


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _list(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A comma- or space-separated list."""
    return tuple((env.get(name) or "").replace(",", " ").split())


def _issuers(env: dict[str, str]) -> tuple[TrustedIssuer, ...]:
    raw = env.get("KCDS_TRUSTED_ISSUERS") or ""
    try:
        return parse_trusted_issuers(raw) if raw.strip() else ()
    except ValueError as exc:
        raise ConfigError(f"KCDS_TRUSTED_ISSUERS {exc}") from None


def _origins(env: dict[str, str]) -> tuple[str, ...]:
    origins = _list(env, "KCDS_CORS_ORIGINS")
    if "*" in origins and len(origins) > 1:
        raise ConfigError("KCDS_CORS_ORIGINS is either * alone or a list of origins")
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https") or not parts.netloc or parts.path
        ):
            raise ConfigError(f"KCDS_CORS_ORIGINS: {origin!r} is not an origin (scheme://host)")
    return origins


def _secret(env: dict[str, str], name: str) -> str | None:
    """A key or token: at least 32 characters, so that it cannot be guessed."""
    value = (env.get(name) or "").strip()
    if value and len(value) < 32:
        raise ConfigError(
            f"{name} must be at least 32 characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
    return value or None


def _replay_cache(env: dict[str, str]) -> str:
    """KCDS_REPLAY_CACHE: memory, a redis://, postgresql:// or sqlite:/// URL, or registry
    (the registry's database, KCDS_DATABASE_URL: PostgreSQL, or SQLite for one host).

    Unset, it is ``registry`` while the registry is on: a per-process memory cache would let
    a token replayed against another gunicorn worker through, so shared is the safe default.
    """
    registry_on = (env.get("KCDS_REGISTRY") or "on") == "on"
    value = (env.get("KCDS_REPLAY_CACHE") or ("registry" if registry_on else "memory")).strip()
    if value == "registry":  # KCDS_DATABASE_URL is checked (and named) by the registry
        return env.get("KCDS_DATABASE_URL") or "sqlite:///./ketamine-cds.db"
    scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
    known = ("redis", "rediss", "unix", "postgresql", "postgres", "sqlite")
    if value != "memory" and (scheme not in known or "://" not in value):
        raise ConfigError(
            "KCDS_REPLAY_CACHE must be memory, registry, redis://host:6379/0, "
            f"postgresql://… or sqlite:///path.db, not {scheme!r}"
        )
    return value


def _fhir_allowed(env: dict[str, str]) -> tuple[str, ...]:
    prefixes = _list(env, "KCDS_FHIR_ALLOWED")
    try:
        AllowedServers(prefixes)
    except ValueError as exc:
        raise ConfigError(f"KCDS_FHIR_ALLOWED: {exc}") from None
    return prefixes


@dataclass(frozen=True)
class Settings:
    auth: str = "jwt"
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    jwt_clock_skew: float = 30.0
    jwt_max_age: float = 3600.0
    jwks_cache_ttl: float = 600.0
    cors_origins: tuple[str, ...] = ()
    fhir_allowed: tuple[str, ...] = ()  # empty: the default, see fhir_servers()
    fhir_max_bytes: int = 20 * 1024 * 1024
    max_prefetch_resources: int = 5000
    fhir_timeout: float = 3.0
    fhir_max_pages: int = 20
    max_body_bytes: int = 5 * 1024 * 1024
    database_url: str = "sqlite:///./ketamine-cds.db"
    public_url: str | None = None
    policy_file: str | None = None
    log_level: str = "INFO"
    registry: bool = True
    pseudonym_key: str | None = field(default=None, repr=False)
    store_comments: bool = False
    retention_days: int | None = None
    admin_token: str | None = field(default=None, repr=False)
    replay_cache: str = field(default="memory", repr=False)  # a URL may hold a password
    metrics_token: str | None = field(default=None, repr=False)

    def fhir_servers(self) -> tuple[str, ...]:
        """KCDS_FHIR_ALLOWED, else any https server, plus loopback http when auth is off."""
        if self.fhir_allowed:
            return self.fhir_allowed
        return HTTPS_ANY + (LOOPBACK_HTTP if self.auth == "off" else ())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            auth=_choice(env, "KCDS_AUTH", "jwt", ("off", "jwt")),
            trusted_issuers=_issuers(env),
            jwt_clock_skew=_number(env, "KCDS_JWT_CLOCK_SKEW", 30, 0, 300),
            jwt_max_age=_number(env, "KCDS_JWT_MAX_AGE", 3600, 60, 86400),
            jwks_cache_ttl=_number(env, "KCDS_JWKS_CACHE_TTL", 600, 0, 86400),
            cors_origins=_origins(env),
            fhir_allowed=_fhir_allowed(env),
            fhir_max_bytes=int(
                _number(env, "KCDS_FHIR_MAX_BYTES", 20 * 1024 * 1024, 1024, 1024 * 1024 * 1024)
            ),
            max_prefetch_resources=int(
                _number(env, "KCDS_MAX_PREFETCH_RESOURCES", 5000, 1, 1_000_000)
            ),
            fhir_timeout=_number(env, "KCDS_FHIR_TIMEOUT", 3.0, 0.1, 60),
            fhir_max_pages=int(_number(env, "KCDS_FHIR_MAX_PAGES", 20, 1, 1000)),
            max_body_bytes=int(
                _number(env, "KCDS_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024, 512 * 1024 * 1024)
            ),
            database_url=env.get("KCDS_DATABASE_URL") or "sqlite:///./ketamine-cds.db",
            public_url=(env.get("KCDS_PUBLIC_URL") or "").rstrip("/") or None,
            policy_file=env.get("KCDS_POLICY_FILE") or None,
            log_level=_choice(env, "KCDS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            registry=_choice(env, "KCDS_REGISTRY", "on", ("on", "off")) == "on",
            pseudonym_key=_secret(env, "KCDS_PSEUDONYM_KEY"),
            store_comments=_choice(env, "KCDS_STORE_COMMENTS", "false", ("true", "false"))
            == "true",
            retention_days=int(_number(env, "KCDS_RETENTION_DAYS", 0, 1, 36500)) or None,
            admin_token=_secret(env, "KCDS_ADMIN_TOKEN"),
            replay_cache=_replay_cache(env),
            metrics_token=_secret(env, "KCDS_METRICS_TOKEN"),
        )
