"""The Exchange Online stand-in, with tokens minted by the real CertificateCredential."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import requests
from azure.identity import CertificateCredential, ManagedIdentityCredential

from devstack import Stack

from .entra_helpers import EXCHANGE_RECIPIENT_ADMINISTRATOR, USER_ADMINISTRATOR, JobApp, exchange_ready_app

SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
GET_MAILBOX = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}}


def exchange_token(stack: Stack, app: JobApp) -> str:
    credential = CertificateCredential(stack.world.tenant_id, app.app_id,
                                       certificate_data=app.certificates[0].pem,
                                       authority=os.environ["AZURE_AUTHORITY_HOST"],
                                       disable_instance_discovery=True)
    return credential.get_token(f"{os.environ['EXO_ENDPOINT']}/.default").token


def invoke(stack: Stack, token: str | None, body: Any = None, *, url: str | None = None,
           tenant: str | None = None, anchor: bool = True, page_size: int | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json", "X-ResponseFormat": "json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if anchor:
        headers["X-AnchorMailbox"] = f"UPN:{SYSTEM_MAILBOX}@{stack.world.organization}"
    if page_size is not None:
        headers["Prefer"] = f"odata.maxpagesize={page_size}"
    tenant = tenant or stack.world.tenant_id
    target = url or f"{os.environ['EXO_ENDPOINT']}/adminapi/beta/{tenant}/InvokeCommand"
    return requests.post(target, json=GET_MAILBOX if body is None else body, headers=headers, timeout=10)


def get_mailbox(**parameters: Any) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": parameters}}


def upns(response: requests.Response) -> list[str]:
    return [row["UserPrincipalName"] for row in response.json()["value"]]


def all_upns(stack: Stack) -> list[str]:
    return [m.user_principal_name for m in stack.world.mailboxes]


def test_get_mailbox_with_consent_and_role(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    response = invoke(stack, token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert upns(response) == all_upns(stack)
    assert "@odata.nextLink" not in body
    assert body["@odata.context"].endswith("$metadata#Collection(Exchange.GenericHashTable)")
    assert body["value"][0] == stack.world.mailboxes[0].to_cmdlet_output()
    # The primary domain names the organization as well as the tenant id does.
    assert invoke(stack, token, tenant=stack.world.organization).status_code == 200


def test_get_mailbox_parameters(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    adele = f"adelev@{stack.world.organization}"
    for identity in ("Adele Vance", "adelev", adele.upper()):
        assert upns(invoke(stack, token, get_mailbox(Identity=identity))) == [adele]
    rooms = invoke(stack, token, get_mailbox(RecipientTypeDetails="RoomMailbox"))
    assert [r["RecipientTypeDetails"] for r in rooms.json()["value"]] == ["RoomMailbox"]
    shared_or_room = invoke(stack, token, get_mailbox(recipienttypedetails=["SharedMailbox", "RoomMailbox"]))
    assert sorted(r["RecipientTypeDetails"] for r in shared_or_room.json()["value"]) == ["RoomMailbox",
                                                                                        "SharedMailbox"]
    assert upns(invoke(stack, token, get_mailbox(ResultSize=2))) == all_upns(stack)[:2]
    assert upns(invoke(stack, token, get_mailbox(ResultSize="Unlimited"))) == all_upns(stack)


def test_without_consent_is_401(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world, consent=False))
    response = invoke(stack, token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "Unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def is_nul_403(response: requests.Response) -> bool:
    """docs/reference.md "Exchange Online" (seen): a cmdlet the identity may not run, or that does not
    exist, answers 403 with a body of NUL bytes, not JSON."""
    return response.status_code == 403 and bool(response.content) and set(response.content) == {0}


@pytest.mark.parametrize("role", [None, USER_ADMINISTRATOR])
def test_consent_without_an_exchange_role_is_403(stack: Stack, role: str | None) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world, role=role))
    response = invoke(stack, token)
    assert is_nul_403(response), response.content[:50]
    with pytest.raises(ValueError):
        response.json()


def test_paging_follows_next_links(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    stack.world.counter.reset()
    pages: list[list[str]] = []
    url: str | None = None
    while True:
        response = invoke(stack, token, url=url, page_size=2)
        assert response.status_code == 200, response.text
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=2"
        pages.append(upns(response))
        url = response.json().get("@odata.nextLink")
        if url is None:
            break
        assert "$skiptoken=" in url
        assert len(pages) < 10
    assert pages == [all_upns(stack)[0:2], all_upns(stack)[2:4], all_upns(stack)[4:]]
    posts = [r for r in stack.world.counter.snapshot() if r["service"] == "exchange"]
    route = "/adminapi/beta/{tenant}/InvokeCommand"
    assert posts == [{"service": "exchange", "method": "POST", "route": route, "count": 3}]


def test_a_next_link_serves_only_the_body_it_was_issued_for(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    next_link = invoke(stack, token, page_size=2).json()["@odata.nextLink"]
    other_body = get_mailbox(RecipientTypeDetails="UserMailbox")
    assert invoke(stack, token, other_body, url=next_link, page_size=2).status_code == 400
    assert invoke(stack, token, url=next_link, page_size=2).status_code == 200


def test_missing_anchor_mailbox_is_400(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    response = invoke(stack, token, anchor=False)
    assert response.status_code == 400
    assert "X-AnchorMailbox" in response.json()["error"]["message"]


def test_tokens_that_are_not_for_this_organization_are_401(stack: Stack) -> None:
    assert invoke(stack, None).status_code == 401
    assert invoke(stack, "not-a-token").status_code == 401
    graph_token = ManagedIdentityCredential().get_token(f"{os.environ['GRAPH_ENDPOINT']}/.default").token
    assert invoke(stack, graph_token).status_code == 401
    token = exchange_token(stack, exchange_ready_app(stack.world))
    assert invoke(stack, token, tenant=str(uuid.uuid4())).status_code == 401


def cmdlet(name: str, **parameters: Any) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": name, "Parameters": parameters}}


def reason_of(error: dict[str, Any]) -> tuple[str, str]:
    """(exception type, reason) the way docs/reference.md says to read them: the internal exception's
    message, else the first detail's message without its leading `|Type|`."""
    internal = error.get("innererror", {}).get("internalexception")
    if internal:
        return error["innererror"]["type"], internal["message"]
    _, kind, reason = error["details"][0]["message"].split("|", 2)
    return kind, reason


