"""SMART App Launch (EHR launch) of the course view (issue 16).

``GET /smart/launch?iss=…&launch=…`` → the issuer must be allow-listed (``KCDS_SMART_ISSUERS``)
→ its ``/.well-known/smart-configuration`` → an authorization request with ``state`` and PKCE
(S256) → ``GET /smart/callback`` exchanges the code for a token → ``GET /smart/course`` reads
the launch patient's data and shows the course (:mod:`service.web.course`).

The OAuth 2 client is Authlib's (``OAuth2Session``: state, PKCE, client authentication
``none`` for a public client or ``client_secret_basic`` with ``KCDS_SMART_CLIENT_SECRET``);
nothing of OAuth is written here. The token stays on the server: the browser holds a cookie
with an opaque session id only, signed with ``KCDS_SESSION_KEY`` (itsdangerous, as Flask signs
its sessions), HttpOnly, SameSite=Lax, Secure on https, path ``/smart``. The session (the token,
the patient in context) is kept until it expires (the token's own ``expires_in`` or
``KCDS_SMART_SESSION_TTL``, whichever comes first) in the registry's database, encrypted, so
that every worker sees it (:class:`SqlSessionStore`), or with the registry off in this
process's memory (:class:`SessionStore`). Tokens, codes and patient
ids are never logged. Refusals are pages that say what happened: 400 (launch without
parameters), 401 (no session, expired, token refused), 403 (issuer not allowed, ``state``
mismatch, authorization refused, another patient asked for), 502 (the EHR's server failed).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6749.errors import MismatchingStateException, MissingCodeException
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Blueprint, Response, redirect, render_template, request, url_for
from itsdangerous import BadSignature, TimestampSigner
from joserfc.jwk import ECKey, RSAKey

from cds_hooks.sqltable import SharedTable
from service.config import ConfigError, Settings

log = logging.getLogger("service.web.smart")

#: SMART scopes when KCDS_SMART_SCOPES is unset: v2, or v1 for a server without permission-v2
SCOPES_V2 = "launch openid fhirUser patient/*.rs"
SCOPES_V1 = "launch openid fhirUser patient/*.read"
#: an authorization must come back within this many seconds of the launch
LAUNCH_SECONDS = 600
#: a private_key_jwt client assertion's lifetime (SMART: no more than five minutes)
ASSERTION_SECONDS = 300
COOKIE = "kcds_smart"
SESSION_TABLE = "kcds_smart_session"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

Clock = Callable[[], float]


@dataclass(frozen=True)
class SmartSettings:
    client_id: str
    issuers: tuple[str, ...]
    scopes: str | None
    client_secret: str | None = field(repr=False)
    session_key: str = field(repr=False)
    signing_key: ClientKey | None = field(repr=False)
    public_url: str
    session_ttl: float
    timeout: float

    @classmethod
    def of(cls, settings: Settings) -> SmartSettings | None:
        """The SMART settings; None when SMART is off (no client id); a ConfigError naming
        the variable when it is on but cannot work."""
        if not settings.smart_client_id:
            return None
        if not settings.smart_issuers:
            raise ConfigError(
                "KCDS_SMART_CLIENT_ID is set: KCDS_SMART_ISSUERS must name the FHIR servers "
                "allowed to launch the course view"
            )
        if not settings.session_key:
            raise ConfigError(
                "KCDS_SMART_CLIENT_ID is set: KCDS_SESSION_KEY (32+ characters) must sign the "
                "course view's session cookie"
            )
        if not settings.public_url:
            raise ConfigError(
                "KCDS_SMART_CLIENT_ID is set: KCDS_PUBLIC_URL is needed for the redirect URI "
                "(KCDS_PUBLIC_URL/smart/callback)"
            )
        if settings.smart_client_secret and settings.smart_private_key:
            raise ConfigError(
                "KCDS_SMART_CLIENT_SECRET and KCDS_SMART_PRIVATE_KEY: set one client "
                "authentication, not both"
            )
        for issuer in settings.smart_issuers:
            parts = urlsplit(issuer)
            if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
                raise ConfigError(f"KCDS_SMART_ISSUERS: {issuer!r} is not an http(s) base URL")
        return cls(
            client_id=settings.smart_client_id,
            issuers=tuple(i.rstrip("/") for i in settings.smart_issuers),
            scopes=settings.smart_scopes,
            client_secret=settings.smart_client_secret,
            session_key=settings.session_key,
            signing_key=ClientKey.load(settings.smart_private_key)
            if settings.smart_private_key
            else None,
            public_url=settings.public_url.rstrip("/"),
            session_ttl=settings.smart_session_ttl,
            timeout=settings.fhir_timeout,
        )

    @property
    def redirect_uri(self) -> str:
        return self.public_url + "/smart/callback"

    @property
    def launch_url(self) -> str:
        """The URL the EHR launches (the cards' ``smart`` link)."""
        return self.public_url + "/smart/launch"

    def client(self, scope: str) -> OAuth2Session:
        """Authlib's OAuth 2 client for one authorization: PKCE S256, and a public client
        (``none``) unless a client secret (``client_secret_basic``) or a private key
        (``private_key_jwt``, an assertion valid for 5 minutes) is configured."""
        if self.signing_key is not None:
            session = OAuth2Session(
                client_id=self.client_id,
                client_secret=self.signing_key.key,
                scope=scope,
                redirect_uri=self.redirect_uri,
                code_challenge_method="S256",
                token_endpoint_auth_method="private_key_jwt",
            )
            session.register_client_auth_method(
                PrivateKeyJWT(
                    alg=self.signing_key.alg,
                    headers={"kid": self.signing_key.kid},
                    claims={"exp": int(time.time()) + ASSERTION_SECONDS},
                )
            )
            return session
        return OAuth2Session(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.client_secret else "none",
        )


@dataclass(frozen=True)
class ClientKey:
    """The private key of a ``private_key_jwt`` client: RSA signs RS384, EC P-384 ES384 (the
    SMART App Launch algorithms); its ``kid`` is the RFC 7638 thumbprint."""

    key: RSAKey | ECKey = field(repr=False)
    alg: str
    kid: str

    @classmethod
    def load(cls, path: str) -> ClientKey:
        try:
            pem = Path(path).read_bytes()
            private = serialization.load_pem_private_key(pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"KCDS_SMART_PRIVATE_KEY: {path} is not a readable, unencrypted PEM private "
                f"key ({type(exc).__name__})"
            ) from None
        if isinstance(private, rsa.RSAPrivateKey):
            key, alg = RSAKey.import_key(pem), "RS384"
        elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1":
            key, alg = ECKey.import_key(pem), "ES384"
        else:
            raise ConfigError("KCDS_SMART_PRIVATE_KEY must be an RSA or an EC P-384 key")
        return cls(key, alg, key.thumbprint())

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK Set, for the EHR to verify the client's assertions."""
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}


