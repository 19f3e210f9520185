"""A GitHub-Actions-like OIDC issuer: a discovery document, a JWKS, and ID tokens for workloads.

What Entra ID needs from an external issuer for workload identity federation (docs/reference.md,
"Federated identity credentials"): `{issuer}/.well-known/openid-configuration` naming a `jwks_uri`
whose keys verify the workload's RS256 token, whose `iss`, `sub` and `aud` then match one of the app's
federated identity credentials exactly.

Tokens are handed out as GitHub's runners get theirs: `GET {ACTIONS_ID_TOKEN_REQUEST_URL}&audience=…`
with `Authorization: bearer {ACTIONS_ID_TOKEN_REQUEST_TOKEN}` answers `{"value": "<jwt>"}`. A test
registers a workload (`workload(subject)`) and gets its request URL and token, as a runner would find
them in its environment. The claims are GitHub's core ones (`sub` as `repo:ORG/REPO:environment:NAME`,
`repository`, `environment`, `ref`, `jti`, `iat`/`nbf`/`exp`); the Entra stand-in reads this issuer's
keys in process (`world.external_issuers`) rather than fetching the JWKS over HTTPS.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from typing import Any

import jwt

from .pki import new_rsa_key
from .web import HttpError, Request, Response, Service
from .world import World

TOKEN_LIFETIME_SECONDS = 300  # GitHub's ID tokens are short-lived (unverified exact value)


class OidcIssuerService(Service):
    name = "oidc"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self._key = new_rsa_key()
        self.key_id = uuid.uuid4().hex
        self._workloads: dict[str, str] = {}  # request token -> subject
        self.route("GET", "/.well-known/openid-configuration", self.configuration)
        self.route("GET", "/.well-known/jwks", self.jwks)
        self.route("GET", "/_apis/token", self.token)

    @property
    def issuer(self) -> str:
        return self.base_url

    def signing_keys(self) -> dict[str, Any]:
        """kid -> public key: what the JWKS publishes."""
        return {self.key_id: self._key.public_key()}

    def workload(self, subject: str) -> tuple[str, str]:
        """Register a workload: (ACTIONS_ID_TOKEN_REQUEST_URL, ACTIONS_ID_TOKEN_REQUEST_TOKEN)."""
        request_token = secrets.token_urlsafe(24)
        self._workloads[request_token] = subject
        return f"{self.base_url}/_apis/token?api-version=2.0", request_token

    def issue(self, subject: str, audience: str, lifetime: int = TOKEN_LIFETIME_SECONDS) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now,
                                  "exp": now + lifetime, "jti": uuid.uuid4().hex}
        if subject.startswith("repo:"):
            repository, _, rest = subject[len("repo:"):].partition(":")
            claims["repository"] = repository
            kind, _, value = rest.partition(":")
            if kind == "environment":
                claims["environment"] = value
            elif kind == "ref":
                claims["ref"] = value
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})

    def configuration(self, request: Request) -> Response:
        return Response.json(200, {
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}/.well-known/jwks",
            "subject_types_supported": ["public", "pairwise"], "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository", "environment"],
            "id_token_signing_alg_values_supported": ["RS256"], "scopes_supported": ["openid"],
        })

    def jwks(self, request: Request) -> Response:
        numbers = self._key.public_key().public_numbers()

        def b64int(value: int) -> str:
            return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

        return Response.json(200, {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.key_id,
                                             "n": b64int(numbers.n), "e": b64int(numbers.e)}]})

    def token(self, request: Request) -> Response:
        scheme, _, presented = (request.header("authorization") or "").partition(" ")
        subject = self._workloads.get(presented.strip()) if scheme.lower() == "bearer" else None
        if subject is None:
            raise HttpError(401, "Unauthorized", "The request token is missing or unknown.")
        audience = request.query.get("audience") or self.issuer
        return Response.json(200, {"count": 1, "value": self.issue(subject, audience)})