@pytest.mark.parametrize(("body", "status", "kind", "reason"), [
    (get_mailbox(Filter="x"), 400, "ParameterBindingException",
     "A parameter cannot be found that matches parameter name 'Filter'."),
    (get_mailbox(ResultSize=0), 400, "ParameterBindingException", "not a positive number or 'Unlimited'"),
    (get_mailbox(RecipientTypeDetails="Toaster"), 400, "ParameterBindingException", "'Toaster' is not a valid"),
    (get_mailbox(Identity="nobody"), 404, "ManagementObjectNotFoundException", "object 'nobody' couldn't be found"),
    (cmdlet("Set-Mailbox", DisplayName="x"), 400, "ParameterBindingException",
     "missing mandatory parameters: Identity"),
    (cmdlet("Set-Mailbox", Identity="adelev", ProhibitSendQuota="200 GB"), 400, "DataValidationException",
     "must be less than or equal to that of property 'ProhibitSendReceiveQuota'"),
    (cmdlet("Get-MailboxStatistics", Identity="nobody"), 404, "ManagementObjectNotFoundException",
     "couldn't be found"),
])
def test_cmdlet_errors_carry_the_reason_beside_a_generic_message(stack: Stack, body: dict[str, Any], status: int,
                                                                 kind: str, reason: str) -> None:
    # docs/reference.md "Exchange Online" (seen): error.message is always "Invalid Operation"; the reason
    # is in error.innererror.internalexception.message, else in error.details[0].message after `|Type|`.
    token = exchange_token(stack, exchange_ready_app(stack.world))
    response = invoke(stack, token, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] == "Invalid Operation"
    found_kind, found_reason = reason_of(error)
    assert found_kind.endswith(kind) and reason in found_reason


