"""Caller authentication: the JWT a CDS client sends with every call (CDS Hooks 2.0 §9).

A call carries ``Authorization: Bearer <JWT>``, signed with the client's private key. The
token is accepted only when every check passes, in this order:

1. it is a well-formed JWS of bounded size whose ``alg`` is asymmetric (ES, RS or PS with
   SHA-256/384/512; ``none`` and HS* are refused before any key is looked at), with a ``kid``;
2. its ``iss`` is a trusted issuer, and the ``kid`` names a key on record: first the
   issuer's own JWK Set (pinned as a file or inline, or fetched from its configured URL);
   only for a ``kid`` that set lacks is the token's ``jku`` header fetched, and only when
   it is on that issuer's allow-list. A ``jku`` is thus never needed for a known ``kid``
   (an EHR can be trusted offline), and a ``jku`` off the allow-list never brings a key in;
3. the key (JWK Sets are cached with a TTL, refetched once on an unknown ``kid``) fits the
   algorithm; the signature verifies;
4. ``aud`` (a string or a list) contains the URL being invoked; ``exp``, ``iat`` and ``jti``
   are present; ``exp`` has not passed and ``iat`` is neither in the future nor older than
   the age bound (each with a small clock skew); ``tenant`` is allowed where the issuer
   lists tenants;
5. the ``jti`` has not been seen from that issuer while the token could still be valid
   (a :class:`~cds_hooks.replay.ReplayCache`: in-process, or a shared store when several
   workers or instances run).

A refusal is a 401 whose body never says which check failed; the log line says which, and
never contains the token.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from flask import Request

from .errors import CDSHooksError
from .replay import MemoryReplayCache, ReplayCache

log = logging.getLogger("cds_hooks.auth")

#: the only algorithms accepted (the spec recommends ES384 and RS384)
ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA"}  # algorithm family → JWK kty
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
MAX_TOKEN_CHARS = 16 * 1024
MAX_JWKS_BYTES = 512 * 1024
MAX_JTI_CHARS = 256
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: location (URL or file path) → the parsed JWK Set document
JwksLoader = Callable[[str], Any]
Clock = Callable[[], float]


#: every refusal reason without a value in it: what metrics may count refusals by
FAILURE_REASONS = frozenset(
    {
        "no bearer token",
        "token too large",
        "malformed token",
        "algorithm refused",
        "typ is not JWT",
        "no kid",
        "untrusted issuer",
        "jku not on the issuer's allow-list",
        "no jku and no JWK Set configured for the issuer",
        "kid not in the issuer's JWK Set",
        "key does not fit the token's algorithm",
        "unusable key in the JWK Set",
        "signature does not verify",
        "aud is not the invoked URL",
        "key too weak",
        "algorithm does not match the key",
        "invalid token",
        *(f"{claim} missing" for claim in ("iss", "aud", "exp", "iat", "jti")),
        *(f"{claim} is not a number" for claim in ("exp", "iat", "nbf")),
        "expired",
        "iat in the future",
        "iat older than the age bound",
        "not valid yet (nbf)",
        "tenant not allowed for the issuer",
        "jti is not a short string",
        "jti replayed",
    }
)


class AuthenticationError(CDSHooksError):
    """A refused caller: a 401 whose body never says why; ``reason`` is for the log only,
    ``code`` is the reason without the caller's values in it (one of
    :data:`FAILURE_REASONS`, or ``other``)."""

    def __init__(self, reason: str, code: str | None = None):
        super().__init__(401, "unauthorized", "the caller could not be authenticated")
        self.reason = reason
        code = code or reason
        self.code = code if code in FAILURE_REASONS else "other"
        self.issuer: str | None = None  # set once the token's issuer is known to be trusted


@dataclass(frozen=True)
class Caller:
    """Who made an authenticated call (loggable: no token, no patient data)."""

    issuer: str
    tenant: str | None
    jti: str


@dataclass(frozen=True)
class TrustedIssuer:
    """One client the service trusts, and where its public keys are."""

    issuer: str
    jwks_url: str | None = None  # JWK Set by URL (https, or http on loopback)
    jwks_file: str | None = None  # JWK Set from a local file
    tenants: frozenset[str] | None = None  # None: any tenant, or none
    jku: frozenset[str] = frozenset()  # jku header values honoured for this issuer
    jwks: Mapping[str, Any] | None = field(default=None, hash=False)  # an inline JWK Set

    @property
    def keys_on_record(self) -> str | None:
        """Where the issuer's own JWK Set is: its URL, its file, or a label for the inline
        set. Consulted first for every token, whatever its ``jku``."""
        inline = f"inline JWK Set of {self.issuer}" if self.jwks is not None else None
        return self.jwks_url or self.jwks_file or inline


def _check_url(url: Any, what: str) -> str:
    if not isinstance(url, str):
        raise ValueError(f"{what} must be a URL string")
    parts = urlsplit(url)
    loopback_http = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not (parts.scheme == "https" or loopback_http) or not parts.hostname:
        raise ValueError(f"{what} must be an https URL (http only on loopback), not {url!r}")
    return url


def _plain(iss: str, location: Any) -> dict[str, Any]:
    """The plain form ``issuer: "JWK Set URL or file path"`` as its object form."""
    if not isinstance(location, str) or not location.strip():
        raise ValueError(f"{iss!r} must be a JWK Set URL or file path, or an object")
    return {"jwks_url" if "://" in location else "jwks_file": location}


def parse_trusted_issuers(text: str) -> tuple[TrustedIssuer, ...]:
    """Parse the JSON object mapping each issuer either to where its JWK Set is (the plain
    form: an https URL or a file path) or to ``{"jwks_url" | "jwks_file" | "jwks",
    "tenants", "jku"}`` (``jwks``: the JWK Set itself, inline); raises ValueError naming
    what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object mapping each issuer to its settings")
    known = {"jwks_url", "jwks_file", "jwks", "tenants", "jku"}
    issuers = []
    for iss, spec in raw.items():
        spec = spec if isinstance(spec, dict) else _plain(iss, spec)
        if set(spec) - known:
            raise ValueError(f"{iss!r} must be an object with only {', '.join(sorted(known))}")
        sources = [name for name in ("jwks_url", "jwks_file", "jwks") if name in spec]
        if len(sources) > 1 or not (sources or spec.get("jku")):
            raise ValueError(f"{iss!r} needs one of jwks_url, jwks_file or jwks, or a jku list")
        tenants = spec.get("tenants")
        jku = spec.get("jku") or []
        for name, value in (("tenants", tenants), ("jku", jku)):
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"{iss!r}: {name} must be a list of strings")
        jwks_file = spec.get("jwks_file")
        if jwks_file is not None and not isinstance(jwks_file, str):
            raise ValueError(f"{iss!r}: jwks_file must be a path")
        inline = spec.get("jwks")
        if inline is not None and not _signing_keys(inline, f"{iss!r}: jwks"):
            raise ValueError(f"{iss!r}: jwks has no EC or RSA signing key with a kid")
        issuers.append(
            TrustedIssuer(
                issuer=iss,
                jwks_url=_check_url(spec["jwks_url"], f"{iss!r} jwks_url")
                if "jwks_url" in spec
                else None,
                jwks_file=jwks_file,
                tenants=frozenset(tenants) if tenants is not None else None,
                jku=frozenset(_check_url(u, f"{iss!r} jku") for u in jku),
                jwks=inline,
            )
        )
    return tuple(issuers)


