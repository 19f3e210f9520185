"""Access tokens the Entra stand-in issues and the other stand-ins verify (RS256 JWTs)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .pki import new_rsa_key
from .web import HttpError, Request

TOKEN_LIFETIME_SECONDS = 3600


class TokenIssuer:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self._key: rsa.RSAPrivateKey = new_rsa_key()
        self.key_id = uuid.uuid4().hex
        self.issuer = f"https://sts.windows.net/{tenant_id}/"

    def issue(self, *, audience: str, object_id: str, app_id: str, roles: list[str],
              wids: list[str], lifetime: int = TOKEN_LIFETIME_SECONDS, issuer: str | None = None) -> tuple[str, int]:
        """`issuer`: another `iss` than the v1 one (a managed identity's v2.0 token for federation)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience, "iss": issuer or self.issuer, "iat": now, "nbf": now, "exp": now + lifetime,
            "tid": self.tenant_id, "oid": object_id, "sub": object_id, "appid": app_id,
            "azp": app_id, "idtyp": "app", "ver": "1.0", "uti": uuid.uuid4().hex,
        }
        if roles:
            claims["roles"] = sorted(roles)
        if wids:
            claims["wids"] = sorted(wids)
        if issuer is not None:
            claims["ver"] = "2.0"
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})
        return token, now + lifetime

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def verify(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """Claims of a token this issuer signed for one of `audiences`; raises jwt errors."""
        claims: dict[str, Any] = jwt.decode(
            token, self._key.public_key(), algorithms=["RS256"], audience=audiences,
            issuer=self.issuer, options={"require": ["exp", "aud", "iss", "oid"]},
        )
        return claims


def bearer_token(request: Request) -> str | None:
    value = request.header("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request, issuer: TokenIssuer, audiences: list[str],
                 unauthorized: HttpError) -> dict[str, Any]:
    """Verified claims of the request's bearer token, or `unauthorized` raised."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized
    try:
        return issuer.verify(token, audiences)
    except jwt.PyJWTError as exc:
        raise HttpError(unauthorized.status, unauthorized.code, f"{unauthorized.message} ({exc})",
                        headers=unauthorized.headers) from exc