class Refusal(Exception):
    """A request the course view refuses, with the page that says why."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(title)
        self.status, self.title, self.message = status, title, message


@dataclass(frozen=True)
class Launch:
    """Between /smart/launch and /smart/callback."""

    issuer: str
    token_endpoint: str
    scope: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    expires: float


@dataclass(frozen=True)
class Grant:
    """After the token: who may be read, and with what. Never leaves the server."""

    issuer: str
    patient: str = field(repr=False)
    access_token: str = field(repr=False)
    expires: float


class SessionStore:
    """Launches and grants by opaque session id, in this process's memory, until they expire."""

    def __init__(self, clock: Clock = time.time):
        self.clock = clock
        self._items: dict[str, Launch | Grant] = {}
        self._lock = threading.Lock()

    def put(self, item: Launch | Grant) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            for key in [k for k, v in self._items.items() if v.expires <= now]:
                del self._items[key]
            self._items[sid] = item
        return sid

    def get(self, sid: str) -> Launch | Grant | None:
        with self._lock:
            item = self._items.get(sid)
            if item is not None and item.expires <= self.clock():
                del self._items[sid]
                return None
            return item

    def drop(self, sid: str) -> None:
        with self._lock:
            self._items.pop(sid, None)


def course_view_url(settings: Settings) -> str | None:
    """The course view's launch URL for the cards; None when SMART is off."""
    smart = SmartSettings.of(settings)
    return smart.launch_url if smart else None


