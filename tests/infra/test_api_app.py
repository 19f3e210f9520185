"""Issue #11 (infra part): with requireAppRoles the deployment makes the API's app registration (or takes
an existing one's audience) and hands the app its accepted audiences; App Service Authentication is
not configured (docs/deploy.md, "Caller authentication")."""

from __future__ import annotations

from .bicep import INFRA, load_json, parse, resources
from .render import render

ROLES = {"ExoIdentities.Read", "ExoIdentities.ReadWrite"}


def test_by_default_no_registration_and_no_audience() -> None:
    deployment = render()
    assert "apiApp" not in deployment.modules
    assert not deployment.of_type("Microsoft.Graph/applications")
    settings = deployment.app_settings()
    assert settings["AUTH_REQUIRE_APP_ROLES"] == "false"
    assert settings["AUTH_AUDIENCE"] == ""


def test_require_app_roles_creates_the_api_registration_with_both_app_roles() -> None:
    deployment = render(requireAppRoles=True)
    app = deployment.one("Microsoft.Graph/applications").body
    assert app["signInAudience"] == "AzureADMyOrg"
    assert app["api"]["requestedAccessTokenVersion"] == 2
    assert {role["value"] for role in app["appRoles"]} == ROLES
    for role in app["appRoles"]:
        assert role["allowedMemberTypes"] == ["Application", "User"]
        assert role["isEnabled"] is True
        assert role["id"] is not None
    (uri,) = app["identifierUris"]
    assert uri.startswith("api://${tenantId}/")  # a form Entra accepts without a verified domain
    principal = deployment.one("Microsoft.Graph/servicePrincipals").body
    assert principal["appId"] == "api.appId"
    assert principal["appRoleAssignmentRequired"] is True  # no token for callers without a role
    settings = deployment.app_settings()
    assert settings["AUTH_REQUIRE_APP_ROLES"] == "true"
    assert settings["AUTH_AUDIENCE"] == "apiApp.outputs.audience"


def test_the_audience_names_the_client_id_and_the_identifier_uri() -> None:
    outputs = parse(INFRA / "modules" / "api-app.bicep")["outputs"]
    assert outputs["audience"]["value"] == "${api.appId},${identifierUri}"


def test_an_existing_registration_audience_is_used_as_given() -> None:
    audience = "11111111-2222-3333-4444-555555555555,api://contoso/exo"
    deployment = render(requireAppRoles=True, authAudience=audience)
    assert "apiApp" not in deployment.modules
    assert deployment.app_settings()["AUTH_AUDIENCE"] == audience


def test_app_service_authentication_is_not_configured() -> None:
    # Flex Consumption's support for it is not established: the app validates tokens itself.
    names = {r.body.get("name") for r in resources("Microsoft.Web/sites/config")}
    assert not {"authsettings", "authsettingsV2"} & names


def test_azd_environment_values_reach_the_auth_parameters() -> None:
    values = load_json(INFRA / "main.parameters.json")["parameters"]
    assert values["requireAppRoles"]["value"] == "${AUTH_REQUIRE_APP_ROLES=false}"
    assert values["authAudience"]["value"] == "${AUTH_AUDIENCE=}"
    assert "microsoftGraphV1" in parse(INFRA / "modules" / "api-app.bicep")["extensions"]
