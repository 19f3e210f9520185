"""Entra ID stand-in: the App Service managed-identity endpoint and the v2.0 token endpoint.

What the real clients send, read in the installed sources (msal 1.39, azure-identity 1.27):

- Managed identity (App Service / Functions): azure-identity's sync `ManagedIdentityCredential`
  goes through `msal.ManagedIdentityClient`, the async one through its own pipeline; both send
  `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<scope without /.default>` with
  `X-IDENTITY-HEADER` (msal adds `Metadata: true`), plus `client_id`/`object_id`/`mi_res_id` for a
  user-assigned identity. Both read `access_token` and `expires_on` (epoch seconds; the documented
  example is a string) and msal reads `statusCode`/`message` from an error body.
- `CertificateCredential(authority=<custom host>, disable_instance_discovery=True)` builds an
  `msal.ConfidentialClientApplication` for `<authority>/<tenant>`; msal then skips instance
  discovery and GETs `<authority>/<tenant>/v2.0/.well-known/openid-configuration`, and takes the
  token endpoint from that document (and the assertion's `aud` from it). Without the flag msal asks
  `https://login.microsoftonline.com/common/discovery/instance` (never this host), so
  `/common/discovery/instance` here only serves a client configured with this host as its
  instance-discovery endpoint.
- The token request is a form POST: `client_id`, `grant_type=client_credentials`, `scope`,
  `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
  `client_assertion`, `client_info=1`. azure-identity passes the SHA-1 thumbprint, so the assertion
  is RS256 with `x5t`; msal given only a certificate signs PS256 with `x5t#S256` (and `x5c`). Both
  are accepted. The claims are `aud` (token endpoint), `iss` = `sub` = client id, `exp` = `iat` +
  600 (azure-identity: 1800), `jti`; msal reuses one assertion for about nine minutes, so `jti` is not a replay key.

Validation follows Entra's documented and widely reported answers (AADSTS codes in the messages,
OAuth error bodies with `error_codes`, `trace_id`, `correlation_id`, `timestamp`). Key credential
windows are judged by the simulated clock; assertion times by the real clock, because msal stamps
them with it.

Unverified (plausible picks, marked where they are made): the answer of the identity endpoint to a
missing or wrong `X-IDENTITY-HEADER` (401) and to an unknown resource (400 with the AADSTS500011
text; msal notes the real one has been a vague 500); the HTTP status of AADSTS7000229 (401); the
code for a wrong `client_assertion_type` (AADSTS90014); the wording for a key not yet valid; the
codes used for injected 429/5xx faults. Not implemented: other grants (refused with AADSTS70003),
client secrets (refused with AADSTS7000215: apps here only hold certificates), SNI/x5c
certificate-chain trust, v1.0 endpoints, `common`/`organizations` tenants (AADSTS90002).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .web import HttpError, Request, Response, Service
from .world import World

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The audience of a workload's token for workload identity federation (Graph docs,
# federatedIdentityCredential: "should be set to api://AzureADTokenExchange for Microsoft Entra ID").
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
APP_SERVICE_API_VERSION = "2019-08-01"
CLOCK_SKEW = 300  # seconds of leeway on assertion exp/nbf, as Entra allows for client clock drift
SIGNING_ALGORITHMS = ("RS256", "PS256")
_DOCS_CERTS = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"


class OAuthError(HttpError):
    """An Entra STS refusal: `error` (RFC 6749 code) plus the AADSTS number in the description."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(status, error, f"AADSTS{aadsts}: {description}")
        self.aadsts = aadsts


class ManagedIdentityError(HttpError):
    """A refusal of the App Service identity endpoint, which has its own error shape."""


def _missing_parameter(name: str) -> OAuthError:
    return OAuthError(400, "invalid_request", 900144,
                      f"The request body must contain the following parameter: '{name}'.")


def _bad_signature(reason: str, thumbprint: str, details: str) -> OAuthError:
    return OAuthError(401, "invalid_client", 700027,
                      f"Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of "
                      f"key used by client: '{thumbprint}', {details}]")


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _us_time(moment: dt.datetime | None) -> str:
    # Entra prints key windows in this US format ("Start=01/28/2018 16:00:00").
    return moment.astimezone(dt.UTC).strftime("%m/%d/%Y %H:%M:%S") if moment else ""


