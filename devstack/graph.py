"""Microsoft Graph v1.0 stand-in: applications, service principals, consent and directory roles.

The directory's only writer. It answers the subset of Graph the product uses, in Graph's wire
shapes, and refuses what Graph refuses (docs/reference.md): app-only permission checks from
the token's `roles`, key-credential rules, replication delay, OData `$filter`/`$select`/`$top`
paging and `$batch`. Error codes and messages were checked against Microsoft's docs and widely
reported responses; where nothing was findable the choice is marked "unverified".

The tenant's default app management policy (`GET /policies/defaultAppManagementPolicy`, needs
Policy.Read.All) is enforced on new key credentials (PATCH keyCredentials, addKey): an
`asymmetricKeyLifetime` restriction refuses a key whose endDateTime - startDateTime exceeds its
`maxLifetime`, for apps created after `restrictForAppsCreatedAfterDateTime`, with 400
`CredentialInvalidLifetimeAsPerAppPolicy` / detail `InvalidKeyEndDate` (the code and message are
widely reported for password credentials, e.g. OfficeDev/microsoft-365-agents-toolkit#10998;
that key credentials get the same answer is assumed, unverified). Per-app `appManagementPolicies`
are not modelled.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .tokens import bearer_token
from .web import HttpError, Request, Response, Service
from .world import AAD_GRAPH_APP_ID, World, iso

PREFIX = "/v1.0"
MAX_BATCH = 20
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 999
PROOF_MAX_LIFETIME = 600  # seconds, addKey/removeKey proof tokens
DISPLAY_NAME_MAX = 90  # keyCredential displayName

# App-only permissions (values of the token's `roles` claim) that allow each kind of call.
APP_READ = frozenset({"Application.Read.All", "Application.ReadWrite.OwnedBy", "Application.ReadWrite.All",
                      "Directory.Read.All", "Directory.ReadWrite.All"})
APP_WRITE_ALL = frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"})
APP_WRITE_OWNED = "Application.ReadWrite.OwnedBy"
# Granting consent needs AppRoleAssignment.ReadWrite.All *and* the right to read the service
# principals involved (403 with only the first: microsoftgraph/microsoft-graph-docs#12833).
CONSENT_WRITE = "AppRoleAssignment.ReadWrite.All"
CONSENT_READ = frozenset({"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All",
                          "Directory.ReadWrite.All"})
# appKeyCredentialRestrictionType members v1.0 returns without `Prefer: include-unknown-enum-members`.
V1_KEY_RESTRICTION_TYPES = frozenset({"asymmetricKeyLifetime", "unknownFutureValue"})
ROLE_READ = frozenset({"RoleManagement.Read.Directory", "RoleManagement.ReadWrite.Directory",
                       "RoleManagement.Read.All", "Directory.Read.All", "Directory.ReadWrite.All"})
ROLE_WRITE = frozenset({"RoleManagement.ReadWrite.Directory"})
# tenantAppManagementPolicy-get: least privileged Policy.Read.All (Microsoft Graph docs).
POLICY_READ = frozenset({"Policy.Read.All", "Policy.Read.ApplicationConfiguration",
                         "Policy.ReadWrite.ApplicationConfiguration"})
_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")

SIGN_IN_AUDIENCES = ("AzureADMyOrg", "AzureADMultipleOrgs", "AzureADandPersonalMicrosoftAccount",
                     "PersonalMicrosoftAccount")
MAX_RRA_RESOURCES = 50
MAX_RRA_PERMISSIONS = 400

WWW_AUTHENTICATE = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
                    'authorize", client_id="00000003-0000-0000-c000-000000000000"')

# Properties a client may not write; Graph answers "Property '<x>' is read-only and cannot be set."
APP_READ_ONLY = frozenset({"id", "appId", "createdDateTime", "deletedDateTime", "publisherDomain",
                           "disabledByMicrosoftStatus", "applicationTemplateId", "verifiedPublisher",
                           "certification"})
SP_READ_ONLY = frozenset({"id", "appId", "appOwnerOrganizationId", "servicePrincipalType", "appDisplayName",
                          "appDescription", "signInAudience", "createdDateTime", "deletedDateTime",
                          "applicationTemplateId", "verifiedPublisher", "info"})
COMPLEX_PROPS = frozenset({"web", "spa", "publicClient", "api", "info", "parentalControlSettings",
                           "optionalClaims", "samlSingleSignOnSettings"})


# Properties of the types that have no richer template below (for $select validation).
ASSIGNMENT_SHAPE: dict[str, Any] = dict.fromkeys((
    "id", "deletedDateTime", "appRoleId", "createdDateTime", "principalDisplayName", "principalId",
    "principalType", "resourceDisplayName", "resourceId"))
ROLE_DEFINITION_SHAPE: dict[str, Any] = dict.fromkeys((
    "id", "description", "displayName", "isBuiltIn", "isEnabled", "isPrivileged", "resourceScopes",
    "rolePermissions", "templateId", "version"))
ROLE_ASSIGNMENT_SHAPE: dict[str, Any] = dict.fromkeys((
    "id", "appScopeId", "condition", "directoryScopeId", "principalId", "roleDefinitionId"))


@dataclass(frozen=True)
class Caller:
    object_id: str
    app_id: str
    roles: frozenset[str]


# -- small helpers -----------------------------------------------------------------------------

def _bad(message: str, code: str = "Request_BadRequest", **kwargs: Any) -> HttpError:
    return HttpError(400, code, message, **kwargs)


def _not_found(object_id: str) -> HttpError:
    return HttpError(404, "Request_ResourceNotFound",
                     f"Resource '{object_id}' does not exist or one of its queried reference-property "
                     "objects are not present.")


def _forbidden() -> HttpError:
    return HttpError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _invalid_value(prop: str, resource: str) -> HttpError:
    return _bad(f"Invalid value specified for property '{prop}' of resource '{resource}'.")


def _strip_annotations(value: Any) -> Any:
    """Drop OData annotations (`@odata.type`, …) that the SDK writes into request bodies."""
    if isinstance(value, dict):
        return {k: _strip_annotations(v) for k, v in value.items() if not k.startswith("@odata.")}
    if isinstance(value, list):
        return [_strip_annotations(v) for v in value]
    return value


def _opaque_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode().rstrip("=")


def _is_guid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_DT_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|z|[+-]\d{2}:\d{2})?$")


def _parse_datetime(value: Any, prop: str, resource: str) -> tuple[dt.datetime, bool]:
    """A DateTimeOffset as UTC, and whether the client wrote it with a non-UTC offset."""
    match = _DT_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid_value(prop, resource)
    day, clock, fraction, zone = match.groups()
    micro = int((fraction or ".0")[1:7].ljust(6, "0"))
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}").replace(microsecond=micro)
    except ValueError as exc:
        raise _invalid_value(prop, resource) from exc
    if zone in (None, "Z", "z"):
        return moment.replace(tzinfo=dt.UTC), False
    sign = 1 if zone[0] == "+" else -1
    offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
    return (moment - offset).replace(tzinfo=dt.UTC), offset != dt.timedelta(0)


def _load_certificate(key: str) -> x509.Certificate | None:
    try:
        raw = base64.b64decode(key, validate=True)
    except (ValueError, TypeError):
        return None
    for loader in (x509.load_der_x509_certificate, x509.load_pem_x509_certificate):
        try:
            return loader(raw)
        except ValueError:
            continue
    return None


# -- OData $filter ---------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),:/])|(?P<word>[A-Za-z0-9_$][A-Za-z0-9_.\-]*))")

Predicate = Callable[[dict[str, Any]], bool]


def _as_text(value: Any) -> str:
    return str(value).lower()  # str(True) is "True": lower-casing also matches OData's true/false


class _FilterParser:
    """The `$filter` subset the directory answers by default: eq, in, startswith, any(eq), and/or.

    `fields` maps each filterable property to the operators it supports; anything else is
    Request_UnsupportedQuery, as Graph says for properties that are not indexed.
    """

    def __init__(self, text: str, fields: dict[str, set[str]], resource: str) -> None:
        self.resource = resource
        self.fields = {name.lower(): (name, ops) for name, ops in fields.items()}
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN_RE.match(text, pos)
            if match is None or match.end() == pos:
                raise self._syntax(f"unexpected character at position {pos}")
            kind = match.lastgroup or "word"
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.index = 0

    def _syntax(self, reason: str) -> HttpError:
        return HttpError(400, "BadRequest", f"Invalid filter clause: {reason}.")

    def _unsupported(self, prop: str) -> HttpError:
        return HttpError(400, "Request_UnsupportedQuery",
                         f"Unsupported or invalid query filter clause specified for property '{prop}' "
                         f"of resource '{self.resource}'.")

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise self._syntax("expression expected at the end of the clause")
        self.index += 1
        return token

    def _expect(self, kind: str, value: str | None = None) -> str:
        got_kind, got = self._next()
        if got_kind != kind or (value is not None and got.lower() != value):
            raise self._syntax(f"'{value or kind}' expected but found '{got}'")
        return got

    def _peek_word(self, word: str) -> bool:
        token = self._peek()
        return token is not None and token[0] == "word" and token[1].lower() == word

    def parse(self) -> Predicate:
        predicate = self._or()
        leftover = self._peek()
        if leftover is not None:
            raise self._syntax(f"unexpected '{leftover[1]}'")
        return predicate

    def _or(self) -> Predicate:
        left = self._and()
        while self._peek_word("or"):
            self.index += 1
            right = self._and()
            left = (lambda a, b: lambda o: a(o) or b(o))(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._primary()
        while self._peek_word("and"):
            self.index += 1
            right = self._primary()
            left = (lambda a, b: lambda o: a(o) and b(o))(left, right)
        return left

    def _literal(self) -> str | None:
        """A literal, lower-cased for the directory's case-insensitive comparisons; None for null."""
        kind, value = self._next()
        if kind == "str":
            return value[1:-1].replace("''", "'").lower()
        if kind == "word" and (_is_guid(value) or value.lower() in ("true", "false")):
            return value.lower()
        if kind == "word" and value.lower() == "null":
            return None
        raise self._syntax(f"literal expected but found '{value}'")

    def _text(self) -> str:
        literal = self._literal()
        if literal is None:
            raise self._syntax("a string literal is required here")
        return literal

    def _field(self, name: str, op: str) -> str:
        entry = self.fields.get(name.lower())
        if entry is None or op not in entry[1]:
            raise self._unsupported(name)
        return entry[0]

    def _primary(self) -> Predicate:
        kind, word = self._next()
        if kind == "punct" and word == "(":
            inner = self._or()
            self._expect("punct", ")")
            return inner
        if kind != "word":
            raise self._syntax(f"property expected but found '{word}'")
        if word.lower() == "not":
            raise self._unsupported(word)
        token = self._peek()
        if token == ("punct", "("):  # function call: startswith(prop,'x')
            self.index += 1
            prop = self._expect("word")
            self._expect("punct", ",")
            literal = self._text()
            self._expect("punct", ")")
            if word.lower() != "startswith":
                raise self._unsupported(prop)
            name = self._field(prop, "startswith")
            return lambda o: isinstance(o.get(name), str) and o[name].lower().startswith(literal)
        if token == ("punct", "/"):  # lambda: tags/any(t:t eq 'x')
            self.index += 1
            self._expect("word", "any")
            self._expect("punct", "(")
            var = self._expect("word")
            self._expect("punct", ":")
            if self._expect("word").lower() != var.lower():
                raise self._syntax("lambda variable expected")
            operator = self._expect("word").lower()
            literal = self._text()
            self._expect("punct", ")")
            if operator != "eq":
                raise self._unsupported(word)
            name = self._field(word, "any")
            return lambda o: any(str(v).lower() == literal for v in o.get(name) or [])
        operator = self._expect("word").lower()
        if operator == "eq":
            value = self._literal()
            name = self._field(word, "eq")
            if value is None:
                return lambda o: o.get(name) is None
            return lambda o: o.get(name) is not None and _as_text(o[name]) == value
        if operator == "in":
            self._expect("punct", "(")
            values = {self._text()}
            while self._peek() == ("punct", ","):
                self.index += 1
                values.add(self._text())
            self._expect("punct", ")")
            name = self._field(word, "eq")
            return lambda o: o.get(name) is not None and _as_text(o[name]) in values
        if operator in ("ne", "gt", "ge", "lt", "le"):
            raise self._unsupported(word)
        raise self._syntax(f"operator expected but found '{operator}'")


