"""Configuration from the environment (12-factor); every variable is in the README's table."""

from __future__ import annotations

import os
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Settings:
    auth: str = "off"
    fhir_timeout: float = 3.0
    fhir_max_pages: int = 20
    max_body_bytes: int = 5 * 1024 * 1024
    database_url: str = "sqlite:///./ketamine-cds.db"
    public_url: str | None = None
    policy_file: str | None = None
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            auth=_choice(env, "KCDS_AUTH", "off", ("off", "jwt")),
            fhir_timeout=_number(env, "KCDS_FHIR_TIMEOUT", 3.0, 0.1, 60),
            fhir_max_pages=int(_number(env, "KCDS_FHIR_MAX_PAGES", 20, 1, 1000)),
            max_body_bytes=int(
                _number(env, "KCDS_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024, 512 * 1024 * 1024)
            ),
            database_url=env.get("KCDS_DATABASE_URL") or "sqlite:///./ketamine-cds.db",
            public_url=(env.get("KCDS_PUBLIC_URL") or "").rstrip("/") or None,
            policy_file=env.get("KCDS_POLICY_FILE") or None,
            log_level=_choice(env, "KCDS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )
