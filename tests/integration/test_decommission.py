"""Issue: DELETE /api/identities/{name} removes exactly what the identity owned, nothing foreign."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack import Stack
from devstack.faults import Fault
from tests.support.crash_points import DECOMMISSION_CRASH_POINTS as CRASH_POINTS
from tests.support.tenant import (
    ERA,
    add_foreign_app,
    add_foreign_key,
    add_role_assignment,
    app_of,
    directory_of,
    live_and_deleted,
    only,
    sp_of,
    vault_state,
)

from .helpers import (
    call,
    delete_identity,
    get_identity,
    post_identity,
    rotate,
    run_job_get_mailbox,
    write_count,
)
from .platform_helpers import reconcile, sweep

GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
DECOMMISSION_ORDER = ["MarkDecommissioning", "RemoveRoleAssignment", "RevokeConsent", "DeleteServicePrincipal",
                      "DeleteApplication", "DeleteConnectionSecret", "DeleteCertificate"]


def test_decommission_removes_exactly_what_the_identity_owned(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

    assert post_identity({"name": "alpha"}).status == 201
    assert post_identity({"name": "beta"}).status == 201
    d = stack.world.directory
    alpha, beta = app_of(stack, "alpha"), app_of(stack, "beta")
    assert alpha is not None and beta is not None
    alpha_sp = sp_of(stack, alpha)
    foreign = add_foreign_app(stack, beta)
    add_foreign_key(stack, alpha)
    admin_grant = add_role_assignment(stack, alpha_sp["id"], GLOBAL_READER)
    own_grant = only(list(d.role_assignments.values()), principalId=alpha_sp["id"], roleDefinitionId=ERA)["id"]
    untouched = {"beta": directory_of(stack, beta), "foreign": directory_of(stack, foreign)}
    everything = json.dumps(d.__dict__, sort_keys=True, default=str)
    vault_before = vault_state(stack)

    # Dry run: the plan, nothing removed.
    stack.world.counter.reset()
    plan = delete_identity("alpha", params={"dryRun": "true"})
    assert plan.status == 200, plan.body
    assert plan.body["dryRun"] is True and plan.body["executed"] == []
    actions = plan.body["plan"]["actions"]
    assert [a["action"] for a in actions] == DECOMMISSION_ORDER
    assert [a["description"] for a in actions if a["action"] == "RemoveRoleAssignment"] == \
        [f"remove the role assignment {own_grant}"], "only the role of its spec, not the admin's extra one"
    assert write_count(stack) == 0
    assert json.dumps(d.__dict__, sort_keys=True, default=str) == everything
    assert vault_state(stack) == vault_before

    # For real.
    done = delete_identity("alpha")
    assert done.status == 200, done.body
    assert done.body["result"] == "Succeeded" and done.body["operation"] == "decommission"
    assert [e["action"] for e in done.body["executed"]] == DECOMMISSION_ORDER
    assert all(e["result"] == "Succeeded" for e in done.body["executed"])

    assert app_of(stack, "alpha") is None
    assert d.sp_by_app_id(alpha["appId"]) is None
    assert own_grant not in d.role_assignments
    # The admin's extra assignment hung off the deleted principal: Entra removes it with the principal.
    assert admin_grant not in d.role_assignments
    assert not [a for a in d.app_role_assignments.values() if a["principalId"] == alpha_sp["id"]]

    live, deleted = live_and_deleted(stack)
    assert {"exo-alpha-cert", "exo-alpha-connection"} <= deleted
    assert not {"exo-alpha-cert", "exo-alpha-connection"} & live
    assert {"exo-beta-cert", "exo-beta-connection"} <= live
    settings = stack.settings()
    with ManagedIdentityCredential() as credential, \
            CertificateClient(settings["KEY_VAULT_URL"], credential) as certificates, \
            SecretClient(settings["KEY_VAULT_URL"], credential) as secrets:
        deleted_cert = certificates.get_deleted_certificate("exo-alpha-cert")
        deleted_secret = secrets.get_deleted_secret("exo-alpha-connection")
    assert deleted_cert.recovery_id and deleted_cert.scheduled_purge_date, "recoverable, not purged"
    assert deleted_secret.recovery_id and deleted_secret.scheduled_purge_date

    assert directory_of(stack, beta) == untouched["beta"]
    assert directory_of(stack, foreign) == untouched["foreign"]
    beta_status = get_identity("beta")
    assert beta_status.status == 200 and beta_status.body["inSync"] is True
    assert run_job_get_mailbox(stack, "beta")

    listed = call("identities", "GET", "http://localhost/api/identities").body["value"]
    assert [i["name"] for i in listed] == ["beta"]
    for again in (get_identity("alpha"), delete_identity("alpha"), rotate("alpha"),
                  delete_identity("alpha", params={"dryRun": "true"})):
        assert again.status == 404, again.body
        assert again.content_type == "application/problem+json"
        assert again.body["reason"] == "IdentityNotFound"


def purge(stack: Stack, name: str) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

    settings = stack.settings()
    with ManagedIdentityCredential() as credential, \
            CertificateClient(settings["KEY_VAULT_URL"], credential) as certificates, \
            SecretClient(settings["KEY_VAULT_URL"], credential) as secrets:
        certificates.purge_deleted_certificate(f"exo-{name}-cert")
        secrets.purge_deleted_secret(f"exo-{name}-connection")


def test_the_name_is_reusable_once_the_deleted_objects_are_purged(stack: Stack) -> None:
    assert post_identity({"name": "phoenix"}).status == 201
    old_app_id = app_of(stack, "phoenix")["appId"]  # type: ignore[index]
    assert delete_identity("phoenix").status == 200
    purge(stack, "phoenix")

    reborn = post_identity({"name": "phoenix"})
    assert reborn.status == 201, reborn.body
    new_app = app_of(stack, "phoenix")
    assert new_app is not None and new_app["appId"] != old_app_id
    assert run_job_get_mailbox(stack, "phoenix")


def test_a_soft_deleted_certificate_blocks_the_name_with_a_clear_conflict(stack: Stack) -> None:
    assert post_identity({"name": "phoenix"}).status == 201
    assert delete_identity("phoenix").status == 200

    stack.world.counter.reset()
    blocked = post_identity({"name": "phoenix"})
    assert app_of(stack, "phoenix") is None, "nothing is created while the name is blocked"
    assert write_count(stack) <= 1, "at most the refused certificate create"
    assert blocked.content_type == "application/problem+json"
    assert blocked.status == 409, blocked.body
    assert blocked.body["reason"] == "DeletedButRecoverable"
    assert "recover" in blocked.body["detail"] and "exo-phoenix-cert" in blocked.body["detail"]
    assert "purge" not in blocked.body["detail"], "never advice that purge protection forbids"


@pytest.mark.parametrize("fault", [c[1] for c in CRASH_POINTS], ids=[c[0] for c in CRASH_POINTS])
def test_an_interrupted_decommission_is_finished_by_the_next_delete(stack: Stack, fault: dict[str, Any]) -> None:
    assert post_identity({"name": "doomed"}).status == 201
    assert post_identity({"name": "keeper"}).status == 201
    keeper = app_of(stack, "keeper")
    assert keeper is not None
    keeper_before = directory_of(stack, keeper)

    stack.world.faults.add(Fault.from_json(fault))
    first = delete_identity("doomed")
    stack.world.faults.clear()
    assert first.status >= 400, first.body
    assert first.content_type == "application/problem+json"
    assert first.body["run"]["executed"][0] == {"action": "MarkDecommissioning", "result": "Succeeded",
                                                "detail": "marked"}
    app_after_crash = app_of(stack, "doomed")

    # Neither a sweep, a queued reconcile, a bootstrap nor a rotation recreates or repairs anything
    # while the mark is there.
    stack.world.counter.reset()
    swept = sweep(stack)
    assert "doomed" in swept.skipped and "doomed" not in swept.due
    queued = reconcile(stack, "doomed")
    assert queued.error is not None and queued.error.reason == "Decommissioning" and queued.executed == []
    for attempt in (post_identity({"name": "doomed"}), rotate("doomed")):
        assert attempt.status == 409, attempt.body
        assert attempt.body["reason"] == "Decommissioning"
        assert "DELETE" in attempt.body["detail"]
    assert write_count(stack) == 0
    assert (app_of(stack, "doomed") is None) == (app_after_crash is None)
    status = get_identity("doomed")
    assert status.status == 200 and status.body["state"] == "decommissioning"
    assert status.body["facets"]["certificate"]["state"] == "blocked"
    listed = {i["name"]: i["state"] for i in call("identities", "GET", "http://localhost/api/identities").body["value"]}
    assert listed == {"doomed": "decommissioning", "keeper": "active"}

    second = delete_identity("doomed")
    assert second.status == 200, second.body
    assert second.body["result"] == "Succeeded"
    assert "MarkDecommissioning" not in [e["action"] for e in second.body["executed"]]
    assert app_of(stack, "doomed") is None
    live, _ = live_and_deleted(stack)
    assert not {"exo-doomed-cert", "exo-doomed-connection"} & live
    assert delete_identity("doomed").status == 404
    assert directory_of(stack, keeper) == keeper_before
    assert run_job_get_mailbox(stack, "keeper")


def test_decommission_refuses_a_name_held_by_a_foreign_app(stack: Stack) -> None:
    """An app with the identity's uniqueName that this product did not create is never deleted."""
    assert post_identity({"name": "template"}).status == 201
    template = app_of(stack, "template")
    assert template is not None
    impostor = add_foreign_app(stack, template)
    impostor["uniqueName"] = "exo-automation-squatter"
    before = directory_of(stack, impostor)

    stack.world.counter.reset()
    response = delete_identity("squatter")
    assert response.status == 409, response.body
    assert response.body["reason"] == "ForeignObject"
    assert write_count(stack) == 0
    assert directory_of(stack, impostor) == before