class SqlSessionStore:
    """Launches and grants in a table of the registry's database, so that every gunicorn
    worker and instance sees them (a launch answered by one worker, its callback by another).

    The row key is a SHA-256 of the session id (the cookie's value is never in the database)
    and the row itself is encrypted with a key derived from ``KCDS_SESSION_KEY`` (Fernet:
    AES-CBC + HMAC), so the database holds no readable token or patient id; rows are deleted
    when used up and purged once expired. An unreachable database refuses with a 503 page.
    """

    def __init__(self, url: str, session_key: str, clock: Clock = time.time):
        self._table = SharedTable(
            url,
            (
                f"CREATE TABLE IF NOT EXISTS {SESSION_TABLE} ("
                " key text PRIMARY KEY, item text NOT NULL, expires_at double precision NOT NULL)",
            ),
            name="smart session store",
            log=log,
            unavailable=lambda: Refusal(
                503,
                "The course view is unavailable",
                "Its session store (the registry's database) cannot be reached. Try again "
                "in a moment.",
            ),
        )
        self._fernet = Fernet(
            base64.urlsafe_b64encode(
                hashlib.sha256(b"ketamine-cds smart store\0" + session_key.encode()).digest()
            )
        )
        self.clock = clock

    @staticmethod
    def _key(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def put(self, item: Launch | Grant) -> str:
        self._table.ensure()
        sid = secrets.token_urlsafe(32)
        kind = "launch" if isinstance(item, Launch) else "grant"
        sealed = self._fernet.encrypt(orjson.dumps({"kind": kind, **asdict(item)})).decode()
        self._table.run(
            f"DELETE FROM {SESSION_TABLE} WHERE expires_at <= :now", {"now": self.clock()}
        )
        self._table.run(
            f"INSERT INTO {SESSION_TABLE} (key, item, expires_at) VALUES (:key, :item, :expires)",
            {"key": self._key(sid), "item": sealed, "expires": item.expires},
        )
        return sid

    def get(self, sid: str) -> Launch | Grant | None:
        self._table.ensure()
        rows = self._table.run(
            f"SELECT item FROM {SESSION_TABLE} WHERE key = :key AND expires_at > :now",
            {"key": self._key(sid), "now": self.clock()},
        )
        if not rows:
            return None
        try:
            fields_ = orjson.loads(self._fernet.decrypt(rows[0][0].encode()))
        except InvalidToken:  # written under another KCDS_SESSION_KEY: as good as gone
            return None
        kind = fields_.pop("kind")
        return Launch(**fields_) if kind == "launch" else Grant(**fields_)

    def drop(self, sid: str) -> None:
        self._table.run(f"DELETE FROM {SESSION_TABLE} WHERE key = :key", {"key": self._key(sid)})


def session_store(settings: Settings, smart: SmartSettings) -> SessionStore | SqlSessionStore:
    """The registry's database while the registry is on (shared by workers and instances);
    this process's memory otherwise (one worker only: ``KCDS_WORKERS=1``)."""
    if settings.registry:
        return SqlSessionStore(settings.database_url, smart.session_key)
    return SessionStore()


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    capabilities: frozenset[str]


def discover(issuer: str, timeout: float) -> Endpoints:
    """The issuer's ``/.well-known/smart-configuration``: its OAuth endpoints."""
    url = issuer + "/.well-known/smart-configuration"
    try:
        response = requests.get(
            url, headers={"Accept": "application/json"}, timeout=timeout, allow_redirects=False
        )
        document = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        log.warning(
            "smart configuration unreadable", extra={"fields": {"error": type(exc).__name__}}
        )
        document = None
    if not isinstance(document, dict):
        raise Refusal(
            502,
            "The EHR's SMART configuration could not be read",
            f"{url} did not answer with a SMART configuration (JSON).",
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint"):
        value = document.get(name)
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise Refusal(
                502,
                "The EHR's SMART configuration is incomplete",
                f"{url} has no usable {name}.",
            )
        endpoints[name] = value
    capabilities = document.get("capabilities")
    return Endpoints(
        endpoints["authorization_endpoint"],
        endpoints["token_endpoint"],
        frozenset(c for c in capabilities if isinstance(c, str))
        if isinstance(capabilities, list)
        else frozenset(),
    )


def smart_blueprint(
    smart: SmartSettings,
    show_course: Callable[[Grant], str],
    store: SessionStore | SqlSessionStore | None = None,
) -> Blueprint:
    """The SMART routes. ``show_course`` renders the course view for a grant (the web layer's
    :func:`service.web.course.course_page`); it may raise :class:`Refusal`."""
    store = store or SessionStore()
    signer = TimestampSigner(smart.session_key, salt="ketamine-cds smart session")
    secure = smart.redirect_uri.startswith("https://")
    bp = Blueprint(
        "smart",
        __name__,
        static_folder="static",
        static_url_path="/smart/static",
        template_folder="templates",
    )

    def page(refusal: Refusal) -> Response:
        html = render_template(
            "smart_error.html", status=refusal.status, title=refusal.title, message=refusal.message
        )
        return Response(html, status=refusal.status, mimetype="text/html")

    def session_id() -> str | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            return signer.unsign(value, max_age=smart.session_ttl + LAUNCH_SECONDS).decode()
        except BadSignature:
            return None

    def with_session(response: Response, sid: str, seconds: float) -> Response:
        response.set_cookie(
            COOKIE,
            signer.sign(sid).decode(),
            max_age=math.ceil(seconds),
            path="/smart",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
        return response

    def current(kind: type[Launch] | type[Grant]) -> tuple[str, Any]:
        """The session id and its launch or grant; a 401 refusal when there is none."""
        sid = session_id()
        item = store.get(sid) if sid else None
        if sid is None or not isinstance(item, kind):
            raise Refusal(
                401,
                "No course view session",
                "There is no course view open in this browser, or it has ended. Open the "
                "course view again from the patient's record in the EHR.",
            )
        return sid, item

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the callback URL holds the code
        response.headers["Cache-Control"] = "no-store"  # patient data
        return response

    @bp.errorhandler(Refusal)
    def _refused(refusal: Refusal) -> Response:
        log.info(
            "smart refused", extra={"fields": {"status": refusal.status, "why": refusal.title}}
        )
        return page(refusal)

    if smart.signing_key is not None:

        @bp.get("/smart/jwks.json")
        def jwks() -> Response:
            return Response(orjson.dumps(smart.signing_key.jwks()), mimetype="application/json")

    @bp.errorhandler(Exception)
    def _failed(exc: Exception) -> Response:
        """A bug is a page too (and a logged error), never a JSON body in the browser."""
        log.error("course view failed", extra={"error_type": type(exc).__name__}, exc_info=True)
        return page(
            Refusal(
                500,
                "The course view failed",
                "The failure is logged. Check the patient's record in the EHR meanwhile.",
            )
        )

    @bp.get("/smart/launch")
    def launch() -> Response:
        issuer = (request.args.get("iss") or "").strip().rstrip("/")
        context = (request.args.get("launch") or "").strip()
        if not issuer or not context:
            raise Refusal(
                400,
                "Not an EHR launch",
                "The course view is opened by the EHR with iss and launch parameters; open it "
                "from the link on the ketamine card.",
            )
        if issuer not in smart.issuers:
            raise Refusal(
                403,
                "This EHR may not launch the course view",
                f"The FHIR server {issuer} is not one of the servers allowed to launch it "
                "(KCDS_SMART_ISSUERS). Ask the service's administrator to add it.",
            )
        endpoints = discover(issuer, smart.timeout)
        scope = smart.scopes or (
            SCOPES_V2 if "permission-v2" in endpoints.capabilities else SCOPES_V1
        )
        verifier = generate_token(64)  # RFC 7636: 43-128 characters
        url, state = smart.client(scope).create_authorization_url(
            endpoints.authorization, code_verifier=verifier, launch=context, aud=issuer
        )
        sid = store.put(
            Launch(issuer, endpoints.token, scope, state, verifier, time.time() + LAUNCH_SECONDS)
        )
        log.info("smart launch", extra={"fields": {"issuer": issuer}})
        return with_session(redirect(url), sid, LAUNCH_SECONDS)

    @bp.get("/smart/callback")
    def callback() -> Response:
        sid, pending = current(Launch)
        store.drop(sid)  # one authorization per launch
        if request.args.get("error"):
            raise Refusal(
                403,
                "The EHR did not authorise the course view",
                f"The authorization server answered {request.args['error']!r}"
                + (
                    f": {request.args['error_description']}"
                    if request.args.get("error_description")
                    else ""
                )
                + ". Open the course view again from the EHR.",
            )
        try:
            token = smart.client(pending.scope).fetch_token(
                pending.token_endpoint,
                authorization_response=request.url,
                state=pending.state,
                code_verifier=pending.code_verifier,
                timeout=smart.timeout,
            )
        except MismatchingStateException:
            raise Refusal(
                403,
                "The authorization does not match this launch",
                "The state returned by the authorization server is not the one this launch "
                "sent, so the answer is refused. Open the course view again from the EHR.",
            ) from None
        except MissingCodeException:
            raise Refusal(
                400, "No authorization code", "The authorization server sent no code."
            ) from None
        except OAuthError as exc:
            raise Refusal(
                403,
                "The EHR refused the authorization",
                f"The token endpoint answered {exc.error!r}. Open the course view again "
                "from the EHR.",
            ) from None
        except (requests.RequestException, ValueError) as exc:
            log.warning("smart token failed", extra={"fields": {"error": type(exc).__name__}})
            raise Refusal(
                502, "The EHR's token endpoint failed", "No token could be obtained."
            ) from None
        patient = token.get("patient")
        access_token = token.get("access_token")
        if not (isinstance(patient, str) and patient and isinstance(access_token, str)):
            raise Refusal(
                403,
                "No patient in context",
                "The EHR's token names no patient: the course view shows the launch patient "
                "only. Open it from a patient's record.",
            )
        expires = time.time() + smart.session_ttl
        if isinstance(token.get("expires_at"), int | float):
            expires = min(expires, float(token["expires_at"]))
        grant_id = store.put(Grant(pending.issuer, patient, access_token, expires))
        log.info("smart authorised", extra={"fields": {"issuer": pending.issuer}})
        return with_session(redirect(url_for("smart.course")), grant_id, expires - time.time())

    @bp.get("/smart/course")
    def course() -> Response:
        _, grant = current(Grant)
        asked = request.args.get("patient")
        if asked is not None and asked != grant.patient:
            raise Refusal(
                403,
                "Another patient's course",
                "The course view shows only the patient the EHR launched it for. Open the "
                "other patient's record in the EHR and launch the view from there.",
            )
        return Response(show_course(grant), mimetype="text/html")

    return bp


def token_refused(reason: Any) -> bool:
    """The FHIR server answered 401 or 403 to the token (its reason text, from
    :mod:`cds_hooks.fhir`)."""
    return isinstance(reason, str) and ("HTTP 401" in reason or "HTTP 403" in reason)
