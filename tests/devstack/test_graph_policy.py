"""The Graph stand-in's tenant app management policy: read with Policy.Read.All, enforced on new keys."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import pytest
from msgraph import GraphServiceClient
from msgraph.generated.models.application import Application
from msgraph.generated.models.key_credential import KeyCredential
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from devstack import Stack
from devstack.graph import parse_duration
from devstack.world import DEFAULT_APP_MANAGEMENT_POLICY_ID, DEFAULT_PLATFORM_GRAPH_ROLES, iso

from .graph_helpers import Cert, make_cert, other_caller, refused, run

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_abstractions"),
]
T = TypeVar("T")



def key(cert: Cert, **overrides: Any) -> KeyCredential:
    return KeyCredential(**{"type": "AsymmetricX509Cert", "usage": "Verify", "key": cert.der, **overrides})


def test_default_policy_is_not_enabled_and_needs_policy_read_all(stack: Stack) -> None:
    assert "Policy.Read.All" in DEFAULT_PLATFORM_GRAPH_ROLES

    async def read(client: GraphServiceClient) -> Any:
        return await client.policies.default_app_management_policy.get()

    policy = run(read, stack)
    assert policy.id == DEFAULT_APP_MANAGEMENT_POLICY_ID
    assert policy.is_enabled is False
    assert policy.application_restrictions.key_credentials == []

    stack.world.set_key_lifetime_policy("P90D")
    policy = run(read, stack)
    assert policy.is_enabled is True
    (restriction,) = policy.application_restrictions.key_credentials
    assert restriction.max_lifetime == dt.timedelta(days=90)
    assert restriction.restriction_type.value == "asymmetricKeyLifetime"

    without = other_caller(stack, ["Application.ReadWrite.OwnedBy", "Application.Read.All"])

    async def forbidden(client: GraphServiceClient) -> ODataError:
        return await refused(client.policies.default_app_management_policy.get())

    error = run(forbidden, stack, without)
    assert error.response_status_code == 403 and error.error.code == "Authorization_RequestDenied"


def test_new_key_longer_than_the_policy_allows_is_refused(stack: Stack) -> None:
    stack.world.clock.advance(1)  # the app below is created after the restriction date
    stack.world.set_key_lifetime_policy("P30D", restrict_for_apps_created_after=iso(stack.world.clock.now()))
    too_long = make_cert(stack, days=30)  # 31 days including the day before now
    fits = make_cert(stack, days=28)

    async def scenario(client: GraphServiceClient) -> None:
        app = await client.applications.post(Application(display_name="policy-bound"))
        assert app is not None and app.id
        item = client.applications.by_application_id(app.id)
        error = await refused(item.patch(Application(key_credentials=[key(too_long)])))
        assert error.response_status_code == 400
        assert error.error.code == "CredentialInvalidLifetimeAsPerAppPolicy"
        assert error.error.message == ("Credential lifetime exceeds the max value allowed as per assigned policy "
                                       f"'{DEFAULT_APP_MANAGEMENT_POLICY_ID}'.")
        assert [d.code for d in error.error.details] == ["InvalidKeyEndDate"]
        # The key's own window counts: an endDateTime inside the limit is accepted.
        start = too_long.certificate.not_valid_before_utc
        await item.patch(Application(key_credentials=[key(too_long, end_date_time=start + dt.timedelta(days=30))]))
        await item.patch(Application(key_credentials=[key(fits)]))
        after = await item.get()
        assert after is not None and len(after.key_credentials) == 1

    run(scenario, stack)


def test_policy_applies_only_to_new_keys_of_apps_created_after_its_date(stack: Stack) -> None:
    long_key = make_cert(stack, days=200)
    other_long = make_cert(stack, days=200)

    async def scenario(client: GraphServiceClient) -> None:
        app = await client.applications.post(Application(display_name="older-app"))
        assert app is not None and app.id
        item = client.applications.by_application_id(app.id)
        await item.patch(Application(key_credentials=[key(long_key)]))
        kept = (await item.get()).key_credentials[0].key_id

        # Restricted from tomorrow: this app predates the date, so its keys are not limited.
        tomorrow = iso(stack.world.clock.now() + dt.timedelta(days=1))
        stack.world.set_key_lifetime_policy("P30D", restrict_for_apps_created_after=tomorrow)
        await item.patch(Application(key_credentials=[key(long_key, key_id=kept), key(other_long)]))

        # Restricted since long ago: an existing long key is kept, a new long one refused.
        stack.world.set_key_lifetime_policy("P30D")
        await item.patch(Application(key_credentials=[key(long_key, key_id=kept)]))
        error = await refused(item.patch(Application(key_credentials=[key(long_key, key_id=kept),
                                                                       key(make_cert(stack, days=60))])))
        assert error.error.code == "CredentialInvalidLifetimeAsPerAppPolicy"

        # A disabled restriction, or a policy that is not enabled, limits nothing.
        stack.world.set_key_lifetime_policy("P30D", state="disabled")
        await item.patch(Application(key_credentials=[key(make_cert(stack, days=90))]))
        stack.world.set_key_lifetime_policy(None)
        await item.patch(Application(key_credentials=[key(make_cert(stack, days=90))]))

    run(scenario, stack)


@pytest.mark.parametrize(("text", "expected"), [
    ("P90D", dt.timedelta(days=90)),
    ("P4DT12H30M5S", dt.timedelta(days=4, hours=12, minutes=30, seconds=5)),
    ("PT36H", dt.timedelta(hours=36)),
    ("P1Y", None), ("P", None), ("", None), (None, None),
])
def test_stand_in_duration_parsing(text: Any, expected: dt.timedelta | None) -> None:
    assert parse_duration(text) == expected