# -- the service ---------------------------------------------------------------------------------

def parse_duration(value: Any) -> dt.timedelta | None:
    """An Edm.Duration (`P90D`, `P4DT12H30M5S`); None when absent or not one."""
    match = _DURATION.match(value) if isinstance(value, str) and value not in ("P", "PT") else None
    if match is None:
        return None
    return dt.timedelta(days=int(match["d"] or 0), hours=int(match["h"] or 0), minutes=int(match["m"] or 0),
                        seconds=float(match["s"] or 0))


class GraphService(Service):
    name = "graph"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        r = self.route
        p = PREFIX
        r("POST", f"{p}/$batch", self.batch)
        r("GET", f"{p}/applications/$count", self.count_applications)
        r("GET", f"{p}/applications", self.list_applications)
        r("POST", f"{p}/applications", self.create_application)
        alt_app = r"^/v1\.0/applications\((?P<alt>uniqueName|appId)='(?P<key>(?:[^']|'')*)'\)$"
        r("GET", alt_app, self.get_application)
        r("PATCH", alt_app, self.update_application)
        r("DELETE", alt_app, self.delete_application)
        r("GET", f"{p}/applications/{{id}}", self.get_application)
        r("PATCH", f"{p}/applications/{{id}}", self.update_application)
        r("DELETE", f"{p}/applications/{{id}}", self.delete_application)
        r("GET", f"{p}/applications/{{id}}/owners", self.list_owners)
        r("POST", f"{p}/applications/{{id}}/owners/$ref", self.add_owner)
        r("DELETE", f"{p}/applications/{{id}}/owners/{{owner}}/$ref", self.remove_owner)
        r("POST", f"{p}/applications/{{id}}/addKey", self.add_key)
        fic = f"{p}/applications/{{id}}/federatedIdentityCredentials"
        r("GET", fic, self.list_federated_credentials)
        r("POST", fic, self.create_federated_credential)
        r("GET", f"{fic}/{{fid}}", self.get_federated_credential)
        r("DELETE", f"{fic}/{{fid}}", self.delete_federated_credential)
        r("POST", f"{p}/applications/{{id}}/removeKey", self.remove_key)
        r("GET", f"{p}/servicePrincipals/$count", self.count_service_principals)
        r("GET", f"{p}/servicePrincipals", self.list_service_principals)
        r("POST", f"{p}/servicePrincipals", self.create_service_principal)
        alt_sp = r"^/v1\.0/servicePrincipals\((?P<alt>appId)='(?P<key>(?:[^']|'')*)'\)$"
        r("GET", alt_sp, self.get_service_principal)
        r("PATCH", alt_sp, self.update_service_principal)
        r("DELETE", alt_sp, self.delete_service_principal)
        r("GET", f"{p}/servicePrincipals/{{id}}", self.get_service_principal)
        r("PATCH", f"{p}/servicePrincipals/{{id}}", self.update_service_principal)
        r("DELETE", f"{p}/servicePrincipals/{{id}}", self.delete_service_principal)
        r("GET", f"{p}/servicePrincipals/{{id}}/ownedObjects", self.list_owned_objects)
        r("GET", f"{p}/servicePrincipals/{{id}}/ownedObjects/microsoft.graph.application", self.list_owned_applications)
        r("GET", f"{p}/servicePrincipals/{{id}}/appRoleAssignedTo", self.list_assigned_to)
        r("POST", f"{p}/servicePrincipals/{{id}}/appRoleAssignedTo", self.create_assigned_to)
        r("GET", f"{p}/servicePrincipals/{{id}}/appRoleAssignedTo/{{aid}}", self.get_assigned_to)
        r("DELETE", f"{p}/servicePrincipals/{{id}}/appRoleAssignedTo/{{aid}}", self.delete_assigned_to)
        r("GET", f"{p}/servicePrincipals/{{id}}/appRoleAssignments", self.list_assignments)
        r("POST", f"{p}/servicePrincipals/{{id}}/appRoleAssignments", self.create_assignment)
        r("GET", f"{p}/servicePrincipals/{{id}}/appRoleAssignments/{{aid}}", self.get_assignment)
        r("DELETE", f"{p}/servicePrincipals/{{id}}/appRoleAssignments/{{aid}}", self.delete_assignment)
        r("GET", f"{p}/policies/defaultAppManagementPolicy", self.get_default_app_management_policy)
        rm = f"{p}/roleManagement/directory"
        r("GET", f"{rm}/roleDefinitions", self.list_role_definitions)
        r("GET", f"{rm}/roleDefinitions/{{id}}", self.get_role_definition)
        r("GET", f"{rm}/roleAssignments", self.list_role_assignments)
        r("POST", f"{rm}/roleAssignments", self.create_role_assignment)
        r("GET", f"{rm}/roleAssignments/{{id}}", self.get_role_assignment)
        r("DELETE", f"{rm}/roleAssignments/{{id}}", self.delete_role_assignment)
        # Request counters report routes by template; name the alternate-key regexes readably.
        for route in self.routes:
            if route.template == alt_app:
                route.template = f"{p}/applications({{alt}}='{{key}}')"
            elif route.template == alt_sp:
                route.template = f"{p}/servicePrincipals(appId='{{key}}')"

    # -- wire: dispatch, authentication, errors ---------------------------------------------------
    def dispatch(self, request: Request) -> tuple[str, Response]:
        request_id = str(uuid.uuid4())
        request.context["request-id"] = request_id
        route, response = self._handle(request)
        response.headers.setdefault("request-id", request_id)
        response.headers.setdefault("client-request-id", request.header("client-request-id") or request_id)
        return route, response

    def _handle(self, request: Request) -> tuple[str, Response]:
        """Authenticate, route and run one request (also each inner request of a $batch)."""
        request.context.setdefault("request-id", str(uuid.uuid4()))
        matched = None
        path_matched = False
        for candidate in self.routes:
            match = candidate.pattern.match(request.path)
            if not match:
                continue
            path_matched = True
            if candidate.method == request.method:
                matched = candidate, match
                break
        try:
            request.context["caller"] = self._authenticate(request)
            if matched is None:
                if path_matched:
                    raise HttpError(405, "Request_BadRequest",
                                    "Specified HTTP method is not allowed for the request target.")
                segment = request.path.rsplit("/", 1)[-1]
                raise _bad(f"Resource not found for the segment '{segment}'.", code="BadRequest")
            route, match = matched
            # Paths arrive decoded already; decoding the captured values again would corrupt '%'.
            request.params = {k: v for k, v in match.groupdict().items() if v is not None}
            self._throttle_key_credential_reads(request, route.handler)
            if route.handler == self.batch:
                # Each inner request takes the lock itself; an injected latency must not stall the world.
                return route.template, route.handler(request)
            with self.world.lock:
                return route.template, route.handler(request)
        except HttpError as error:
            return (matched[0].template if matched else "(unrouted)"), self.error_response(error, request)

    def _throttle_key_credential_reads(self, request: Request, handler: Callable[[Request], Response]) -> None:
        """429 for a read of applications' keyCredentials with $select over the tenant's limit
        (docs/reference.md "Throttling"; devstack/throttle.py)."""
        if request.method != "GET" or handler not in (self.list_applications, self.get_application,
                                                      self.list_owned_applications, self.list_owned_objects):
            return
        selected = {item.strip().lower() for item in (self._option(request, "select") or "").split(",")}
        if "keycredentials" not in selected:
            return
        throttle = self.world.key_credential_reads
        retry_after = throttle.take(self._caller(request).object_id)
        if retry_after is not None:
            # Code and status as Graph throttles (doc); the message is the stand-in's (unverified).
            raise HttpError(429, "TooManyRequests",
                            f"Too many requests: reading keyCredentials with $select is limited to {throttle.limit} "
                            f"requests per {throttle.window:g} seconds for this tenant. Retry after "
                            f"{retry_after} seconds.", headers={"Retry-After": str(retry_after)})

    def _authenticate(self, request: Request) -> Caller:
        token = bearer_token(request)
        if token is None:
            raise HttpError(401, "InvalidAuthenticationToken", "Access token is empty.",
                            headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        try:
            claims = self.world.issuer.verify(token, self.world.resources.get("graph", []))
        except jwt.InvalidAudienceError as exc:
            raise HttpError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.",
                            headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from exc
        except jwt.ExpiredSignatureError as exc:
            raise HttpError(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.",
                            headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from exc
        except jwt.PyJWTError as exc:
            raise HttpError(401, "InvalidAuthenticationToken", "Access token validation failure.",
                            headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from exc
        return Caller(str(claims["oid"]), str(claims.get("appid") or claims.get("azp") or ""),
                      frozenset(claims.get("roles") or []))

    def error_response(self, error: HttpError, request: Request) -> Response:
        request_id = request.context.get("request-id") or str(uuid.uuid4())
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.details:
            body["details"] = error.details
        body["innerError"] = {
            "date": self.world.clock.now().strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": request.header("client-request-id") or request_id,
        }
        return Response.json(error.status, {"error": body}, error.headers)

    # -- permissions -------------------------------------------------------------------------------
    @staticmethod
    def _caller(request: Request) -> Caller:
        caller: Caller = request.context["caller"]
        return caller

    def _require_any(self, request: Request, allowed: frozenset[str]) -> Caller:
        caller = self._caller(request)
        if not caller.roles & allowed:
            raise _forbidden()
        return caller

    def _require_app_writer(self, request: Request) -> Caller:
        caller = self._caller(request)
        if not (caller.roles & APP_WRITE_ALL or APP_WRITE_OWNED in caller.roles):
            raise _forbidden()
        return caller

    def _owns(self, caller: Caller, object_id: str) -> bool:
        return caller.object_id in self.world.directory.owners.get(object_id, [])

    def _check_app_write(self, caller: Caller, app: dict[str, Any]) -> None:
        if caller.roles & APP_WRITE_ALL:
            return
        if APP_WRITE_OWNED in caller.roles and self._owns(caller, app["id"]):
            return
        raise _forbidden()

    def _check_sp_write(self, caller: Caller, sp: dict[str, Any]) -> None:
        if caller.roles & APP_WRITE_ALL:
            return
        if APP_WRITE_OWNED in caller.roles:
            app = self.world.directory.app_by_app_id(sp["appId"])
            if self._owns(caller, sp["id"]) or (app is not None and self._owns(caller, app["id"])):
                return
        raise _forbidden()

    def _check_consent(self, request: Request) -> None:
        caller = self._caller(request)
        if CONSENT_WRITE not in caller.roles or not caller.roles & CONSENT_READ:
            raise _forbidden()

    # -- lookups (invisible = not yet replicated = not there) ---------------------------------------
    def _visible(self, obj: dict[str, Any] | None) -> dict[str, Any] | None:
        if obj is None or not self.world.is_visible(obj["id"]):
            return None
        return obj

    def _app_from_path(self, request: Request, *, include_hidden: bool = False) -> dict[str, Any] | None:
        d = self.world.directory
        if "alt" in request.params:
            key = request.params["key"].replace("''", "'")
            prop = request.params["alt"]
            found = next((a for a in d.applications.values()
                          if (a.get(prop) or "").lower() == key.lower()), None)
        else:
            found = d.applications.get(self._object_id(request.params["id"]))
        return found if include_hidden else self._visible(found)

    @staticmethod
    def _object_id(value: str) -> str:
        if not _is_guid(value):
            raise _bad(f"Invalid object identifier '{value}'.")
        return value.lower()

    def _require_app(self, request: Request) -> dict[str, Any]:
        app = self._app_from_path(request)
        if app is None:
            raise _not_found(request.params.get("id") or request.params.get("key", ""))
        return app

    def _sp_from_path(self, request: Request) -> dict[str, Any]:
        d = self.world.directory
        if "alt" in request.params:
            key = request.params["key"].replace("''", "'")
            sp = next((s for s in d.service_principals.values() if s["appId"].lower() == key.lower()), None)
        else:
            sp = d.service_principals.get(self._object_id(request.params["id"]))
        sp = self._visible(sp)
        if sp is None:
            raise _not_found(request.params.get("id") or request.params.get("key", ""))
        return sp

    # -- OData query options ----------------------------------------------------------------------
    @staticmethod
    def _option(request: Request, name: str) -> str | None:
        # Graph v1.0 accepts system query options with or without the "$".
        value = request.query.get(f"${name}")
        return value if value is not None else request.query.get(name)

    def _select(self, request: Request, sample: dict[str, Any], type_name: str) -> list[str] | None:
        raw = self._option(request, "select")
        if raw is None or not raw.strip():
            return None
        known = {k.lower(): k for k in sample}
        chosen = []
        for item in raw.split(","):
            name = item.strip()
            if name.lower() not in known:
                raise _bad(f"Parsing OData Select and Expand failed: Could not find a property named '{name}' "
                           f"on type 'microsoft.graph.{type_name}'.")
            chosen.append(known[name.lower()])
        return chosen

    def _context(self, request: Request, entity_set: str, select: list[str] | None, single: bool) -> str:
        suffix = f"({','.join(select)})" if select else ""
        return f"{self.base_url}{PREFIX}/$metadata#{entity_set}{suffix}{'/$entity' if single else ''}"

    @staticmethod
    def _render(obj: dict[str, Any], select: list[str] | None, *, reveal_keys: bool = False) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        # `key` is returned only for one object with $select=keyCredentials; null everywhere else.
        for credential in out.get("keyCredentials") or []:
            if not reveal_keys:
                credential["key"] = None
        if select is not None:
            out = {k: out.get(k) for k in select}
        return out

    def _single(self, request: Request, obj: dict[str, Any], entity_set: str, type_name: str,
                status: int = 200) -> Response:
        shapes = {"application": self._new_application_shape, "servicePrincipal": self._sp_shape}
        shape = shapes[type_name]() if type_name in shapes else {
            "appRoleAssignment": ASSIGNMENT_SHAPE, "unifiedRoleDefinition": ROLE_DEFINITION_SHAPE,
            "unifiedRoleAssignment": ROLE_ASSIGNMENT_SHAPE}.get(type_name, {})
        select = self._select(request, {**shape, **obj}, type_name)
        reveal = select is not None and "keyCredentials" in select
        body = {"@odata.context": self._context(request, entity_set, select, True)}
        body.update(self._render(obj, select, reveal_keys=reveal))
        return Response.json(status, body)

    def _collection(self, request: Request, items: list[dict[str, Any]], entity_set: str, type_name: str,
                    fields: dict[str, set[str]], sample: dict[str, Any]) -> Response:
        for unsupported in ("orderby", "search", "expand", "skip"):
            if self._option(request, unsupported) is not None:
                raise HttpError(400, "Request_UnsupportedQuery",
                                f"The query option '${unsupported}' is not supported by this stand-in.")
        raw_filter = self._option(request, "filter")
        if raw_filter:
            predicate = _FilterParser(raw_filter, fields, type_name[0].upper() + type_name[1:]).parse()
            items = [i for i in items if predicate(i)]
        # `sample` lists the type's properties, so $select is checked even when no item matched.
        select = self._select(request, sample, type_name)
        raw_top = self._option(request, "top")
        top = DEFAULT_PAGE_SIZE
        if raw_top is not None:
            try:
                top = int(raw_top)
            except ValueError:
                top = -1
            if not 1 <= top <= MAX_PAGE_SIZE:
                raise HttpError(400, "Request_UnsupportedQuery",
                                f"Invalid page size specified: '{raw_top}'. Must be between 1 and 999 inclusive.")
        # Keyset paging by id: a page boundary stays put when objects are added or removed meanwhile.
        items = sorted(items, key=lambda i: i["id"])
        total = len(items)
        token = self._option(request, "skiptoken")
        if token:
            after = self._decode_skiptoken(token)
            items = [i for i in items if i["id"] > after]
        page = items[:top]
        body: dict[str, Any] = {"@odata.context": self._context(request, entity_set, select, False)}
        # Counting needs the advanced-query header; without it Graph silently ignores $count=true.
        count = (self._option(request, "count") or "").lower() == "true"
        if count and (request.header("consistencylevel") or "").lower() == "eventual":
            body["@odata.count"] = total
        if len(items) > top:
            body["@odata.nextLink"] = self._next_link(request, page[-1]["id"])
        body["value"] = [self._render(i, select) for i in page]
        return Response.json(200, body)

    @staticmethod
    def _decode_skiptoken(token: str) -> str:
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
            return str(data["after"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad("The specified page token value is invalid.") from exc

    def _next_link(self, request: Request, last_id: str) -> str:
        token = base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")
        query = {k: v for k, v in request.query.items() if k.lstrip("$").lower() != "skiptoken"}
        query["$skiptoken"] = token
        encoded = urlencode(query, quote_via=quote, safe="$,'()/:")
        return f"{self.base_url}{quote(request.path, safe='/$()=,:')}?{encoded}"

    def _count(self, request: Request, items: list[dict[str, Any]]) -> Response:
        if (request.header("consistencylevel") or "").lower() != "eventual":
            raise _bad("$count is not currently supported.")
        return Response(200, str(len(items)).encode(), {"Content-Type": "text/plain"})

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError as exc:
            raise HttpError(400, "BadRequest", "Unable to read JSON request payload.") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "BadRequest", "Unable to read JSON request payload.")
        return dict(_strip_annotations(body))

    # -- applications ------------------------------------------------------------------------------
    APP_FILTER = {"appId": {"eq"}, "id": {"eq"}, "displayName": {"eq", "startswith"},
                  "uniqueName": {"eq"}, "tags": {"any"}, "identifierUris": {"any"},
                  "signInAudience": {"eq"}, "publisherDomain": {"eq", "startswith"}}

    def _visible_apps(self) -> list[dict[str, Any]]:
        return [a for a in self.world.directory.applications.values() if self.world.is_visible(a["id"])]

    def list_applications(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._collection(request, self._visible_apps(), "applications", "application", self.APP_FILTER,
                                sample=self._new_application_shape())

    def count_applications(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._count(request, self._visible_apps())

    def get_application(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._single(request, self._require_app(request), "applications", "application")

    def _new_application_shape(self) -> dict[str, Any]:
        return {
            "id": "", "deletedDateTime": None, "appId": "", "applicationTemplateId": None,
            "disabledByMicrosoftStatus": None, "createdDateTime": None, "displayName": None,
            "description": None, "groupMembershipClaims": None, "identifierUris": [],
            "isDeviceOnlyAuthSupported": None, "isFallbackPublicClient": None, "notes": None,
            "publisherDomain": self.world.organization, "serviceManagementReference": None,
            "signInAudience": "AzureADandPersonalMicrosoftAccount", "tags": [], "tokenEncryptionKeyId": None,
            "uniqueName": None, "defaultRedirectUri": None, "certification": None, "optionalClaims": None,
            "addIns": [],
            "api": {"acceptMappedClaims": None, "knownClientApplications": [], "requestedAccessTokenVersion": None,
                    "oauth2PermissionScopes": [], "preAuthorizedApplications": []},
            "appRoles": [],
            "info": {"logoUrl": None, "marketingUrl": None, "privacyStatementUrl": None, "supportUrl": None,
                     "termsOfServiceUrl": None},
            "keyCredentials": [],
            "parentalControlSettings": {"countriesBlockedForMinors": [], "legalAgeGroupRule": "Allow"},
            "passwordCredentials": [],
            "publicClient": {"redirectUris": []},
            "requiredResourceAccess": [],
            "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
            "web": {"homePageUrl": None, "logoutUrl": None, "redirectUris": [],
                    "implicitGrantSettings": {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": False}},
            "spa": {"redirectUris": []},
        }

    def create_application(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        app = self._create_app(caller, self._body(request))
        return self._single(request, app, "applications", "application", status=201)

    def _create_app(self, caller: Caller, body: dict[str, Any], unique_name: str | None = None, *,
                    caller_becomes_owner: bool = True) -> dict[str, Any]:
        if unique_name is not None:
            if body.get("uniqueName") not in (None, unique_name):
                raise _invalid_value("uniqueName", "Application")
            body = {**body, "uniqueName": unique_name}
        if not isinstance(body.get("displayName"), str) or not body["displayName"].strip():
            raise _invalid_value("displayName", "Application")
        if body.get("passwordCredentials"):
            raise _bad("New password credentials must be generated using service actions.")
        app = self._new_application_shape()
        app["id"] = str(uuid.uuid4())
        app["appId"] = str(uuid.uuid4())
        app["createdDateTime"] = iso(self.world.clock.now())
        new_keys = self._apply_app_changes(app, body)
        d = self.world.directory
        d.applications[app["id"]] = app
        # App-only creation with POST makes the calling service principal an owner (seen), which is
        # what lets an Application.ReadWrite.OwnedBy caller manage the app afterwards. Whether an
        # upsert (PATCH + create-if-missing) does the same is not documented (docs/reference.md): the
        # stand-in gives such an app no owner, so nothing can come to rely on it.
        d.owners[app["id"]] = [caller.object_id] if caller_becomes_owner else []
        self.world.mark_created(app["id"])
        for key_id in new_keys:
            self.world.mark_key_created(key_id)
        return app

    def update_application(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        body = self._body(request)
        upsert = "create-if-missing" in [p.strip().lower() for p in (request.header("prefer") or "").split(",")]
        if request.params.get("alt") == "uniqueName":
            # The alternate key is unique at write time, replicated or not: two concurrent upserts
            # must not create two applications.
            app = self._app_from_path(request, include_hidden=upsert)
            if app is None:
                if not upsert:
                    raise _not_found(request.params["key"])
                created = self._create_app(caller, body, unique_name=request.params["key"].replace("''", "'"),
                                           caller_becomes_owner=False)
                return self._single(request, created, "applications", "application", status=201)
        else:
            app = self._require_app(request)
        if app is None:
            raise _not_found(request.params.get("id") or request.params.get("key", ""))
        self._check_app_write(caller, app)
        updated = copy.deepcopy(app)
        new_keys = self._apply_app_changes(updated, body)
        app.clear()
        app.update(updated)
        for key_id in new_keys:
            self.world.mark_key_created(key_id)
        return Response.empty(204)

    def _apply_app_changes(self, app: dict[str, Any], body: dict[str, Any]) -> list[str]:
        """Validate `body` and write it into `app` (a copy); returns the keyIds that are new."""
        shape = self._new_application_shape()
        new_keys: list[str] = []
        for prop in body:
            if prop in APP_READ_ONLY:
                raise _bad(f"Property '{prop}' is read-only and cannot be set.")
            if prop not in shape:
                raise _bad(f"Property '{prop}' does not exist on type 'microsoft.graph.application'.")
        for prop, value in body.items():
            if prop == "displayName":
                if not isinstance(value, str) or not value.strip():
                    raise _invalid_value("displayName", "Application")
                app["displayName"] = value
            elif prop == "uniqueName":
                self._set_unique_name(app, value)
            elif prop == "signInAudience":
                if value not in SIGN_IN_AUDIENCES:
                    raise _invalid_value("signInAudience", "Application")
                app[prop] = value
            elif prop in ("tags", "identifierUris"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _invalid_value(prop, "Application")
                if prop == "identifierUris":
                    self._check_identifier_uris(app, value)
                app[prop] = list(value)
            elif prop == "requiredResourceAccess":
                app[prop] = self._validate_rra(value)
            elif prop == "keyCredentials":
                app[prop], new_keys = self._validate_key_credentials(value, app["keyCredentials"], "Application",
                                                                     app)
            elif prop == "passwordCredentials":
                if value:
                    raise _bad("New password credentials must be generated using service actions.")
                app[prop] = []
            elif prop in COMPLEX_PROPS:
                if value is not None and not isinstance(value, dict):
                    raise _invalid_value(prop, "Application")
                current = app.get(prop)
                # A complex value merges into the current one: unset members keep their values.
                app[prop] = {**current, **value} if isinstance(current, dict) and value is not None else value
            else:
                app[prop] = copy.deepcopy(value)
        return new_keys

    def _set_unique_name(self, app: dict[str, Any], value: Any) -> None:
        if value is None:
            if app.get("uniqueName") is not None:
                raise _bad("Property 'uniqueName' is read-only and cannot be set.")
            return
        if not isinstance(value, str) or not value.strip():
            raise _invalid_value("uniqueName", "Application")
        if app.get("uniqueName") is not None:
            if app["uniqueName"] != value:
                raise _bad("Property 'uniqueName' is read-only and cannot be set.")
            return
        for other in self.world.directory.applications.values():
            if other["id"] != app["id"] and (other.get("uniqueName") or "").lower() == value.lower():
                # Unverified: modelled on Graph's answer for a duplicate identifierUris value.
                message = "Another object with the same value for property uniqueName already exists."
                raise _bad(message, details=[{"code": "ObjectConflict", "message": message,
                                              "target": "uniqueName"}])
        app["uniqueName"] = value

    def _check_identifier_uris(self, app: dict[str, Any], uris: list[str]) -> None:
        wanted = {u.lower() for u in uris}
        for other in self.world.directory.applications.values():
            if other["id"] != app["id"] and wanted & {u.lower() for u in other.get("identifierUris") or []}:
                message = "Another object with the same value for property identifierUris already exists."
                raise _bad(message, details=[{"code": "ObjectConflict", "message": message,
                                              "target": "identifierUris"}])

    @staticmethod
    def _validate_rra(value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise _invalid_value("requiredResourceAccess", "Application")
        total = 0
        result = []
        for entry in value:
            if not isinstance(entry, dict) or not _is_guid(entry.get("resourceAppId")):
                raise _invalid_value("requiredResourceAccess", "Application")
            access = entry.get("resourceAccess") or []
            if not isinstance(access, list):
                raise _invalid_value("requiredResourceAccess", "Application")
            for item in access:
                if not isinstance(item, dict) or not _is_guid(item.get("id")) \
                        or item.get("type") not in ("Role", "Scope"):
                    raise _invalid_value("requiredResourceAccess", "Application")
            total += len(access)
            result.append({"resourceAppId": entry["resourceAppId"],
                           "resourceAccess": [{"id": i["id"], "type": i["type"]} for i in access]})
        # Documented limits: 50 resource APIs and 400 permissions in total per application.
        if len(result) > MAX_RRA_RESOURCES or total > MAX_RRA_PERMISSIONS:
            raise _bad("The requiredResourceAccess collection exceeds the maximum of 50 resources or "
                       "400 permissions in total.")
        return result

    def _validate_key_credentials(self, value: Any, existing: list[dict[str, Any]], resource: str,
                                  app: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The new collection (it replaces the old one wholesale) and the keyIds added by it.

        One bad entry fails the whole PATCH, as Graph does (seen).
        """
        if not isinstance(value, list):
            raise _invalid_value("keyCredentials", resource)
        existing_by_id = {k["keyId"].lower(): k for k in existing}
        result: list[dict[str, Any]] = []
        added: list[str] = []
        seen: set[str] = set()
        for entry in value:
            stored = self._key_credential(entry, resource)
            key_id = stored["keyId"].lower()
            if key_id in seen:
                raise _bad(f"Duplicate keyId '{stored['keyId']}' in keyCredentials.")
            seen.add(key_id)
            previous = existing_by_id.get(key_id)
            if previous is None:
                self._check_key_lifetime(app, stored)
                added.append(stored["keyId"])
            elif previous.get("key") != stored["key"]:
                raise _bad(f"Update to existing credential with KeyId '{stored['keyId']}' is not allowed.")
            result.append(stored)
        return result, added

    def _key_credential(self, entry: Any, resource: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise _invalid_value("keyCredentials", resource)
        key = entry.get("key")
        certificate = _load_certificate(key) if isinstance(key, str) and key else None
        if certificate is None:
            # A missing or empty `key` gets this code (seen: an empty certificate export).
            raise _bad("Key credential value is invalid.", code="KeyCredentialsInvalidValue",
                       details=[{"code": "InvalidKeyValue", "message": "Key credential value is invalid.",
                                 "target": "keyCredentials.key"}])
        if entry.get("type") != "AsymmetricX509Cert":
            raise _bad('The value for the property "type" in one of your credentials is invalid. '
                       "Acceptable values are AsymmetricX509Cert, X509CertAndPassword.")
        usages = ("Verify",) if resource == "Application" else ("Verify", "Sign")
        if entry.get("usage") not in usages:
            raise _bad('The value for the property "usage" in one of your credentials is invalid. '
                       "Acceptable values are Sign, Verify.")
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        start, end, non_utc = not_before, not_after, False
        if entry.get("startDateTime") is not None:
            start, _ = _parse_datetime(entry["startDateTime"], "startDateTime", resource)
        if entry.get("endDateTime") is not None:
            end, non_utc = _parse_datetime(entry["endDateTime"], "endDateTime", resource)
        now = self.world.clock.now()
        if end > not_after or end <= now or end < start or non_utc:
            message = "Key credential end date is invalid."
            raise _bad(message, code="KeyCredentialsInvalidEndDate",
                       details=[{"code": "InvalidKeyEndDate", "message": message,
                                 "target": "keyCredentials.endDateTime"}])
        key_id = entry.get("keyId") or str(uuid.uuid4())
        if not _is_guid(key_id):
            raise _invalid_value("keyId", resource)
        thumbprint = certificate.fingerprint(hashes.SHA1())  # X.509 thumbprints are SHA-1 by definition
        display_name = entry.get("displayName") or certificate.subject.rfc4514_string()
        return {
            "customKeyIdentifier": entry.get("customKeyIdentifier") or base64.b64encode(thumbprint).decode(),
            "displayName": str(display_name)[:DISPLAY_NAME_MAX],
            "endDateTime": iso(end),
            "key": base64.b64encode(certificate.public_bytes(Encoding.DER)).decode(),
            "keyId": str(uuid.UUID(key_id)),
            "startDateTime": iso(start),
            "type": "AsymmetricX509Cert",
            "usage": entry["usage"],
        }

    def _check_key_lifetime(self, app: dict[str, Any] | None, stored: dict[str, Any]) -> None:
        """Refuse a new key credential longer than the tenant policy's asymmetricKeyLifetime allows."""
        if app is None:
            return
        policy = self.world.directory.app_management_policy
        if not policy.get("isEnabled"):
            return
        created = _parse_datetime(app["createdDateTime"], "createdDateTime", "Application")[0] \
            if app.get("createdDateTime") else self.world.clock.now()
        for restriction in (policy.get("applicationRestrictions") or {}).get("keyCredentials") or []:
            if restriction.get("restrictionType") != "asymmetricKeyLifetime" \
                    or (restriction.get("state") or "enabled") != "enabled":
                continue
            after = restriction.get("restrictForAppsCreatedAfterDateTime")
            if after and created < _parse_datetime(after, "restrictForAppsCreatedAfterDateTime", "policy")[0]:
                continue
            limit = parse_duration(restriction.get("maxLifetime"))
            start = _parse_datetime(stored["startDateTime"], "startDateTime", "Application")[0]
            end = _parse_datetime(stored["endDateTime"], "endDateTime", "Application")[0]
            if limit is not None and end - start > limit:
                message = f"Credential lifetime exceeds the max value allowed as per assigned policy '{policy['id']}'."
                raise _bad(message, code="CredentialInvalidLifetimeAsPerAppPolicy",
                           details=[{"code": "InvalidKeyEndDate", "message": message, "target": "EndDate"}])

    # -- policies ------------------------------------------------------------------------------------
    def get_default_app_management_policy(self, request: Request) -> Response:
        self._require_any(request, POLICY_READ)
        body = {"@odata.context": f"{self.base_url}{PREFIX}/$metadata#policies/defaultAppManagementPolicy/$entity",
                **copy.deepcopy(self.world.directory.app_management_policy)}
        # restrictionType is an evolvable enum: members newer than v1.0's (trustedCertificateAuthority)
        # come back as unknownFutureValue unless the caller opts in (doc: Graph "evolvable enums").
        if "include-unknown-enum-members" not in (request.header("Prefer") or "").lower():
            for restriction in body["applicationRestrictions"].get("keyCredentials") or []:
                if restriction.get("restrictionType") not in V1_KEY_RESTRICTION_TYPES:
                    restriction["restrictionType"] = "unknownFutureValue"
        return Response.json(200, body)

    def delete_application(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        app = self._require_app(request)
        self._check_app_write(caller, app)
        d = self.world.directory
        del d.applications[app["id"]]
        d.owners.pop(app["id"], None)
        d.federated_credentials.pop(app["id"], None)
        # Deleting an app registration also deletes its service principal in the home tenant.
        sp = d.sp_by_app_id(app["appId"])
        if sp is not None:
            self._remove_sp(sp)
        return Response.empty(204)

    # -- federated identity credentials ------------------------------------------------------------------
    # Graph docs (federatedidentitycredential resource, application-post-federatedidentitycredentials):
    # name 3-120 characters, unique per app and immutable; issuer and subject required (at most 600
    # characters), matched exactly by Entra ID at sign-in; audiences exactly one value; at most 20 per
    # app. Reading needs Application.Read.All (or an owner's OwnedBy); writing needs
    # Application.ReadWrite.OwnedBy on an owned app or Application.ReadWrite.All. Error codes and
    # messages for the refusals are unverified picks.
    FIC_SHAPE: dict[str, Any] = dict.fromkeys(("id", "name", "issuer", "subject", "audiences", "description"))
    MAX_FEDERATED = 20

    def _fics(self, app: dict[str, Any]) -> list[dict[str, Any]]:
        return self.world.directory.federated_credentials.setdefault(app["id"], [])

    def list_federated_credentials(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        app = self._require_app(request)
        items = [f for f in self._fics(app) if self.world.is_visible(f["id"])]
        fields = {"name": {"eq", "startswith"}, "issuer": {"eq"}, "subject": {"eq"}}
        return self._collection(request, items, f"applications('{app['id']}')/federatedIdentityCredentials",
                                "federatedIdentityCredential", fields, dict(self.FIC_SHAPE))

    def _find_fic(self, request: Request, app: dict[str, Any]) -> dict[str, Any]:
        key = request.params["fid"]
        found = next((f for f in self._fics(app) if key in (f["id"], f["name"])), None)
        if found is None or not self.world.is_visible(found["id"]):
            raise _not_found(key)
        return found

    def get_federated_credential(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        app = self._require_app(request)
        return self._single(request, self._find_fic(request, app),
                            f"applications('{app['id']}')/federatedIdentityCredentials", "federatedIdentityCredential")

    def create_federated_credential(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        app = self._require_app(request)
        self._check_app_write(caller, app)
        body = self._body(request)
        resource = "FederatedIdentityCredential"
        for prop in body:
            if prop not in self.FIC_SHAPE or prop == "id":
                raise _bad(f"Property '{prop}' does not exist on type 'microsoft.graph.federatedIdentityCredential'.")
        name, issuer, subject, audiences = (body.get(k) for k in ("name", "issuer", "subject", "audiences"))
        if not isinstance(name, str) or not 3 <= len(name) <= 120 or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise _invalid_value("name", resource)
        for prop, value in (("issuer", issuer), ("subject", subject)):
            if not isinstance(value, str) or not value or len(value) > 600:
                raise _invalid_value(prop, resource)
        if not isinstance(audiences, list) or len(audiences) != 1 or not isinstance(audiences[0], str) \
                or not audiences[0] or len(audiences[0]) > 600:
            raise _bad("Invalid value specified for property 'audiences' of resource 'FederatedIdentityCredential'. "
                       "Exactly one audience is supported.")
        existing = self._fics(app)
        if any(f["name"].lower() == name.lower() for f in existing):
            raise HttpError(409, "Request_MultipleObjectsWithSameKeyValue",  # unverified pick
                            f"FederatedIdentityCredential with name {name} already exists.")
        if any(f["issuer"] == issuer and f["subject"] == subject for f in existing):
            raise _bad(f"FederatedIdentityCredential with same issuer '{issuer}' and subject '{subject}' "
                       "already exists.")  # unverified wording
        if len(existing) >= self.MAX_FEDERATED:
            raise _bad(f"The number of FederatedIdentityCredentials for the application has reached the limit of "
                       f"{self.MAX_FEDERATED}.")  # unverified wording
        credential = {"id": str(uuid.uuid4()), "name": name, "issuer": issuer, "subject": subject,
                      "audiences": list(audiences), "description": body.get("description")}
        existing.append(credential)
        self.world.mark_created(credential["id"])
        return self._single(request, credential, f"applications('{app['id']}')/federatedIdentityCredentials",
                            "federatedIdentityCredential", status=201)

    def delete_federated_credential(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        app = self._require_app(request)
        self._check_app_write(caller, app)
        found = self._find_fic(request, app)
        self._fics(app).remove(found)
        return Response.empty(204)

    # -- owners --------------------------------------------------------------------------------------
    def list_owners(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        app = self._require_app(request)
        d = self.world.directory
        owners = []
        for owner_id in d.owners.get(app["id"], []):
            sp = self._visible(d.service_principals.get(owner_id))
            if sp is not None:
                owners.append({"@odata.type": "#microsoft.graph.servicePrincipal", **sp})
        return self._collection(request, owners, "directoryObjects", "directoryObject",
                                {"id": {"eq"}, "appId": {"eq"}, "displayName": {"eq", "startswith"}},
                                sample={"@odata.type": None, **self._sp_shape()})

    # -- ownedObjects of a service principal (doc: serviceprincipal-list-ownedobjects) ---------------
    def _owned_by(self, request: Request) -> list[dict[str, Any]]:
        self._require_any(request, APP_READ)
        principal = self._sp_from_path(request)
        d = self.world.directory
        return [app for app in self._visible_apps() if principal["id"] in d.owners.get(app["id"], [])]

    def list_owned_objects(self, request: Request) -> Response:
        owned = [{"@odata.type": "#microsoft.graph.application", **a} for a in self._owned_by(request)]
        return self._collection(request, owned, "directoryObjects", "directoryObject", {"id": {"eq"}},
                                sample={"@odata.type": None, **self._new_application_shape()})

    def list_owned_applications(self, request: Request) -> Response:
        # The type-cast segment narrows the collection to applications, with their properties.
        return self._collection(request, self._owned_by(request), "applications", "application", self.APP_FILTER,
                                sample=self._new_application_shape())

    def add_owner(self, request: Request) -> Response:
        # Adding another owner takes Application.ReadWrite.All; OwnedBy is not enough (docs/reference.md).
        self._require_any(request, APP_WRITE_ALL)
        app = self._require_app(request)
        self._body(request)  # validates the payload
        # The reference is itself an annotation, which _body strips: read it from the raw payload.
        ref = json.loads(request.body).get("@odata.id")
        if not isinstance(ref, str) or not ref.rstrip("/"):
            raise _invalid_value("@odata.id", "Application")
        owner_id = ref.rstrip("/").rsplit("/", 1)[-1]
        if self._visible(self.world.directory.service_principals.get(owner_id)) is None:
            raise _not_found(owner_id)
        owners = self.world.directory.owners.setdefault(app["id"], [])
        if owner_id in owners:
            raise _bad("One or more added object references already exist for the following modified "
                       "properties: 'owners'.")
        owners.append(owner_id)
        return Response.empty(204)

    def remove_owner(self, request: Request) -> Response:
        self._require_any(request, APP_WRITE_ALL)
        app = self._require_app(request)
        owners = self.world.directory.owners.get(app["id"], [])
        if request.params["owner"] not in owners:
            raise _not_found(request.params["owner"])
        owners.remove(request.params["owner"])
        return Response.empty(204)

    # -- addKey / removeKey ------------------------------------------------------------------------
    def _check_key_roll(self, request: Request, app: dict[str, Any], proof: Any) -> None:
        caller = self._caller(request)
        # "An application does not need any specific permission to roll its own keys."
        if caller.app_id.lower() != app["appId"].lower():
            self._check_app_write(caller, app)
        if not isinstance(proof, str) or not proof:
            raise _invalid_value("proof", "Application")
        now = self.world.clock.now()
        for credential in app["keyCredentials"]:
            start, _ = _parse_datetime(credential["startDateTime"], "startDateTime", "Application")
            end, _ = _parse_datetime(credential["endDateTime"], "endDateTime", "Application")
            if not start <= now < end:
                continue
            certificate = _load_certificate(credential["key"])
            if certificate is None:
                continue
            try:
                claims = jwt.decode(proof, certificate.public_key(), algorithms=["RS256", "PS256"],
                                    audience=AAD_GRAPH_APP_ID, issuer=app["id"],
                                    options={"require": ["aud", "iss", "nbf", "exp"]})
            except jwt.PyJWTError:
                continue
            if int(claims["exp"]) - int(claims["nbf"]) > PROOF_MAX_LIFETIME:
                break
            return
        # Unverified message; the documented rules are what is enforced.
        raise _bad("The proof of possession token is invalid: it must be signed by one of the application's "
                   "currently valid certificates, with aud 00000002-0000-0000-c000-000000000000, iss the "
                   "application's object id and a lifetime of at most 10 minutes.")

    def add_key(self, request: Request) -> Response:
        app = self._require_app(request)
        body = self._body(request)
        self._check_key_roll(request, app, body.get("proof"))
        if body.get("passwordCredential"):
            raise _bad("X509CertAndPassword key credentials are not supported by this stand-in.")
        credential = body.get("keyCredential")
        if not isinstance(credential, dict):
            raise _invalid_value("keyCredential", "Application")
        credential = {k: v for k, v in credential.items() if k != "keyId"}
        stored = self._key_credential(credential, "Application")
        self._check_key_lifetime(app, stored)
        app["keyCredentials"].append(stored)
        self.world.mark_key_created(stored["keyId"])
        body_out = {"@odata.context": f"{self.base_url}{PREFIX}/$metadata#microsoft.graph.keyCredential",
                    **stored, "key": None}
        return Response.json(200, body_out)

    def remove_key(self, request: Request) -> Response:
        app = self._require_app(request)
        body = self._body(request)
        self._check_key_roll(request, app, body.get("proof"))
        key_id = str(body.get("keyId") or "").lower()
        remaining = [k for k in app["keyCredentials"] if k["keyId"].lower() != key_id]
        if len(remaining) == len(app["keyCredentials"]):
            raise _not_found(str(body.get("keyId")))
        app["keyCredentials"] = remaining
        return Response.empty(204)

    # -- service principals ------------------------------------------------------------------------
    SP_FILTER = {"appId": {"eq"}, "id": {"eq"}, "displayName": {"eq", "startswith"}, "tags": {"any"},
                 "servicePrincipalNames": {"any"}, "servicePrincipalType": {"eq"}, "accountEnabled": {"eq"}}

    def _visible_sps(self) -> list[dict[str, Any]]:
        shape = self._sp_shape()
        return [{**shape, **s} for s in self.world.directory.service_principals.values()
                if self.world.is_visible(s["id"])]

    def list_service_principals(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._collection(request, self._visible_sps(), "servicePrincipals", "servicePrincipal",
                                self.SP_FILTER, sample=self._sp_shape())

    def count_service_principals(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._count(request, self._visible_sps())

    def get_service_principal(self, request: Request) -> Response:
        self._require_any(request, APP_READ)
        return self._single(request, {**self._sp_shape(), **self._sp_from_path(request)}, "servicePrincipals",
                            "servicePrincipal")

    def _sp_shape(self) -> dict[str, Any]:
        return {
            "id": "", "deletedDateTime": None, "accountEnabled": True, "alternativeNames": [],
            "appDisplayName": None, "appDescription": None, "appId": "", "applicationTemplateId": None,
            "appOwnerOrganizationId": self.world.tenant_id, "appRoleAssignmentRequired": False,
            "createdDateTime": None, "description": None, "disabledByMicrosoftStatus": None, "displayName": None,
            "homepage": None, "loginUrl": None, "logoutUrl": None, "notes": None, "notificationEmailAddresses": [],
            "preferredSingleSignOnMode": None, "preferredTokenSigningKeyThumbprint": None, "replyUrls": [],
            "servicePrincipalNames": [], "servicePrincipalType": "Application", "signInAudience": None,
            "tags": [], "tokenEncryptionKeyId": None, "samlSingleSignOnSettings": None, "addIns": [],
            "appRoles": [], "info": None, "keyCredentials": [], "oauth2PermissionScopes": [],
            "passwordCredentials": [], "resourceSpecificApplicationPermissions": [], "verifiedPublisher": None,
        }

    def create_service_principal(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        body = self._body(request)
        app_id = body.get("appId")
        if not isinstance(app_id, str) or not app_id:
            raise _invalid_value("appId", "ServicePrincipal")
        d = self.world.directory
        app = self._visible(d.app_by_app_id(app_id))
        if app is None and d.app_by_app_id(app_id) is not None and self.world.sp_replication_status(
                not caller.roles & APP_WRITE_ALL) == 403:
            # A just-created application not replicated yet, to a caller writing with OwnedBy (seen:
            # docs/reference.md "Service principals"; the real message's grammar kept).
            raise HttpError(403, "Authorization_RequestDenied",
                            "When using this permission, the backing application of the service principal being "
                            "created must in the local tenant")
        if app is None:
            # Also what a just-created, not yet replicated application looks like (seen).
            message = f"The appId '{app_id}' of the service principal does not reference a valid application object."
            raise _bad(message, details=[{"code": "NoBackingApplicationObject", "message": message,
                                          "target": "appId"}])
        if d.sp_by_app_id(app_id) is not None:
            message = (f"The service principal cannot be created, updated, or restored because the service "
                       f"principal name {app_id} is already in use.")
            raise HttpError(409, "Request_MultipleObjectsWithSameKeyValue", message,
                            details=[{"code": "ObjectConflict", "message": message, "target": "None"}])
        self._check_app_write(caller, app)
        sp = self._sp_shape()
        sp.update({
            "id": str(uuid.uuid4()), "appId": app_id, "displayName": app["displayName"],
            "appDisplayName": app["displayName"], "appDescription": app.get("description"),
            "appOwnerOrganizationId": self.world.tenant_id, "servicePrincipalNames": [app_id],
            "signInAudience": app["signInAudience"], "tags": list(app.get("tags") or []),
            "appRoles": copy.deepcopy(app.get("appRoles") or []), "info": copy.deepcopy(app.get("info")),
            "createdDateTime": iso(self.world.clock.now()),
        })
        extra = {k: v for k, v in body.items() if k != "appId"}
        new_keys = self._apply_sp_changes(sp, extra)
        d.service_principals[sp["id"]] = sp
        d.owners[sp["id"]] = [caller.object_id]
        self.world.mark_created(sp["id"])
        for key_id in new_keys:
            self.world.mark_key_created(key_id)
        return self._single(request, sp, "servicePrincipals", "servicePrincipal", status=201)

    def _apply_sp_changes(self, sp: dict[str, Any], body: dict[str, Any]) -> list[str]:
        shape = self._sp_shape()
        new_keys: list[str] = []
        for prop in body:
            if prop in SP_READ_ONLY:
                raise _bad(f"Property '{prop}' is read-only and cannot be set.")
            if prop not in shape:
                raise _bad(f"Property '{prop}' does not exist on type 'microsoft.graph.servicePrincipal'.")
        for prop, value in body.items():
            if prop == "keyCredentials":
                current = sp.get("keyCredentials") or []
                sp[prop], new_keys = self._validate_key_credentials(value, current, "ServicePrincipal")
            elif prop == "passwordCredentials":
                if value:
                    raise _bad("New password credentials must be generated using service actions.")
                sp[prop] = []
            elif prop in ("tags", "notificationEmailAddresses", "replyUrls", "alternativeNames"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _invalid_value(prop, "ServicePrincipal")
                sp[prop] = list(value)
            elif prop in ("accountEnabled", "appRoleAssignmentRequired"):
                if not isinstance(value, bool):
                    raise _invalid_value(prop, "ServicePrincipal")
                sp[prop] = value
            elif prop == "displayName":
                if not isinstance(value, str) or not value.strip():
                    raise _invalid_value(prop, "ServicePrincipal")
                sp[prop] = value
            else:
                sp[prop] = copy.deepcopy(value)
        return new_keys

    def update_service_principal(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        sp = self._sp_from_path(request)
        self._check_sp_write(caller, sp)
        updated = copy.deepcopy(sp)
        new_keys = self._apply_sp_changes(updated, self._body(request))
        sp.clear()
        sp.update(updated)
        for key_id in new_keys:
            self.world.mark_key_created(key_id)
        return Response.empty(204)

    def delete_service_principal(self, request: Request) -> Response:
        caller = self._require_app_writer(request)
        sp = self._sp_from_path(request)
        self._check_sp_write(caller, sp)
        self._remove_sp(sp)
        return Response.empty(204)

    def _remove_sp(self, sp: dict[str, Any]) -> None:
        """Remove a service principal with the assignments that hang off it."""
        d = self.world.directory
        d.service_principals.pop(sp["id"], None)
        d.owners.pop(sp["id"], None)
        for key in [k for k, a in d.app_role_assignments.items() if sp["id"] in (a["principalId"], a["resourceId"])]:
            del d.app_role_assignments[key]
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == sp["id"]]:
            del d.role_assignments[key]
        for owners in d.owners.values():
            if sp["id"] in owners:
                owners.remove(sp["id"])

    # -- app role assignments (admin consent for application permissions) -------------------------------
    ASSIGNMENT_FILTER = {"principalId": {"eq"}, "resourceId": {"eq"}, "appRoleId": {"eq"}, "id": {"eq"}}

    def _assignments_of(self, key: str, sp_id: str) -> list[dict[str, Any]]:
        return [a for a in self.world.directory.app_role_assignments.values()
                if a[key] == sp_id and self.world.is_visible(a["id"])]

    def list_assigned_to(self, request: Request) -> Response:
        self._require_any(request, CONSENT_READ | {APP_WRITE_OWNED})
        sp = self._sp_from_path(request)
        return self._collection(request, self._assignments_of("resourceId", sp["id"]),
                                f"servicePrincipals('{sp['id']}')/appRoleAssignedTo", "appRoleAssignment",
                                self.ASSIGNMENT_FILTER, sample=ASSIGNMENT_SHAPE)

    def list_assignments(self, request: Request) -> Response:
        self._require_any(request, CONSENT_READ | {APP_WRITE_OWNED})
        sp = self._sp_from_path(request)
        return self._collection(request, self._assignments_of("principalId", sp["id"]),
                                f"servicePrincipals('{sp['id']}')/appRoleAssignments", "appRoleAssignment",
                                self.ASSIGNMENT_FILTER, sample=ASSIGNMENT_SHAPE)

    def _find_assignment(self, request: Request, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
        sp = self._sp_from_path(request)
        assignment = self._visible(self.world.directory.app_role_assignments.get(request.params["aid"]))
        if assignment is None or assignment[key] != sp["id"]:
            raise _not_found(request.params["aid"])
        return sp, assignment

    def get_assigned_to(self, request: Request) -> Response:
        self._require_any(request, CONSENT_READ | {APP_WRITE_OWNED})
        sp, assignment = self._find_assignment(request, "resourceId")
        return self._single(request, assignment, f"servicePrincipals('{sp['id']}')/appRoleAssignedTo",
                            "appRoleAssignment")

    def get_assignment(self, request: Request) -> Response:
        self._require_any(request, CONSENT_READ | {APP_WRITE_OWNED})
        sp, assignment = self._find_assignment(request, "principalId")
        return self._single(request, assignment, f"servicePrincipals('{sp['id']}')/appRoleAssignments",
                            "appRoleAssignment")

    def create_assigned_to(self, request: Request) -> Response:
        self._check_consent(request)
        resource = self._sp_from_path(request)
        return self._create_assignment(request, resource, "appRoleAssignedTo", path_side="resourceId")

    def create_assignment(self, request: Request) -> Response:
        self._check_consent(request)
        principal = self._sp_from_path(request)
        return self._create_assignment(request, principal, "appRoleAssignments", path_side="principalId")

    def _create_assignment(self, request: Request, path_sp: dict[str, Any], segment: str,
                           path_side: str) -> Response:
        body = self._body(request)
        for prop in ("principalId", "resourceId", "appRoleId"):
            if not _is_guid(body.get(prop)):
                raise _invalid_value(prop, "AppRoleAssignment")
        d = self.world.directory
        if body[path_side].lower() != path_sp["id"].lower():
            raise _bad("Not a valid reference update.")
        principal = self._visible(d.service_principals.get(body["principalId"].lower()))
        resource = self._visible(d.service_principals.get(body["resourceId"].lower()))
        # A principal that does not exist, or has not replicated yet, is refused this way (seen).
        if principal is None or resource is None:
            raise _bad("Not a valid reference update.")
        role_id = body["appRoleId"].lower()
        roles = {r["id"].lower(): r for r in resource.get("appRoles") or []}
        role = roles.get(role_id)
        if role_id != str(uuid.UUID(int=0)) and (
                role is None or not role.get("isEnabled", True)
                or "Application" not in role.get("allowedMemberTypes", ["Application"])):
            raise _bad(f"Permission being assigned was not found on application '{resource['appId']}'.")
        for existing in d.app_role_assignments.values():
            if (existing["principalId"], existing["resourceId"], existing["appRoleId"].lower()) == \
                    (principal["id"], resource["id"], role_id):
                raise _bad("Permission being assigned already exists on the object.")
        assignment = {
            "id": _opaque_id(), "deletedDateTime": None, "appRoleId": role["id"] if role else role_id,
            "createdDateTime": iso(self.world.clock.now()), "principalDisplayName": principal["displayName"],
            "principalId": principal["id"], "principalType": "ServicePrincipal",
            "resourceDisplayName": resource["displayName"], "resourceId": resource["id"],
        }
        d.app_role_assignments[assignment["id"]] = assignment
        self.world.mark_created(assignment["id"])
        return self._single(request, assignment, f"servicePrincipals('{path_sp['id']}')/{segment}",
                            "appRoleAssignment", status=201)

    def delete_assigned_to(self, request: Request) -> Response:
        self._check_consent(request)
        _, assignment = self._find_assignment(request, "resourceId")
        del self.world.directory.app_role_assignments[assignment["id"]]
        return Response.empty(204)

    def delete_assignment(self, request: Request) -> Response:
        self._check_consent(request)
        _, assignment = self._find_assignment(request, "principalId")
        del self.world.directory.app_role_assignments[assignment["id"]]
        return Response.empty(204)

    # -- directory roles -----------------------------------------------------------------------------
    ROLE_DEFINITION_FILTER = {"id": {"eq"}, "templateId": {"eq"}, "displayName": {"eq", "startswith"},
                              "isBuiltIn": {"eq"}}
    ROLE_ASSIGNMENT_FILTER = {"id": {"eq"}, "principalId": {"eq"}, "roleDefinitionId": {"eq"},
                              "directoryScopeId": {"eq"}}

    @staticmethod
    def _role_definition_out(definition: dict[str, Any]) -> dict[str, Any]:
        return {"description": definition["displayName"], "resourceScopes": ["/"], "rolePermissions": [],
                "version": "1", **definition}

    def _role_definition(self, definition_id: str) -> dict[str, Any] | None:
        definitions = self.world.directory.role_definitions
        found = definitions.get(definition_id) or definitions.get(definition_id.lower())
        if found is None:
            found = next((r for r in definitions.values() if r["templateId"].lower() == definition_id.lower()), None)
        return found

    def list_role_definitions(self, request: Request) -> Response:
        self._require_any(request, ROLE_READ)
        items = [self._role_definition_out(r) for r in self.world.directory.role_definitions.values()]
        return self._collection(request, items, "roleManagement/directory/roleDefinitions", "unifiedRoleDefinition",
                                self.ROLE_DEFINITION_FILTER, sample=ROLE_DEFINITION_SHAPE)

    def get_role_definition(self, request: Request) -> Response:
        self._require_any(request, ROLE_READ)
        found = self._role_definition(request.params["id"])
        if found is None:
            raise _not_found(request.params["id"])
        return self._single(request, self._role_definition_out(found), "roleManagement/directory/roleDefinitions",
                            "unifiedRoleDefinition")

    def list_role_assignments(self, request: Request) -> Response:
        self._require_any(request, ROLE_READ)
        items = [a for a in self.world.directory.role_assignments.values() if self.world.is_visible(a["id"])]
        return self._collection(request, items, "roleManagement/directory/roleAssignments", "unifiedRoleAssignment",
                                self.ROLE_ASSIGNMENT_FILTER, sample=ROLE_ASSIGNMENT_SHAPE)

    def get_role_assignment(self, request: Request) -> Response:
        self._require_any(request, ROLE_READ)
        found = self._visible(self.world.directory.role_assignments.get(request.params["id"]))
        if found is None:
            raise _not_found(request.params["id"])
        return self._single(request, found, "roleManagement/directory/roleAssignments", "unifiedRoleAssignment")

    def create_role_assignment(self, request: Request) -> Response:
        self._require_any(request, ROLE_WRITE)
        body = self._body(request)
        for prop in ("roleDefinitionId", "principalId"):
            if not isinstance(body.get(prop), str) or not body[prop]:
                raise _invalid_value(prop, "unifiedRoleAssignment")
        scope = body.get("directoryScopeId")
        if not isinstance(scope, str) or not scope.startswith("/"):
            raise _invalid_value("directoryScopeId", "unifiedRoleAssignment")
        definition = self._role_definition(body["roleDefinitionId"])
        if definition is None:
            raise _not_found(body["roleDefinitionId"])  # unverified
        d = self.world.directory
        principal = self._visible(d.service_principals.get(body["principalId"].lower()))
        if principal is None:
            # Right after the service principal is created this is what callers see (seen).
            raise _not_found(body["principalId"])
        for existing in d.role_assignments.values():
            if (existing["principalId"], existing["roleDefinitionId"], existing["directoryScopeId"]) == \
                    (principal["id"], definition["id"], scope):
                raise _bad("A conflicting object with one or more of the specified property values is present "
                           "in the directory.")
        # Graph's ids for tenant-wide assignments are the two GUIDs' bytes, base64url, plus "-1".
        raw = uuid.UUID(definition["id"]).bytes_le + uuid.UUID(principal["id"]).bytes_le
        assignment_id = base64.urlsafe_b64encode(raw).decode().rstrip("=") + ("-1" if scope == "/" else
                                                                              f"-{_opaque_id()[:8]}")
        assignment = {"id": assignment_id, "principalId": principal["id"], "roleDefinitionId": definition["id"],
                      "directoryScopeId": scope, "appScopeId": None}
        d.role_assignments[assignment_id] = assignment
        self.world.mark_created(assignment_id)
        return self._single(request, assignment, "roleManagement/directory/roleAssignments",
                            "unifiedRoleAssignment", status=201)

    def delete_role_assignment(self, request: Request) -> Response:
        self._require_any(request, ROLE_WRITE)
        found = self._visible(self.world.directory.role_assignments.get(request.params["id"]))
        if found is None:
            raise _not_found(request.params["id"])
        del self.world.directory.role_assignments[found["id"]]
        return Response.empty(204)

    # -- $batch ------------------------------------------------------------------------------------------
    def batch(self, request: Request) -> Response:
        body = self._body(request)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise HttpError(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > MAX_BATCH:
            raise HttpError(400, "BadRequest", f"The number of requests in a batch ({len(items)}) exceeds the "
                                               f"limit of {MAX_BATCH}.")
        ids: list[str] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"] \
                    or not isinstance(item.get("method"), str) or not isinstance(item.get("url"), str):
                raise HttpError(400, "BadRequest", "Each batch request needs an id, a method and a url.")
            if item["id"] in ids:
                raise HttpError(400, "BadRequest", f"Batch request contains duplicate request id '{item['id']}'.")
            depends = item.get("dependsOn") or []
            if not isinstance(depends, list) or any(dep not in ids for dep in depends):
                raise HttpError(400, "BadRequest", f"Request '{item['id']}' depends on a request that does not "
                                                   "precede it in the batch.")
            ids.append(item["id"])
        statuses: dict[str, int] = {}
        responses = []
        for item in items:
            if any(statuses[dep] >= 400 for dep in item.get("dependsOn") or []):
                status, headers, payload = 424, {"Content-Type": "application/json"}, {
                    "error": {"code": "FailedDependency", "message": "Dependent request failed."}}
            else:
                status, headers, payload = self._run_inner(request, item)
            statuses[item["id"]] = status
            entry: dict[str, Any] = {"id": item["id"], "status": status, "headers": headers}
            if payload is not None:
                entry["body"] = payload
            responses.append(entry)
        return Response.json(200, {"responses": responses})

    def _run_inner(self, outer: Request, item: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        url = item["url"].strip()
        if "://" in url:
            return self._inner_error(outer, 400, "BadRequest", "Batch request URLs must be relative.")
        split = urlsplit(url)
        relative = split.path.lstrip("/")
        if relative.startswith(("v1.0/", "beta/")):
            relative = relative.split("/", 1)[1]
        path = f"{PREFIX}/{relative}"
        headers = {k.lower(): v for k, v in outer.headers.items()
                   if k.lower() in ("authorization", "client-request-id", "consistencylevel")}
        inner_headers = item.get("headers") or {}
        if isinstance(inner_headers, dict):
            headers.update({str(k).lower(): str(v) for k, v in inner_headers.items()})
        payload = item.get("body")
        if isinstance(payload, dict | list):
            data = json.dumps(payload).encode()
        elif isinstance(payload, str):
            try:
                data = base64.b64decode(payload, validate=True)
            except ValueError:
                return self._inner_error(outer, 400, "BadRequest", "The request body is neither JSON nor base64.")
        else:
            data = b""
        inner = Request(method=item["method"].upper(), path=unquote(path),
                        raw_path=f"{path}?{split.query}" if split.query else path,
                        query={k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                        headers=headers, body=data, base_url=self.base_url)
        # Each inner request is throttled and counted on its own, as Graph does.
        fault = self.world.faults.take(self.name, inner.method, inner.path)
        if fault is not None and fault.latency:
            time.sleep(fault.latency)
        if fault is not None and (fault.status is not None or fault.drop):
            status = fault.status or 503
            extra = {}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(int(fault.retry_after)) if float(fault.retry_after).is_integer() \
                    else str(fault.retry_after)
            code = fault.code or {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "InjectedFault")
            response = self.error_response(HttpError(status, code, "Injected fault.", headers=extra), inner)
            route = "(fault)"
        else:
            route, response = self._handle(inner)
        self.world.counter.record(self.name, inner.method, route)
        out_headers = {k: v for k, v in response.headers.items() if k.lower() in
                       ("content-type", "retry-after", "location", "odata-version")}
        if not response.body:
            return response.status, out_headers, None
        content_type = response.headers.get("Content-Type", "")
        if "json" in content_type:
            return response.status, out_headers, json.loads(response.body)
        return response.status, out_headers, base64.b64encode(response.body).decode()

    def _inner_error(self, outer: Request, status: int, code: str, message: str) -> tuple[int, dict[str, str], Any]:
        response = self.error_response(HttpError(status, code, message), outer)
        return status, {"Content-Type": "application/json"}, json.loads(response.body)
