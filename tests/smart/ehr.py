"""A loopback EHR for the SMART tests: a SMART authorization server and a FHIR R4 server in
one real HTTP server (werkzeug, in a thread).

- ``GET /fhir/.well-known/smart-configuration``: the endpoints and capabilities;
- ``GET /auth/authorize``: checks the client, redirect URI, ``aud``, the launch context and
  that PKCE is S256, then redirects back with a code and the ``state`` (or a forged one, or
  ``error=access_denied``, when a test asks);
- ``POST /auth/token``: checks the code, the redirect URI, the client and the PKCE verifier
  against the challenge, and answers a bearer token with ``patient`` in context;
- ``GET /fhir/Patient/{id}`` and ``GET /fhir/{type}?patient={id}``: only with a live token,
  and only for the token's patient (403 otherwise), as a real server enforcing
  ``patient/*.rs`` would. Every FHIR read is recorded, so tests can see what was asked.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import orjson
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

CLIENT_ID = "kcds-course-view"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Issued:
    patient: str
    challenge: str
    redirect_uri: str
    scope: str


@dataclass
class Ehr:
    """The loopback EHR; attributes are the knobs the tests turn."""

    patients: dict[str, list[dict[str, Any]]]  # patient id → its resources (Patient first)
    launches: dict[str, str] = field(default_factory=dict)  # launch context → patient id
    expires_in: int = 3600
    forge_state: bool = False
    deny: bool = False
    permission_v2: bool = True
    client_secret: str | None = None  # set: the client must authenticate (client_secret_basic)
    client_jwks: dict[str, Any] | None = None  # set: the client must send a private_key_jwt
    codes: dict[str, Issued] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → patient, expiry
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # FHIR paths with query, as asked
    url: str = ""

    @property
    def fhir(self) -> str:
        return self.url + "/fhir"

    def launch(self, patient: str) -> str:
        """A launch context for ``patient``, as the EHR would mint one."""
        context = secrets.token_urlsafe(12)
        self.launches[context] = patient
        return context

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path
        if path == "/fhir/.well-known/smart-configuration":
            response = self._json(self._configuration())
        elif path == "/auth/authorize":
            response = self._authorize(request)
        elif path == "/auth/token" and request.method == "POST":
            response = self._token(request)
        elif path.startswith("/fhir/"):
            response = self._fhir(request)
        else:
            response = Response("not found", 404)
        return response(environ, start_response)

    @staticmethod
    def _json(body: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status, mimetype="application/json")

    def _configuration(self) -> dict[str, Any]:
        capabilities = ["launch-ehr", "client-public", "client-confidential-symmetric"]
        if self.permission_v2:
            capabilities.append("permission-v2")
        return {
            "authorization_endpoint": self.url + "/auth/authorize",
            "token_endpoint": self.url + "/auth/token",
            "capabilities": capabilities,
            "code_challenge_methods_supported": ["S256"],
        }

    def _authorize(self, request: Request) -> Response:
        q = dict(request.args)
        self.authorize_requests.append(q)
        problems = [
            name
            for name, ok in (
                ("response_type", q.get("response_type") == "code"),
                ("client_id", q.get("client_id") == CLIENT_ID),
                ("aud", q.get("aud") == self.fhir),
                ("launch", q.get("launch") in self.launches),
                ("code_challenge_method", q.get("code_challenge_method") == "S256"),
                ("code_challenge", bool(q.get("code_challenge"))),
                ("state", bool(q.get("state"))),
                ("redirect_uri", bool(q.get("redirect_uri"))),
            )
            if not ok
        ]
        if problems:
            return Response(f"bad authorization request: {', '.join(problems)}", 400)
        state = "forged-" + secrets.token_urlsafe(8) if self.forge_state else q["state"]
        if self.deny:
            answer = {"error": "access_denied", "state": state}
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = Issued(
                self.launches[q["launch"]], q["code_challenge"], q["redirect_uri"], q["scope"]
            )
            answer = {"code": code, "state": state}
        return Response(
            status=302, headers={"Location": f"{q['redirect_uri']}?{urlencode(answer)}"}
        )

    def _token(self, request: Request) -> Response:
        form = dict(request.form)
        self.token_requests.append(form)
        issued = self.codes.pop(form.get("code", ""), None)
        client_id = form.get("client_id")
        if self.client_secret is not None:
            basic = base64.b64encode(f"{CLIENT_ID}:{self.client_secret}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {basic}":
                return self._json({"error": "invalid_client"}, 401)
            client_id = CLIENT_ID
        if self.client_jwks is not None:
            if not self._assertion_ok(form):
                return self._json({"error": "invalid_client"}, 401)
            client_id = CLIENT_ID
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if (
            form.get("grant_type") != "authorization_code"
            or issued is None
            or client_id != CLIENT_ID
            or form.get("redirect_uri") != issued.redirect_uri
            or challenge != issued.challenge
        ):
            return self._json({"error": "invalid_grant"}, 400)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (issued.patient, time.time() + self.expires_in)
        return self._json(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "scope": issued.scope,
                "patient": issued.patient,
            }
        )

    def _assertion_ok(self, form: dict[str, str]) -> bool:
        """A private_key_jwt client assertion (SMART App Launch: RS384 or ES384, ``kid`` of a
        registered key, iss = sub = client id, aud = the token endpoint, exp within 5 min)."""
        if form.get("client_assertion_type") != JWT_BEARER:
            return False
        assertion = form.get("client_assertion", "")
        try:
            kid = jwt.get_unverified_header(assertion).get("kid")
            jwk = next(k for k in self.client_jwks["keys"] if k.get("kid") == kid)
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(jwk).key,
                algorithms=[jwk["alg"]],
                audience=self.url + "/auth/token",
                issuer=CLIENT_ID,
                options={"require": ["exp", "iat", "jti", "sub"]},
            )
        except (StopIteration, jwt.PyJWTError):
            return False
        return claims["sub"] == CLIENT_ID and claims["exp"] - time.time() <= 300 + 5

    def _fhir(self, request: Request) -> Response:
        self.reads.append(request.full_path.rstrip("?"))
        auth = request.headers.get("Authorization", "")
        held = self.tokens.get(auth.removeprefix("Bearer "))
        if not auth.startswith("Bearer ") or held is None or held[1] <= time.time():
            return self._json(_outcome("login", "no live access token"), 401)
        allowed, _ = held
        parts = request.path.removeprefix("/fhir/").split("/")
        asked = (
            parts[1] if parts[0] == "Patient" and len(parts) == 2 else request.args.get("patient")
        )
        if asked != allowed:
            return self._json(_outcome("forbidden", "outside the patient in context"), 403)
        resources = self.patients.get(allowed, [])
        if parts[0] == "Patient":
            return self._json(resources[0])
        kind = parts[0]
        codes = set((request.args.get("code") or "").split("|")[-1].split(",")) - {""}
        found = [
            r
            for r in resources
            if r["resourceType"] == kind
            and (not codes or {c.get("code") for c in r["code"]["coding"]} & codes)
        ]
        return self._json(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [
                    {"fullUrl": f"{self.fhir}/{kind}/{r['id']}", "resource": r} for r in found
                ],
            }
        )


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class EhrServer:
    """The EHR on a loopback port, in a daemon thread."""

    def __init__(self, ehr: Ehr):
        self.ehr = ehr
        self.server = make_server("127.0.0.1", 0, ehr, threaded=True)
        ehr.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Ehr:
        self.thread.start()
        return self.ehr

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