def _epoch_iso(value: Any) -> str:
    try:
        moment = dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError):
        moment = dt.datetime.fromtimestamp(0, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _normalise_resource(value: str) -> str:
    value = value.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value.rstrip("/").lower()


class EntraService(Service):
    name = "entra"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.route("GET", "/msi/token", self.managed_identity_token)
        self.route("GET", "/common/discovery/instance", self.instance_discovery)
        self.route("GET", "/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration)
        self.route("GET", "/{tenant}/discovery/v2.0/keys", self.keys)
        self.route("POST", "/{tenant}/oauth2/v2.0/token", self.token)

    # -- error rendering ---------------------------------------------------------------------------
    def error_response(self, error: HttpError, request: Request) -> Response:
        correlation_id = request.header("client-request-id") or str(uuid.uuid4())
        if request.path.startswith("/msi/"):
            # App Service's identity endpoint answers {statusCode, message, correlationId} (seen).
            return Response.json(error.status, {"statusCode": error.status, "message": error.message,
                                                "correlationId": correlation_id}, error.headers)
        if isinstance(error, OAuthError):
            code, aadsts, text = error.code, error.aadsts, error.message
        elif error.status == 429:
            code, aadsts = "temporarily_unavailable", 90055  # unverified pick for throttling
            text = f"AADSTS{aadsts}: {error.message}"
        elif error.status >= 500:
            code, aadsts = "temporarily_unavailable", 50033  # "RetryableError"
            text = f"AADSTS{aadsts}: {error.message}"
        else:
            code, aadsts = "invalid_request", 900561  # unverified: unknown endpoint or method
            text = f"AADSTS{aadsts}: {error.message}"
        trace_id = str(uuid.uuid4())
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": code,
            "error_description": f"{text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}"
                                 f"\r\nTimestamp: {now}",
            "error_codes": [aadsts],
            "timestamp": now,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}/error?code={aadsts}",
        }
        headers = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache", **error.headers}
        return Response.json(error.status, body, headers)

    # -- tenant and resources ----------------------------------------------------------------------
    def _tenant(self, name: str) -> str:
        """The tenant id for a path segment (tenant id or primary domain), else AADSTS90002."""
        if name.lower() in (self.world.tenant_id.lower(), self.world.organization.lower()):
            return self.world.tenant_id
        raise OAuthError(400, "invalid_tenant", 90002,
                         f"Tenant '{name}' not found. Check to make sure you have the correct tenant ID and "
                         "are signing into the correct cloud. Check with your subscription administrator, "
                         "this may happen if there are no active subscriptions for the tenant.")

    def _resource_sp(self, resource: str) -> dict[str, Any] | None:
        """The service principal of the resource a token is asked for (caller holds the lock).

        Resource SPs carry the audiences of world.resources in servicePrincipalNames (the stack
        registers them), so matching SP names covers the served resources and any other SP alike.
        """
        wanted = _normalise_resource(resource)
        if not wanted:
            return None
        for sp in self.world.directory.service_principals.values():
            names = [sp["appId"], *sp.get("servicePrincipalNames", [])]
            if any(_normalise_resource(n) == wanted for n in names) and self.world.is_visible(sp["id"]):
                return sp
        return None

    def _resource_not_found(self, resource: str) -> OAuthError:
        return OAuthError(400, "invalid_resource", 500011,
                          f"The resource principal named {resource} was not found in the tenant named "
                          f"{self.world.tenant_id}. This can happen if the application has not been "
                          "installed by the administrator of the tenant or consented to by any user in the "
                          "tenant. You might have sent your authentication request to the wrong tenant.")

    def _claims_for(self, principal_id: str, resource_sp: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(roles, wids) as a token minted now carries them; grants still replicating are left out."""
        d = self.world.directory
        by_id = {r["id"]: r["value"] for r in resource_sp.get("appRoles", []) if r.get("isEnabled", True)}
        roles = sorted({
            by_id[a["appRoleId"]] for a in d.app_role_assignments.values()
            if a["principalId"] == principal_id and a["resourceId"] == resource_sp["id"]
            and a["appRoleId"] in by_id and self.world.is_visible(a["id"])
        })
        wids = sorted({
            d.role_definitions[a["roleDefinitionId"]]["templateId"] for a in d.role_assignments.values()
            if a["principalId"] == principal_id and a["roleDefinitionId"] in d.role_definitions
            and a.get("directoryScopeId", "/") == "/" and self.world.is_visible(a["id"])
        })
        return roles, wids

    # -- managed identity --------------------------------------------------------------------------
    def managed_identity_token(self, request: Request) -> Response:
        platform = self.world.platform
        if request.header("x-identity-header") != platform.identity_header:
            # unverified: the real endpoint's answer to a missing or wrong header is not documented
            raise ManagedIdentityError(401, "Unauthorized",
                                       "The X-IDENTITY-HEADER header is missing or does not match.")
        api_version = request.query.get("api-version")
        if api_version != APP_SERVICE_API_VERSION:
            raise ManagedIdentityError(400, "BadRequest",
                                       f"The api-version '{api_version}' is not supported; "
                                       f"use {APP_SERVICE_API_VERSION}.")
        resource = request.query.get("resource", "").strip()
        if not resource:
            raise ManagedIdentityError(400, "BadRequest", "The 'resource' query parameter is required.")
        # No selector: the app's own (system-assigned-like) identity, the platform's; a client or object id
        # selects it or a user-assigned identity of the app (world.add_managed_identity).
        identities = [(platform.object_id, platform.app_id),
                      *((m.object_id, m.app_id) for m in self.world.managed_identities.values())]
        chosen = identities[0]
        for parameter, index in (("client_id", 1), ("object_id", 0), ("principal_id", 0), ("mi_res_id", None)):
            given = request.query.get(parameter)
            if given is None:
                continue
            match = next((i for i in identities if index is not None and i[index].lower() == given.lower()), None)
            if match is None:
                # seen: the answer when the selected identity is not assigned to the app
                raise ManagedIdentityError(400, "BadRequest", "Unable to load the proper Managed Identity.")
            chosen = match
        object_id, app_id = chosen
        audience = resource[: -len("/.default")] if resource.endswith("/.default") else resource
        if audience == TOKEN_EXCHANGE_AUDIENCE:
            # A federation assertion: a v2.0 token of this tenant's issuer whose subject is the managed
            # identity's principal id (docs/reference.md, "Federated identity credentials").
            token, expires_on = self.world.issuer.issue(
                audience=audience, object_id=object_id, app_id=app_id, roles=[], wids=[],
                issuer=self._v2_issuer(self.world.tenant_id))
            return Response.json(200, {"access_token": token, "expires_on": str(expires_on), "resource": audience,
                                       "token_type": "Bearer", "client_id": app_id})
        with self.world.lock:
            resource_sp = self._resource_sp(resource)
            if resource_sp is None:
                raise ManagedIdentityError(400, "BadRequest", self._resource_not_found(resource).message)
            roles, wids = self._claims_for(object_id, resource_sp)
        token, expires_on = self.world.issuer.issue(audience=audience, object_id=object_id, app_id=app_id,
                                                    roles=roles, wids=wids)
        return Response.json(200, {
            "access_token": token, "expires_on": str(expires_on), "resource": audience,
            "token_type": "Bearer", "client_id": app_id,
        })

    def _v2_issuer(self, tid: str) -> str:
        return f"{self.base_url}/{tid}/v2.0"

    # -- discovery ---------------------------------------------------------------------------------
    def openid_configuration(self, request: Request) -> Response:
        tid = self._tenant(request.params["tenant"])
        base = f"{self.base_url}/{tid}"
        return Response.json(200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self._v2_issuer(tid),
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })

    def keys(self, request: Request) -> Response:
        self._tenant(request.params["tenant"])
        # TokenIssuer exposes no public key accessor; resources here verify through it directly,
        # this document only lets an outside verifier do what a real resource would.
        numbers = self.world.issuer._key.public_key().public_numbers()

        def b64int(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return Response.json(200, {"keys": [{
            "kty": "RSA", "use": "sig", "kid": self.world.issuer.key_id,
            "n": b64int(numbers.n), "e": b64int(numbers.e), "issuer": self.world.issuer.issuer,
        }]})

    def instance_discovery(self, request: Request) -> Response:
        endpoint = request.query.get("authorization_endpoint", "")
        split = urlsplit(endpoint)
        ours = urlsplit(self.base_url)
        # msal builds this URL from the authority's host name and drops the port, so match by name.
        if split.scheme != "https" or (split.hostname or "").lower() != (ours.hostname or "").lower():
            raise OAuthError(400, "invalid_instance", 50049, "Unknown or invalid instance.")
        tenant = split.path.strip("/").split("/")[0] if split.path.strip("/") else "common"
        host = ours.netloc
        return Response.json(200, {
            "tenant_discovery_endpoint": f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    # -- v2.0 token endpoint -----------------------------------------------------------------------
    def token(self, request: Request) -> Response:
        tid = self._tenant(request.params["tenant"])
        form = self._form(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _missing_parameter("grant_type")
        if grant_type != "client_credentials":
            # This tenant's automation only ever signs in app-only.
            raise OAuthError(400, "unsupported_grant_type", 70003,
                             f"The app requested an unsupported grant type '{grant_type}'.")
        client_id = form.get("client_id", "").strip()
        if not client_id:
            raise _missing_parameter("client_id")
        scope = form.get("scope", "").strip()
        if not scope:
            raise _missing_parameter("scope")
        resource = self._resource_of_scope(scope)

        with self.world.lock:
            app = self.world.directory.app_by_app_id(client_id)
            if app is None or not self.world.is_visible(app["id"]):
                raise OAuthError(400, "unauthorized_client", 700016,
                                 f"Application with identifier '{client_id}' was not found in the directory "
                                 f"'{tid}'. This can happen if the application has not been installed by the "
                                 "administrator of the tenant or consented to by any user in the tenant. You "
                                 "may have sent your authentication request to the wrong tenant.")
            key_credentials = [dict(k) for k in app.get("keyCredentials") or []]
            federated = [dict(f) for f in self.world.directory.federated_credentials.get(app["id"], [])
                         if self.world.is_visible(f["id"])]
        self._authenticate(request, form, client_id, tid, key_credentials, federated)

        with self.world.lock:
            sp = self.world.directory.sp_by_app_id(client_id)
            if sp is None or not self.world.is_visible(sp["id"]):
                raise OAuthError(401, "invalid_client", 7000229,
                                 f"The client application {client_id} is missing service principal in the "
                                 f"tenant {tid}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119")
            if sp.get("accountEnabled") is False:
                raise OAuthError(400, "unauthorized_client", 7000112,
                                 f"Application '{client_id}'({sp.get('displayName', '')}) is disabled.")
            resource_sp = self._resource_sp(resource)
            if resource_sp is None:
                raise self._resource_not_found(resource)
            roles, wids = self._claims_for(sp["id"], resource_sp)
            object_id = sp["id"]
        token, expires_on = self.world.issuer.issue(audience=resource, object_id=object_id, app_id=client_id,
                                                    roles=roles, wids=wids)
        expires_in = max(0, expires_on - int(time.time()))
        return Response.json(200, {"token_type": "Bearer", "expires_in": expires_in,
                                   "ext_expires_in": expires_in, "access_token": token},
                             {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _form(self, request: Request) -> dict[str, str]:
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            # Entra reads only form bodies: anything else looks like a request without parameters.
            return {}
        try:
            parsed = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return {}
        return {k: v[0] for k, v in parsed.items()}

    def _resource_of_scope(self, scope: str) -> str:
        scopes = scope.split()
        for item in scopes:
            if not item.endswith("/.default"):
                raise OAuthError(400, "invalid_scope", 1002012,
                                 f"The provided value for scope {item} is not valid. Client credential flows "
                                 "must have a scope value with /.default suffixed to the resource identifier "
                                 "(application ID URI).")
        resources = {_normalise_resource(item) for item in scopes}
        if len(resources) > 1:
            raise OAuthError(400, "invalid_scope", 700022,
                             "The provided value for the input parameter scope is not valid because it "
                             f"contains more than one resource. Scope {scope} is not valid.")
        return scopes[0][: -len("/.default")]

    # -- client authentication ---------------------------------------------------------------------
    def _authenticate(self, request: Request, form: dict[str, str], client_id: str, tid: str,
                      key_credentials: list[dict[str, Any]], federated: list[dict[str, Any]]) -> None:
        if form.get("client_secret"):
            # Apps in this tenant carry certificates only, so no secret can ever match.
            raise OAuthError(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent in the request is "
                             f"the client secret value, not the client secret ID, for a secret added to app "
                             f"'{client_id}'.")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or "
                             "'client_secret'.")
        assertion_type = form.get("client_assertion_type")
        if assertion_type != CLIENT_ASSERTION_TYPE:
            # unverified code; the refusal itself is certain (RFC 7521 allows only this type here)
            raise OAuthError(400, "invalid_request", 90014,
                             "The required field 'client_assertion_type' is missing or not "
                             f"'{CLIENT_ASSERTION_TYPE}'.")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.") from exc
        algorithm = header.get("alg")
        if algorithm not in SIGNING_ALGORITHMS:
            raise OAuthError(401, "invalid_client", 50027,
                             f"JWT token is invalid or malformed. The signing algorithm '{algorithm}' is not "
                             "supported for client assertions.")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.") from exc
        if unverified.get("iss") != client_id and "x5t" not in header and "x5t#S256" not in header:
            # Not signed with a certificate of the app: a workload's token, trusted only through a federated
            # identity credential whose issuer, subject and audience it matches exactly.
            self._authenticate_federated(assertion, algorithm, header, unverified, tid, federated)
            return

        thumbprint, key, certificate = self._find_key(header, key_credentials)
        portal_hint = (
            f"Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys "
            f"for app Id '{client_id}'. Review the documentation at https://docs.microsoft.com/en-us/graph/"
            "deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/"
            "graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as "
            f"'https://graph.microsoft.com/beta/applications/{client_id}'"
        )
        if key is None or certificate is None:
            raise _bad_signature("The key was not found.", thumbprint, portal_hint)
        start, end = _parse_time(key.get("startDateTime")), _parse_time(key.get("endDateTime"))
        found = f"Found key 'Start={_us_time(start)}, End={_us_time(end)}'"
        now = self.world.clock.now()
        if end is not None and now > end:
            raise _bad_signature("The key used is expired.", thumbprint, f"{found}, {portal_hint}")
        if start is not None and now < start:
            # unverified wording for a key whose window has not begun
            raise _bad_signature("The key is not yet valid.", thumbprint, f"{found}, {portal_hint}")
        try:
            claims = jwt.decode(assertion, certificate.public_key(), algorithms=[algorithm],
                                options={"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError as exc:
            raise _bad_signature("The provided signature value did not match the expected signature value.",
                                 thumbprint, f"{found}, {portal_hint}") from exc
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.") from exc

        self._check_times(claims)
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise OAuthError(401, "invalid_client", 700021,
                             "Client assertion application identifier doesn't match 'client_id' parameter. "
                             f"Review the documentation at {_DOCS_CERTS} .")
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        accepted = self._accepted_audiences(request, tid)
        if not any(isinstance(a, str) and a.rstrip("/").lower() in accepted for a in audiences):
            raise OAuthError(401, "invalid_client", 700023,
                             "Client assertion audience claim does not match Realm issuer. Review the "
                             f"documentation at {_DOCS_CERTS} .")

    def _authenticate_federated(self, assertion: str, algorithm: str, header: dict[str, Any],
                                claims: dict[str, Any], tid: str, federated: list[dict[str, Any]]) -> None:
        issuer, subject, audience = claims.get("iss"), claims.get("sub"), claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        # AADSTS70021 and its wording as Entra ID answers (quoted in Azure DevOps' workload identity
        # troubleshooting docs); the HTTP status is an unverified pick.
        no_match = OAuthError(400, "invalid_request", 70021,
                              "No matching federated identity record found for presented assertion. "
                              f"Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. "
                              f"Assertion Audience: '{','.join(str(a) for a in audiences)}'.")
        match = next((f for f in federated if f.get("issuer") == issuer and f.get("subject") == subject
                      and any(a in f.get("audiences", []) for a in audiences)), None)
        if match is None:
            raise no_match
        key: Any = None
        if issuer == self._v2_issuer(tid):
            key = self.world.issuer.public_key()  # this tenant's own tokens (a managed identity's)
        else:
            key = self.world.external_issuers.get(str(issuer), {}).get(str(header.get("kid")))
        if key is None:
            raise OAuthError(401, "invalid_client", 5002738,  # unverified pick
                             f"Unable to verify the assertion: no signing key '{header.get('kid')}' found at "
                             f"issuer '{issuer}'.")
        try:
            jwt.decode(assertion, key, algorithms=[algorithm], audience=match["audiences"], issuer=issuer,
                       options={"require": ["exp", "iss", "sub", "aud"]}, leeway=CLOCK_SKEW)
        except jwt.ExpiredSignatureError as exc:
            raise OAuthError(400, "invalid_request", 700024, "Client assertion is not within its valid time range."
                             ) from exc
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", 50027, f"JWT token is invalid or malformed ({exc}).") from exc

    def _find_key(self, header: dict[str, Any], key_credentials: list[dict[str, Any]]
                  ) -> tuple[str, dict[str, Any] | None, x509.Certificate | None]:
        """(thumbprint as Entra prints it, matching key credential, its certificate)."""
        sha1 = sha256 = None
        try:
            if isinstance(header.get("x5t"), str):
                sha1 = _b64url_decode(header["x5t"])
            if isinstance(header.get("x5t#S256"), str):
                sha256 = _b64url_decode(header["x5t#S256"])
        except (binascii.Error, ValueError):
            sha1 = sha256 = None
        printed = (sha1 or sha256 or b"").hex().upper()
        if sha1 is None and sha256 is None:
            return printed, None, None
        for key in key_credentials:
            if key.get("type") != "AsymmetricX509Cert" or key.get("usage") != "Verify" or not key.get("key"):
                continue
            if not self.world.is_visible(str(key.get("keyId"))):
                continue  # seen: a just-added credential fails for a while as if it did not exist
            try:
                der = base64.b64decode(key["key"])
                certificate = x509.load_der_x509_certificate(der)
            except (binascii.Error, ValueError):
                continue
            if (sha1 is not None and certificate.fingerprint(hashes.SHA1()) == sha1) or (
                    sha256 is not None and certificate.fingerprint(hashes.SHA256()) == sha256):
                return printed, key, certificate
        return printed, None, None

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")

        def refuse() -> OAuthError:
            current = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            return OAuthError(401, "invalid_client", 700024,
                              "Client assertion is not within its valid time range. Current time: "
                              f"{current}, assertion valid from {_epoch_iso(nbf or 0)}, expiry time of "
                              f"assertion {_epoch_iso(exp)}. Review the documentation at {_DOCS_CERTS} .")

        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise refuse()
        if exp < now - CLOCK_SKEW:
            raise refuse()
        if isinstance(nbf, (int, float)) and nbf > now + CLOCK_SKEW:
            raise refuse()
        # No cap on the assertion's lifetime: azure-identity signs 30-minute assertions and Entra
        # accepts them. The 10-minute limit in docs/reference.md is for addKey/removeKey proofs (Graph).

    def _accepted_audiences(self, request: Request, tid: str) -> set[str]:
        hosts = {self.base_url.rstrip("/")}
        host_header = request.header("host")
        if host_header:
            hosts.add(f"https://{host_header}")
        tenants = {tid, self.world.organization}
        paths = ("oauth2/v2.0/token", "oauth2/token")
        return {f"{h}/{t}/{p}".lower() for h in hosts for t in tenants for p in paths}