def load_jwks(location: str, timeout: float = 3.0) -> Any:
    """Read a JWK Set from an http(s) URL (no redirects, size-capped) or a local file."""
    if not location.startswith(("https://", "http://")):
        return json.loads(Path(location).read_text("utf-8"))
    with requests.get(location, timeout=timeout, allow_redirects=False, stream=True) as resp:
        if resp.status_code != 200:
            raise ValueError(f"JWKS answered HTTP {resp.status_code}")
        body = resp.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than the limit")
    return json.loads(body)


def _signing_keys(document: Any, what: str = "the document") -> dict[str, dict[str, Any]]:
    """kid → JWK for the asymmetric signing keys of a JWK Set."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f'{what} is not a JWK Set ({{"keys": [...]}})')
    return {
        k["kid"]: k
        for k in document["keys"]
        if isinstance(k, dict)
        and isinstance(k.get("kid"), str)
        and k.get("kty") in ("EC", "RSA")
        and k.get("use", "sig") == "sig"
    }


class KeySet:
    """One JWK Set, cached for ``ttl`` seconds; an unknown ``kid`` triggers one refetch.
    Fetches are at least ``cooldown`` seconds apart, so made-up kids or an unreachable
    issuer cannot turn every call into a fetch. When a refetch fails the keys already held
    stay in use."""

    def __init__(
        self, location: str, loader: JwksLoader, ttl: float, cooldown: float, clock: Clock
    ):
        self.location = location
        self._loader = loader
        self._ttl = ttl
        self._cooldown = cooldown
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}
        self._loaded_at = -math.inf  # last successful load
        self._tried_at = -math.inf  # last attempt
        self._lock = threading.Lock()

    def _refresh(self, unknown_kid: bool) -> None:
        with self._lock:
            now = self._clock()
            due = unknown_kid or now - self._loaded_at >= self._ttl
            if not due or now - self._tried_at < self._cooldown:
                return
            self._tried_at = now
            try:
                keys = _signing_keys(self._loader(self.location))
            except (OSError, ValueError, requests.RequestException) as exc:
                log.warning(
                    "JWKS fetch failed",
                    extra={"reason": type(exc).__name__, "fields": {"jwks": self.location}},
                )
                return
            self._keys, self._parsed, self._loaded_at = keys, {}, now

    def has(self, kid: str) -> bool:
        """Whether the set holds ``kid``, refreshing it when stale or when ``kid`` is unknown."""
        if self._clock() - self._loaded_at >= self._ttl:
            self._refresh(unknown_kid=False)
        if kid not in self._keys:
            self._refresh(unknown_kid=True)
        return kid in self._keys

    def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The verification key for ``kid`` and ``alg``; AuthenticationError otherwise."""
        jwk = self._keys.get(kid) if self.has(kid) else None
        if jwk is None:
            raise AuthenticationError("kid not in the issuer's JWK Set")
        parsed = self._parsed.get((kid, alg))
        if parsed is None:
            if jwk.get("alg", alg) != alg or jwk["kty"] != KEY_TYPE[alg[:2]]:
                raise AuthenticationError("key does not fit the token's algorithm")
            try:
                parsed = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                raise AuthenticationError("unusable key in the JWK Set") from None
            self._parsed[(kid, alg)] = parsed
        return parsed


