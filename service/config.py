"""Configuration from the environment (12-factor): every ``KCDS_*`` variable is read here.

Each setting is declared once, as a field of :class:`Settings`: its default (the field's),
its variable, what it accepts and what it means (the field's :class:`Var`). ``from_env``
reads them all; :func:`read` reads one (gunicorn's config and the fixture tools need only
theirs); :func:`markdown_table` is the README's configuration table, which a test keeps
equal to this module. To add a setting, add one field here (``_var(...)``), then run
``.venv/bin/python -m service.config README.md`` to rewrite the table.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_hooks.auth import TrustedIssuer, parse_trusted_issuers
from cds_hooks.fhir import AllowedServers

#: fhirServer prefixes allowed by default: any https server, and loopback http without auth
HTTPS_ANY = ("https://",)
LOOPBACK_HTTP = ("http://127.0.0.1", "http://localhost", "http://[::1]")

Env = Mapping[str, str]


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


# -- readers: what a variable accepts, and how its text becomes a value ----------------------


@dataclass(frozen=True)
class Reader:
    #: the values accepted, for the table ("seconds, 0–300")
    accepts: str
    #: (environment, variable name, the field's default) → the value; unset means the default
    parse: Callable[[Env, str, Any], Any]
    #: a default as the table spells it
    show: Callable[[Any], str] = lambda value: f"`{value}`"


def _raw(env: Env, name: str) -> str:
    return (env.get(name) or "").strip()


def _range(low: float, high: float | None, spell: str = "g") -> str:
    return f"{low:{spell}}–{high:{spell}}" if high is not None else f"≥ {low:{spell}}"


def number(low: float, high: float, unit: str = "seconds") -> Reader:
    def parse(env: Env, name: str, default: float) -> float:
        raw = _raw(env, name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {raw}")
        return value

    return Reader(f"{unit}, {_range(low, high)}", parse, lambda value: f"`{value:g}`")


def whole(low: int, high: int | None = None, unit: str = "") -> Reader:
    def parse(env: Env, name: str, default: int | None) -> int | None:
        raw = _raw(env, name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
        if value < low or (high is not None and value > high):
            raise ConfigError(f"{name} must be {_range(low, high, ',')}, not {value}")
        return value

    return Reader(f"{unit or 'whole number'}, {_range(low, high, ',')}", parse)


def choice(*allowed: str) -> Reader:
    def parse(env: Env, name: str, default: str) -> str:
        value = _raw(env, name) or default
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return Reader(" or ".join(f"`{a}`" for a in allowed), parse)


def switch(on: str, off: str) -> Reader:
    """A yes/no setting spelled ``on``/``off`` (or ``true``/``false``): a bool."""
    spelled = choice(on, off)

    def parse(env: Env, name: str, default: bool) -> bool:
        return spelled.parse(env, name, on if default else off) == on

    return Reader(spelled.accepts, parse, lambda value: f"`{on if value else off}`")


def text(accepts: str) -> Reader:
    return Reader(accepts, lambda env, name, default: _raw(env, name) or default)


def _secret(env: Env, name: str, default: None) -> str | None:
    """A key or token: at least 32 characters, so that it cannot be guessed."""
    value = _raw(env, name)
    if value and len(value) < 32:
        raise ConfigError(
            f"{name} must be at least 32 characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
    return value or default


SECRET = Reader("32+ characters", _secret)


def _list(env: Env, name: str) -> tuple[str, ...]:
    """A comma- or space-separated list."""
    return tuple(_raw(env, name).replace(",", " ").split())


def _issuers(env: Env, name: str, default: tuple[TrustedIssuer, ...]) -> tuple[TrustedIssuer, ...]:
    raw = _raw(env, name)
    try:
        return parse_trusted_issuers(raw) if raw else default
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def _origins(env: Env, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    origins = _list(env, name) or default
    if "*" in origins and len(origins) > 1:
        raise ConfigError(f"{name} is either * alone or a list of origins")
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https") or not parts.netloc or parts.path
        ):
            raise ConfigError(f"{name}: {origin!r} is not an origin (scheme://host)")
    return origins


def _fhir_allowed(env: Env, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    prefixes = _list(env, name) or default
    try:
        AllowedServers(prefixes)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return prefixes


def _replay_cache(env: Env, name: str, default: str) -> str:
    """memory, a redis://, postgresql:// or sqlite:/// URL, or registry (the registry's
    database, KCDS_DATABASE_URL: PostgreSQL, or SQLite for one host).

    Unset, it is ``registry`` while the registry is on: a per-process memory cache would let
    a token replayed against another gunicorn worker through, so shared is the safe default.
    """
    value = _raw(env, name) or ("registry" if read("registry", env) else default)
    if value == "registry":  # KCDS_DATABASE_URL is checked (and named) by the registry
        return read("database_url", env)
    scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
    known = ("redis", "rediss", "unix", "postgresql", "postgres", "sqlite")
    if value != "memory" and (scheme not in known or "://" not in value):
        raise ConfigError(
            f"{name} must be memory, registry, redis://host:6379/0, "
            f"postgresql://… or sqlite:///path.db, not {scheme!r}"
        )
    return _driver_installed(name, value)


#: URL scheme → (the module of its driver, the extra of this package that installs it)
DRIVERS = {
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "unix": ("redis", "redis"),
    "postgresql": ("psycopg", "postgres"),
    "postgres": ("psycopg", "postgres"),
}


def _driver_installed(name: str, url: str) -> str:
    """``url``, when the driver its scheme needs is installed; else a ConfigError naming the
    extra that installs it (the drivers are extras: a site installs the one it uses)."""
    scheme, _, driver = url.split(":", 1)[0].lower().partition("+")
    module, extra = DRIVERS.get(scheme, ("", ""))
    if module and driver in ("", module) and importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{name}: a {scheme}:// URL needs the {module} package, which is not installed "
            f"(pip install 'ketamine-cds[{extra}]')"
        )
    return url


def _database_url(env: Env, name: str, default: str) -> str:
    return _driver_installed(name, _raw(env, name) or default)


def _preview(env: Env, name: str, default: bool | None) -> bool | None:
    value = _raw(env, name).lower()
    if not value:
        return default
    if value not in ("on", "off"):
        raise ConfigError(f"{name} must be on or off, not {value!r}")
    return value == "on"


# -- the settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, how it is read, what it means."""

    name: str
    reader: Reader
    meaning: str
    #: the default as the table should say it, when the field's value alone would mislead
    shown: str | None = None

    def default_text(self, default: Any) -> str:
        if self.shown is not None:
            return self.shown
        return "none" if default in (None, ()) else self.reader.show(default)


