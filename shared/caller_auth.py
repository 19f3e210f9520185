"""Who is calling the HTTP API, from facts the caller cannot forge.

Two sources, both optional, chosen by settings (docs/deploy.md, "Protecting the HTTP API"):

- App Service Authentication ("Easy Auth"): it authenticates the caller and puts
  `X-MS-CLIENT-PRINCIPAL*` headers on the request, stripping any the client sent. The platform says
  it is on by setting `WEBSITE_AUTH_ENABLED=True`; without that, those headers are whatever the
  client wrote, so they are ignored entirely.
- The caller's own Entra access token (`Authorization: Bearer`), validated here: RS256 signature
  against the tenant's published keys, issuer, tenant, audience (`AUTH_AUDIENCE`), lifetime. This
  works on every hosting plan.

With neither, the caller is only known to hold a function key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from shared.settings import Settings

ROLE_CLAIM_URI = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
JWKS_REFRESH_SECONDS = 3600.0
JWKS_MIN_REFETCH_SECONDS = 60.0  # an unknown key id refetches the keys at most this often
CLOCK_SKEW_SECONDS = 120


@dataclass(frozen=True)
class Caller:
    """A caller identity for authorisation and audit; `verified` says a platform or token proved it."""

    name: str
    roles: frozenset[str] = frozenset()
    verified: bool = False

    @property
    def audit_name(self) -> str:
        return f"principal:{self.name}" if self.verified else "function-key"


FUNCTION_KEY_CALLER = Caller("function-key")


class AuthenticationFailed(Exception):
    """The presented credentials are not valid (HTTP 401)."""


def easy_auth_principal(headers: Any) -> Caller | None:
    """The caller App Service Authentication put on the request; only call when it is enabled."""
    encoded = headers.get("x-ms-client-principal")
    if not encoded:
        return None
    try:
        principal = json.loads(base64.b64decode(encoded))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(principal, dict):
        return None
    claims = principal.get("claims")
    # A principal is App Service's JSON; anything else in its place (claims not a list of objects,
    # a claim type that is not a string) carries no roles rather than failing the request.
    claims = [c for c in claims if isinstance(c, dict) and isinstance(c.get("typ"), str)] \
        if isinstance(claims, list) else []
    # Entra puts app roles in `roles`; App Service may announce another claim type in `role_typ`.
    role_typ = principal.get("role_typ")
    role_types = {"roles", "role", ROLE_CLAIM_URI, role_typ if isinstance(role_typ, str) and role_typ else "roles"}
    roles = frozenset(c["val"] for c in claims if c["typ"] in role_types and isinstance(c.get("val"), str))
    names = [c.get("val") for c in claims if c["typ"] in ("name", "appid", "oid") and isinstance(c.get("val"), str)]
    name = headers.get("x-ms-client-principal-name") or (names[0] if names else None) \
        or headers.get("x-ms-client-principal-id") or "unknown"
    return Caller(str(name)[:200], roles, verified=True)


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class TokenValidator:
    """Validates Entra access tokens for this API; keys come from the tenant's OpenID metadata."""

    def __init__(self, settings: Settings) -> None:
        self.tenant_id = settings.tenant_id
        self.audiences = tuple(settings.auth_audiences)
        authority = settings.authority_host
        self.metadata_url = f"{authority}/{settings.tenant_id}/v2.0/.well-known/openid-configuration"
        # v2.0 tokens name the authority; v1.0 tokens (APIs that do not ask for v2) name sts.windows.net.
        self.issuers = {f"{authority}/{settings.tenant_id}/v2.0", f"https://sts.windows.net/{settings.tenant_id}/"}
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def validate(self, token: str) -> Caller:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("the bearer token is not a JWT") from exc
        if header.get("alg") != "RS256":
            raise AuthenticationFailed("the bearer token is not signed with RS256")
        key = await self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["RS256"], audience=list(self.audiences), leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "aud", "iss", "tid"]})
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"the bearer token is not valid for this API: {type(exc).__name__}") from exc
        if claims.get("iss") not in self.issuers or str(claims.get("tid", "")).lower() != self.tenant_id:
            raise AuthenticationFailed("the bearer token was not issued by this tenant")
        roles = claims.get("roles")
        name = claims.get("upn") or claims.get("preferred_username") or claims.get("azp") or claims.get("appid") \
            or claims.get("oid") or "unknown"
        return Caller(str(name)[:200], frozenset(r for r in roles if isinstance(r, str))
                      if isinstance(roles, list) else frozenset(), verified=True)

    async def _key(self, kid: str) -> Any:
        async with self._lock:
            stale = time.monotonic() - self._fetched_at
            if stale > JWKS_REFRESH_SECONDS or (kid not in self._keys and stale > JWKS_MIN_REFETCH_SECONDS):
                self._keys = await self._fetch_keys()
                self._fetched_at = time.monotonic()
        if kid not in self._keys:
            raise AuthenticationFailed("the bearer token is signed with a key this tenant does not publish")
        return self._keys[kid]

    async def _fetch_keys(self) -> dict[str, Any]:
        import httpx
        import jwt

        async with httpx.AsyncClient(timeout=10.0, trust_env=True) as http:
            try:
                metadata = (await http.get(self.metadata_url)).raise_for_status().json()
                jwks = (await http.get(str(metadata["jwks_uri"]))).raise_for_status().json()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise KeysUnavailable(f"the tenant's signing keys could not be read ({type(exc).__name__})") from exc
        keys = {}
        for jwk in jwks.get("keys", []):
            try:
                keys[str(jwk.get("kid", ""))] = jwt.PyJWK(jwk).key
            except jwt.PyJWTError:
                continue  # a key type this API does not use
        return keys


class KeysUnavailable(Exception):
    """The tenant's signing keys could not be fetched: the caller may retry (HTTP 503)."""


_validators: dict[Settings, TokenValidator] = {}


def token_validator(settings: Settings) -> TokenValidator:
    """One validator per settings per process, so the tenant's keys are fetched once an hour."""
    validator = _validators.get(settings)
    if validator is None:
        validator = _validators[settings] = TokenValidator(settings)
    return validator


async def identify(headers: Any, settings: Settings) -> Caller:
    """The verified caller, or the function-key caller when no trustworthy identity is configured.

    Raises AuthenticationFailed for a presented token that is not valid, KeysUnavailable when it
    cannot be checked now.
    """
    if settings.app_service_auth_enabled:
        return easy_auth_principal(headers) or FUNCTION_KEY_CALLER
    if settings.auth_audiences:
        token = bearer_token(headers)
        if token is not None:
            return await token_validator(settings).validate(token)
    return FUNCTION_KEY_CALLER