@dataclass(frozen=True)
class JwtPolicy:
    """The tunable bounds of the JWT checks."""

    clock_skew: float = 30.0  # seconds allowed on exp, iat and nbf
    max_age: float = 3600.0  # a token issued longer ago is refused (bounds the jti store)
    jwks_ttl: float = 600.0  # seconds a fetched JWK Set is trusted before refetching
    jwks_cooldown: float = 10.0  # least seconds between refetches on an unknown kid
    fetch_timeout: float = 3.0  # seconds for one JWK Set fetch


#: claim check failures of PyJWT → log reasons
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "signature does not verify"),
    (jwt.InvalidAudienceError, "aud is not the invoked URL"),
    (jwt.InvalidKeyError, "key too weak"),
    (jwt.InvalidAlgorithmError, "algorithm does not match the key"),
)


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"{name} is not a number")
    return float(value)


def _short(value: Any) -> str:
    return repr(value)[:80]


class JwtAuthenticator:
    """Verifies caller JWTs; an :data:`cds_hooks.http.Authenticator`. ``replay`` defaults to
    the in-process cache; ``clock`` (epoch seconds) and ``loader`` (how a JWK Set location is
    read) can be replaced, as the tests do."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        policy: JwtPolicy | None = None,
        replay: ReplayCache | None = None,
        clock: Clock = time.time,
        loader: JwksLoader | None = None,
    ):
        self.policy = policy or JwtPolicy()
        self.issuers = {i.issuer: i for i in issuers}
        if not self.issuers:
            raise ValueError("no trusted issuer: JWT authentication would refuse every caller")
        self.replay = replay if replay is not None else MemoryReplayCache(clock)
        self.clock = clock
        loader = loader or (lambda location: load_jwks(location, self.policy.fetch_timeout))
        inline = {i.keys_on_record: i.jwks for i in self.issuers.values() if i.jwks is not None}

        def load(location: str) -> Any:
            return inline[location] if location in inline else loader(location)

        p = self.policy
        locations = {
            loc for i in self.issuers.values() for loc in (i.keys_on_record, *i.jku) if loc
        }
        self.key_sets = {
            loc: KeySet(loc, load, p.jwks_ttl, p.jwks_cooldown, clock) for loc in locations
        }
        for issuer in self.issuers.values():
            if issuer.jwks_file:  # a missing or broken local file is a start-up error
                _signing_keys(loader(issuer.jwks_file), issuer.jwks_file)

    def __call__(self, request: Request, audience: str) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("no bearer token")
            return self.verify(token.strip(), audience)
        except AuthenticationError as exc:
            fields = {"iss": exc.issuer} if exc.issuer else {}
            log.warning("authentication failed", extra={"reason": exc.reason, "fields": fields})
            raise

    def verify(self, token: str, audience: str) -> Caller:
        """The caller of a valid token for ``audience``; AuthenticationError otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("token too large")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed token") from None
        header, claims = unverified["header"], unverified["payload"]
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError(f"algorithm {_short(alg)} refused", "algorithm refused")
        if str(header.get("typ", "JWT")).upper() != "JWT":
            raise AuthenticationError("typ is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("no kid")
        iss = claims.get("iss") if isinstance(claims, dict) else None
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthenticationError(f"untrusted issuer {_short(iss)}", "untrusted issuer")
        try:
            return self._verify_signed(token, header, issuer, audience)
        except AuthenticationError as exc:
            exc.issuer = issuer.issuer
            raise

    def _verify_signed(
        self, token: str, header: Mapping[str, Any], issuer: TrustedIssuer, audience: str
    ) -> Caller:
        """Checks 2–5 of the module docstring, for a token from a trusted issuer."""
        alg = header["alg"]
        key = self._key(header, issuer)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_exp": False,  # time checks below, against the injected clock
                    "verify_iat": False,
                    "verify_nbf": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"{exc.claim} missing") from None
        except jwt.PyJWTError as exc:
            reason = next((r for t, r in _PYJWT_REASONS if isinstance(exc, t)), "invalid token")
            raise AuthenticationError(reason) from None
        expires_at = self._check_times(claims)
        tenant = claims.get("tenant")
        if issuer.tenants is not None and tenant not in issuer.tenants:
            raise AuthenticationError("tenant not allowed for the issuer")
        jti = claims["jti"]
        if not isinstance(jti, str) or len(jti) > MAX_JTI_CHARS:
            raise AuthenticationError("jti is not a short string")
        if not self.replay.first_use(issuer.issuer, jti, expires_at):
            raise AuthenticationError("jti replayed")
        return Caller(issuer.issuer, tenant if isinstance(tenant, str) else None, jti)

    def _key(self, header: Mapping[str, Any], issuer: TrustedIssuer) -> jwt.PyJWK:
        """The key on record for the token's ``kid``; the ``jku`` only for a ``kid`` not on
        record, and only when allow-listed (CDS Hooks security guidance)."""
        kid, alg, jku = header["kid"], header["alg"], header.get("jku")
        own = self.key_sets.get(issuer.keys_on_record or "")
        if own is not None and (jku is None or own.has(kid)):
            return own.key(kid, alg)
        if jku is None:
            raise AuthenticationError("no jku and no JWK Set configured for the issuer")
        if not isinstance(jku, str) or jku not in issuer.jku:
            raise AuthenticationError("jku not on the issuer's allow-list")
        return self.key_sets[jku].key(kid, alg)

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        """Check exp, iat and nbf; return until when the jti must be remembered."""
        now, skew = self.clock(), self.policy.clock_skew
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if exp <= now - skew:
            raise AuthenticationError("expired")
        if iat > now + skew:
            raise AuthenticationError("iat in the future")
        if now - iat > self.policy.max_age + skew:
            raise AuthenticationError("iat older than the age bound")
        if "nbf" in claims and _number(claims, "nbf") > now + skew:
            raise AuthenticationError("not valid yet (nbf)")
        # past either bound the token is refused anyway, so the jti need not be kept longer
        return min(exp, iat + self.policy.max_age) + skew
