"""Keys, JWK Sets, a loopback JWKS server and tokens for the authentication tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

ISSUER = "https://ehr.example.org"
PUBLIC_URL = "https://cds.example.org"


@dataclass
class SigningKey:
    """A client's private key, its kid and algorithm."""

    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        """The public JWK, as a JWK Set lists it."""
        to_jwk = ECAlgorithm.to_jwk if self.alg.startswith("ES") else RSAAlgorithm.to_jwk
        jwk = to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def token(
        self,
        aud: str | list[str],
        iss: str = ISSUER,
        lifetime: float = 300,
        age: float = 0,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token issued ``age`` seconds ago, expiring ``lifetime`` seconds after issue;
        a claim or header passed as None is left out."""
        iat = int(time.time() - age)
        payload = {"iss": iss, "aud": aud, "iat": iat, "exp": iat + int(lifetime)}
        payload["jti"] = str(uuid.uuid4())
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        header = {k: v for k, v in {"kid": self.kid, **(headers or {})}.items() if v is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=header)


def es384(kid: str = "es384-key") -> SigningKey:
    return SigningKey(kid, "ES384", ec.generate_private_key(ec.SECP384R1()))


def rs384(kid: str = "rs384-key", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, "RS384", rsa.generate_private_key(public_exponent=65537, key_size=bits))


@dataclass
class JwksServer:
    """A JWK Set served over HTTP on loopback; counts its fetches, keys can be swapped."""

    server: HTTPServer
    path: str = "/jwks.json"
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def __post_init__(self) -> None:
        self.server.expect_request(self.path).respond_with_handler(self._serve)

    def _serve(self, _request: Request) -> Response:
        self.fetches += 1
        return Response(orjson.dumps({"keys": self.keys}), content_type="application/json")

    @property
    def url(self) -> str:
        return self.server.url_for(self.path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