def _var(
    name: str,
    default: Any,
    reader: Reader,
    meaning: str,
    *,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """A :class:`Settings` field read from the variable ``name``."""
    return field(
        default=default, repr=not secret, metadata={"var": Var(name, reader, meaning, shown)}
    )


SECONDS = "seconds"
BYTES = "bytes"


@dataclass(frozen=True)
class Settings:
    # -- callers
    auth: str = _var(
        "KCDS_AUTH",
        "jwt",
        choice("off", "jwt"),
        "caller authentication: `jwt` (a CDS Hooks JWT from a trusted issuer on every call; "
        "see [security](docs/security.md)) or `off` (development only; logged as a warning)",
    )
    trusted_issuers: tuple[TrustedIssuer, ...] = _var(
        "KCDS_TRUSTED_ISSUERS",
        (),
        Reader("JSON object", _issuers),
        'issuer → JWK Set URL or file, or `{"jwks_url", "jwks_file" or "jwks", "tenants": '
        '[...], "jku": [...]}` (see [security](docs/security.md#callers-are-authenticated)); '
        "required with `KCDS_AUTH=jwt`",
    )
    jwt_clock_skew: float = _var(
        "KCDS_JWT_CLOCK_SKEW",
        30.0,
        number(0, 300),
        "clock skew allowed on a JWT's `exp`, `iat`, `nbf`",
    )
    jwt_max_age: float = _var(
        "KCDS_JWT_MAX_AGE",
        3600.0,
        number(60, 86400),
        "a JWT issued longer ago (`iat`) is refused; also how long a `jti` is remembered",
    )
    jwks_cache_ttl: float = _var(
        "KCDS_JWKS_CACHE_TTL",
        600.0,
        number(0, 86400),
        "how long a fetched JWK Set is used before it is fetched again",
    )
    replay_cache: str = _var(
        "KCDS_REPLAY_CACHE",
        "memory",
        Reader("`memory`, `registry` or a URL", _replay_cache),
        "where accepted JWT `jti`s are remembered: `memory` (per process: a replay to another "
        "worker gets through), `registry` (the registry's database), `postgresql://…`, "
        "`sqlite:///path.db` or `redis://host:6379/0` (needs the `[redis]` extra); "
        "see [security](docs/security.md#replay-protection)",
        shown="`registry` (`memory` with `KCDS_REGISTRY=off`)",
        secret=True,  # a URL may hold a password
    )
    replay_outage: str = _var(
        "KCDS_REPLAY_OUTAGE",
        "memory",
        choice("memory", "refuse"),
        "when the shared replay cache does not answer: `memory` (calls go on, replays checked "
        "per process until it is back; logged and counted) or `refuse` (calls answered `503`)",
    )
    cors_origins: tuple[str, ...] = _var(
        "KCDS_CORS_ORIGINS",
        (),
        Reader("origins, comma-separated, or `*`", _origins),
        "browser origins allowed to call; `*` for testing only (never with credentials)",
    )
    public_url: str | None = _var(
        "KCDS_PUBLIC_URL",
        None,
        Reader("URL", lambda env, name, default: _raw(env, name).rstrip("/") or default),
        "externally visible base URL (behind proxies); the JWT `aud` is checked against it, "
        "and card links use it",
        shown="the request's host",
    )
    # -- FHIR fetches and input limits
    fhir_allowed: tuple[str, ...] = _var(
        "KCDS_FHIR_ALLOWED",
        (),  # empty: the default, see fhir_servers()
        Reader("URL prefixes, comma-separated", _fhir_allowed),
        "`fhirServer` URL prefixes allowed (scheme, host, port and path compared)",
        shown="`https://` (+ loopback `http` when auth is off)",
    )
    fhir_timeout: float = _var(
        "KCDS_FHIR_TIMEOUT",
        3.0,
        number(0.1, 60),
        "total time for all FHIR fetches of one request",
    )
    fhir_max_pages: int = _var(
        "KCDS_FHIR_MAX_PAGES", 20, whole(1, 1000), "pages followed per prefetch key (`next` links)"
    )
    fhir_max_bytes: int = _var(
        "KCDS_FHIR_MAX_BYTES",
        20 * 1024 * 1024,
        whole(1024, 1024**3, BYTES),
        "largest FHIR response read; a larger one makes its key unavailable",
    )
    fhir_max_request_bytes: int = _var(
        "KCDS_FHIR_MAX_REQUEST_BYTES",
        20 * 1024 * 1024,
        whole(1024, 1024**3, BYTES),
        "most bytes read from the FHIR server for one hook call, all keys and pages together",
    )
    fhir_server_concurrency: int = _var(
        "KCDS_FHIR_SERVER_CONCURRENCY",
        8,
        whole(1, 64),
        "fetches in flight to one `fhirServer` per worker process; the others wait (within "
        "`KCDS_FHIR_TIMEOUT`), so one slow server cannot take every fetch thread",
    )
    max_body_bytes: int = _var(
        "KCDS_MAX_BODY_BYTES",
        5 * 1024 * 1024,
        whole(1024, 512 * 1024**2, BYTES),
        "largest request body accepted (`413` above)",
    )
    max_prefetch_resources: int = _var(
        "KCDS_MAX_PREFETCH_RESOURCES",
        5000,
        whole(1, 1_000_000),
        "most resources per prefetch key (and draft orders); `400` above, fetches stop there",
    )
    # -- the registry
    registry: bool = _var(
        "KCDS_REGISTRY",
        True,
        switch("on", "off"),
        "record evaluations and feedback in the [registry](docs/registry.md); off, feedback "
        "is answered `200 {}` and not stored",
    )
    database_url: str = _var(
        "KCDS_DATABASE_URL",
        "sqlite:///./ketamine-cds.db",
        Reader("`sqlite:///path.db` or `postgresql://…`", _database_url),
        "the registry's database: SQLite (created on first start, WAL) or PostgreSQL "
        "(needs the `[postgres]` extra)",
    )
    pseudonym_key: str | None = _var(
        "KCDS_PSEUDONYM_KEY",
        None,
        SECRET,
        "secret key of the keyed hash that turns patient ids into registry keys; required "
        "while the registry is on, except in the development run (`KCDS_AUTH=off`)",
        secret=True,
    )
    store_comments: bool = _var(
        "KCDS_STORE_COMMENTS",
        False,
        switch("true", "false"),
        "`true` stores the clinician's free-text `overrideReason.userComment` with feedback",
    )
    retention_days: int | None = _var(
        "KCDS_RETENTION_DAYS",
        None,
        whole(1, 36500, "days"),
        "days the registry keeps; `ketamine-cds registry purge` deletes what is older "
        "(nothing is purged without it)",
    )
    admin_token: str | None = _var(
        "KCDS_ADMIN_TOKEN",
        None,
        SECRET,
        "bearer token for `GET /registry/summary`; without it that endpoint does not exist",
        secret=True,
    )
    journal: str | None = _var(
        "KCDS_JOURNAL",
        None,
        text("path"),
        "the local journal (SQLite): every evaluation and feedback item is written here before "
        "the answer, then shipped to the registry database; put it on the instance's "
        "persistent volume (see [durability](docs/durability.md))",
        shown="beside the SQLite registry; `./kcds-journal-<hash>.db` with PostgreSQL",
    )
    journal_sync: str = _var(
        "KCDS_JOURNAL_SYNC",
        "normal",
        choice("normal", "full"),
        "`normal`: a journaled record survives a crash of the process; `full`: a power loss "
        "too (an fsync per write)",
    )
    # -- operations
    metrics_token: str | None = _var(
        "KCDS_METRICS_TOKEN",
        None,
        SECRET,
        "bearer token that `GET /metrics` then requires; without it `/metrics` is open: keep "
        "it on the monitoring network (see [production](docs/production.md#metrics))",
        secret=True,
    )
    policy_file: str | None = _var(
        "KCDS_POLICY_FILE",
        None,
        text("path"),
        "site policy file (YAML/JSON), validated at start-up",
        shown="built-in",
    )
    log_level: str = _var(
        "KCDS_LOG_LEVEL",
        "INFO",
        choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "the service's own log level (libraries log at `WARNING` at most)",
    )
    preview: bool | None = _var(
        "KCDS_PREVIEW",
        None,
        Reader("`on` or `off`", _preview),
        "the card preview page at `/preview`; it evaluates without a caller JWT, so keep it "
        "off in production",
        shown="on when `KCDS_AUTH=off`, else off",
    )
    fixtures_dir: str | None = _var(
        "KCDS_FIXTURES_DIR",
        None,
        text("path"),
        "where the CLI and the preview page find fixtures",
        shown="the fixtures shipped in the package",
    )
    valuesets_dir: str | None = _var(
        "KCDS_VALUESETS_DIR",
        None,
        text("path"),
        "folder of site FHIR R4 ValueSet JSON files: a file with a shipped set's id replaces "
        "it, a new id adds a set; loaded at start-up",
        shown="shipped sets only",
    )
    # -- the SMART course view (docs/smart.md)
    smart_client_id: str | None = _var(
        "KCDS_SMART_CLIENT_ID",
        None,
        text("client id"),
        "the course view's SMART client id, as the EHR registered it; the course view and "
        "the cards' `smart` links exist only with it",
    )
    smart_issuers: tuple[str, ...] = _var(
        "KCDS_SMART_ISSUERS",
        (),
        Reader("FHIR base URLs, comma-separated", lambda env, name, default: _list(env, name)),
        "the FHIR servers (`iss`) allowed to launch the course view; required with "
        "`KCDS_SMART_CLIENT_ID`",
    )
    smart_scopes: str | None = _var(
        "KCDS_SMART_SCOPES",
        None,
        text("space-separated scopes"),
        "the scopes asked for",
        shown="`launch openid fhirUser patient/*.rs` (`patient/*.read` where the server lacks "
        "SMART v2)",
    )
    smart_client_secret: str | None = _var(
        "KCDS_SMART_CLIENT_SECRET",
        None,
        text("secret"),
        "makes the course view a confidential client (`client_secret_basic`); without it, a "
        "public client with PKCE",
        secret=True,
    )
    smart_private_key: str | None = _var(
        "KCDS_SMART_PRIVATE_KEY",
        None,
        text("path"),
        "a PEM private key (RSA, or EC P-384) that makes the course view a confidential client "
        "by `private_key_jwt` (RS384/ES384); its public key is served at `/smart/jwks.json`",
    )
    session_key: str | None = _var(
        "KCDS_SESSION_KEY",
        None,
        SECRET,
        "signs the course view's session cookie (which holds an opaque session id only); "
        "required with `KCDS_SMART_CLIENT_ID`",
        secret=True,
    )
    smart_session_ttl: float = _var(
        "KCDS_SMART_SESSION_TTL",
        3600.0,
        number(60, 86400),
        "a course view session ends after this long, or when its access token expires",
    )
    # -- gunicorn (service/web/gunicorn_conf.py)
    workers: int = _var(
        "KCDS_WORKERS",
        2,
        whole(1),
        "gunicorn worker processes: one per core (a hook answer is CPU work)",
    )
    threads: int = _var(
        "KCDS_THREADS",
        4,
        whole(1),
        "threads per worker (gthread; `1` gives the sync worker): a call waiting on the "
        "EHR's FHIR server does not hold up the others",
    )
    worker_timeout: int = _var(
        "KCDS_WORKER_TIMEOUT",
        30,
        whole(1, unit=SECONDS),
        "a worker silent this long is killed and replaced",
    )
    graceful_timeout: int = _var(
        "KCDS_GRACEFUL_TIMEOUT",
        20,
        whole(1, unit=SECONDS),
        "time in-flight requests get on SIGTERM (the registry queue is written within it); "
        "give the orchestrator more (`docker stop -t 30`)",
    )
    max_requests: int = _var(
        "KCDS_MAX_REQUESTS",
        0,
        whole(0),
        "each worker is recycled gracefully after about this many requests (`0`: never; no "
        "leak was found, and the journal keeps what a recycled worker answered)",
    )
    max_requests_jitter: int = _var(
        "KCDS_MAX_REQUESTS_JITTER",
        500,
        whole(0),
        "random spread added to `KCDS_MAX_REQUESTS`, so workers do not recycle together",
    )
    keepalive: int = _var(
        "KCDS_KEEPALIVE",
        5,
        whole(0, unit=SECONDS),
        "how long an idle keep-alive connection is held open",
    )

    def missing_issuers(self) -> str | None:
        """Why caller authentication cannot work: ``KCDS_AUTH=jwt`` without trusted issuers
        (None when it can). Checked by :func:`problems` and when the app starts."""
        if self.auth == "jwt" and not self.trusted_issuers:
            return (
                "KCDS_TRUSTED_ISSUERS is required with KCDS_AUTH=jwt (the default): the issuers "
                "the service trusts and their JWK Sets (KCDS_AUTH=off is for development only)"
            )
        return None

    def missing_pseudonym_key(self) -> str | None:
        """Why the registry cannot start: on without ``KCDS_PSEUDONYM_KEY`` outside the
        development run (``KCDS_AUTH=off``); None when it can. Checked by :func:`problems` and
        when the registry opens."""
        if self.registry and self.auth != "off" and not self.pseudonym_key:
            return (
                "KCDS_PSEUDONYM_KEY is required while the registry is on "
                "(set it, or set KCDS_REGISTRY=off)"
            )
        return None

    def fhir_servers(self) -> tuple[str, ...]:
        """KCDS_FHIR_ALLOWED, else any https server, plus loopback http when auth is off."""
        if self.fhir_allowed:
            return self.fhir_allowed
        return HTTPS_ANY + (LOOPBACK_HTTP if self.auth == "off" else ())

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(**{f.name: read(f.name, env) for f in fields(cls)})


def read(setting: str, env: Env | None = None) -> Any:
    """One setting (a :class:`Settings` field name) from the environment."""
    declared = next(f for f in fields(Settings) if f.name == setting)
    var: Var = declared.metadata["var"]
    return var.reader.parse(os.environ if env is None else env, var.name, declared.default)


# -- the README's table ------------------------------------------------------------------------

#: the lines between which the configuration table stands in the README
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def markdown_table() -> str:
    """Every setting, in declaration order: variable, default, values accepted, meaning."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        var: Var = f.metadata["var"]
        cells = (f"`{var.name}`", var.default_text(f.default), var.reader.accepts, var.meaning)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_table(path: Path) -> None:
    """Rewrite the table between the markers of ``path``."""
    marked = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.DOTALL)
    doc = path.read_text("utf-8")
    if len(marked.findall(doc)) != 1:
        raise SystemExit(f"{path} needs one {TABLE_BEGIN.strip()} … {TABLE_END} pair")
    path.write_text(marked.sub(lambda _: TABLE_BEGIN + markdown_table() + TABLE_END, doc))


# -- the whole configuration at once ---------------------------------------------------------


def read_all(env: Env | None = None) -> tuple[Settings, list[str]]:
    """The settings, each variable that cannot be read left at its default, and why each
    could not be read (one line each)."""
    env = os.environ if env is None else env
    values, found = {}, []
    for f in fields(Settings):
        try:
            values[f.name] = read(f.name, env)
        except ConfigError as exc:
            found.append(str(exc))
    return Settings(**values), found


def problems(env: Env | None = None) -> list[str]:
    """Every reason the configuration in ``env`` cannot work, one line each (none: it can
    start): each variable that cannot be read, what the settings require of each other, and
    the files and folders they name (read, never created). Writes nothing, connects to
    nothing; the engine's own files (policy, ValueSets) are checked by ``serve``."""
    settings, found = read_all(env)
    unread = {line.split()[0].rstrip(":") for line in found}
    for needs, why in (
        ({"KCDS_AUTH", "KCDS_TRUSTED_ISSUERS"}, settings.missing_issuers()),
        ({"KCDS_AUTH", "KCDS_REGISTRY", "KCDS_PSEUDONYM_KEY"}, settings.missing_pseudonym_key()),
    ):
        if why and not unread & needs:  # judged only on what could be read
            found.append(why)
    return found + _unusable_files(settings)


def _unusable_files(settings: Settings) -> list[str]:
    """The JWK Set files the issuers name, read as the service reads them, and the folder of
    a SQLite registry (it must exist and be writable: it is never created)."""
    from cds_hooks.auth import JwtAuthenticator

    found = []
    for issuer in settings.trusted_issuers:
        if issuer.jwks_file:
            try:
                JwtAuthenticator([issuer])
            except (OSError, ValueError) as exc:
                found.append(f"KCDS_TRUSTED_ISSUERS: {issuer.issuer!r} jwks_file unusable ({exc})")
    url = settings.database_url if settings.registry else ""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            found.append(
                f"KCDS_DATABASE_URL: {folder} is not a folder the SQLite registry can be written in"
            )
    return found


if __name__ == "__main__":  # python -m service.config README.md
    write_table(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