def test_a_malformed_body_is_400(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    response = invoke(stack, token, {"Cmdlet": "Get-Mailbox"})
    assert response.status_code == 400 and "CmdletInput" in response.json()["error"]["message"]


GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
SECURITY_READER = "5d6b6bb7-de71-4623-b4af-96380a352509"
EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"
SET_DISPLAY_NAME = cmdlet("Set-Mailbox", Identity="alexw", DisplayName="Alex W.")


@pytest.mark.parametrize(("role", "may_write"), [
    (EXCHANGE_RECIPIENT_ADMINISTRATOR, True), (EXCHANGE_ADMINISTRATOR, True),
    (GLOBAL_READER, False), (SECURITY_READER, False),
])
def test_each_role_runs_only_its_cmdlets(stack: Stack, role: str, may_write: bool) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world, role=role))
    for read in (get_mailbox(), cmdlet("Get-Recipient"), cmdlet("Get-MailboxStatistics", Identity="adelev")):
        assert invoke(stack, token, read).status_code == 200
    response = invoke(stack, token, SET_DISPLAY_NAME)
    if may_write:
        assert response.status_code == 200 and response.json()["value"] == []
        assert stack.world.mailboxes[1].display_name == "Alex W."
    else:
        assert is_nul_403(response)
        assert stack.world.mailboxes[1].display_name == "Alex Wilber"


def test_an_unknown_cmdlet_looks_like_a_forbidden_one(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    assert is_nul_403(invoke(stack, token, cmdlet("Get-Mailboxx")))
    assert is_nul_403(invoke(stack, token, cmdlet("Remove-Mailbox", Identity="adelev")))


def test_get_recipient_and_statistics(stack: Stack) -> None:
    token = exchange_token(stack, exchange_ready_app(stack.world))
    recipients = invoke(stack, token, cmdlet("Get-Recipient", RecipientTypeDetails="SharedMailbox")).json()["value"]
    assert [(r["Name"], r["RecipientType"]) for r in recipients] == [("Sales", "UserMailbox")]
    stats = invoke(stack, token, cmdlet("Get-MailboxStatistics", Identity="meganb")).json()
    assert [row["ItemCount"] for row in stats["value"]] == [4410]
    assert "@adminapi.warnings" not in stats and "@adminapi.errors" not in stats


def test_a_200_can_carry_warnings_and_non_terminating_errors(stack: Stack) -> None:
    # docs/reference.md "Exchange Online" (seen): @adminapi.warnings / @adminapi.errors beside value.
    token = exchange_token(stack, exchange_ready_app(stack.world))
    never_logged_on = invoke(stack, token, cmdlet("Get-MailboxStatistics", Identity="sales")).json()
    assert never_logged_on["value"] == []
    assert never_logged_on["@adminapi.warnings"] == [
        "The user hasn't logged on to mailbox 'Sales', so there is no data to return. After the user logs on, "
        "this warning will no longer appear."]
    piped = invoke(stack, token, cmdlet("Get-MailboxStatistics", Identity=["adelev", "nobody", "alexw"])).json()
    assert [row["DisplayName"] for row in piped["value"]] == ["Adele Vance", "Alex Wilber"]
    (error,) = piped["@adminapi.errors"]
    assert "|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|" in error["message"]
    assert "'nobody'" in error["message"]
    unchanged = invoke(stack, token, cmdlet("Set-Mailbox", Identity="adelev", DisplayName="Adele Vance")).json()
    assert unchanged["value"] == []
    assert unchanged["@adminapi.warnings"] == [
        "The command completed successfully but no settings of 'Adele Vance' have been modified."]
