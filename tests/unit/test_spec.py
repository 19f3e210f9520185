from __future__ import annotations

import pytest

from shared.core.spec import IdentitySpec, parse_spec
from shared.errors import InvalidSpec
from shared.settings import Settings

SETTINGS = Settings.from_environment({
    "KEY_VAULT_URL": "https://kv.vault.azure.net", "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "EXO_ORGANIZATION": "contoso.onmicrosoft.com",
    "ALLOWED_ROLES": "Exchange Recipient Administrator, Global Reader",
})


def test_defaults_and_tags_round_trip() -> None:
    spec = parse_spec({"name": "mailbox-reports"}, SETTINGS)
    assert [r.name for r in spec.roles] == ["Exchange Recipient Administrator"]
    assert spec.organization == "contoso.onmicrosoft.com"
    assert spec.validity_months == 12 and spec.key_size == 2048
    assert IdentitySpec.from_tags(spec.to_tags()) == spec
    assert all(len(v) <= 256 for v in spec.to_tags().values())


def test_names_never_collide() -> None:
    a, b = parse_spec({"name": "abc"}, SETTINGS).names, parse_spec({"name": "abc-connection"}, SETTINGS).names
    objects = {a.certificate, a.connection_secret, b.certificate, b.connection_secret}
    assert len(objects) == 4


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": "Reports"}, "/name"),
        ({"name": "a"}, "/name"),
        ({"name": "double--hyphen"}, "/name"),
        ({"name": "trailing-"}, "/name"),
        ({"name": "x" * 41}, "/name"),
        ({"name": "ok-name", "colour": "blue"}, "/colour"),
        ({"name": "ok-name", "roles": ["Global Administrator"]}, "/roles/0"),
        ({"name": "ok-name", "roles": ["Privileged Role Administrator"]}, "/roles/0"),
        ({"name": "ok-name", "roles": ["Exchange Administrator"]}, "/roles/0"),
        ({"name": "ok-name", "roles": ["User Administrator"]}, "/roles/0"),
        ({"name": "ok-name", "roles": []}, "/roles"),
        ({"name": "ok-name", "organization": "fabrikam.onmicrosoft.com"}, "/organization"),
        ({"name": "ok-name", "validityMonths": 0}, "/validityMonths"),
        ({"name": "ok-name", "validityMonths": True}, "/validityMonths"),
        ({"name": "ok-name", "keySize": 1024}, "/keySize"),
        ({"name": "ok-name", "contacts": ["not-an-email"]}, "/contacts"),
        ({"name": "ok-name", "description": "x" * 201}, "/description"),
    ],
)
def test_bad_specs_point_at_the_field(body: dict, pointer: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(body, SETTINGS)
    assert pointer in [e["pointer"] for e in info.value.errors]


def test_privileged_roles_are_refused_even_by_template_id() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "x-y", "roles": ["62e90394-69f5-4237-9190-012177145e10"]}, SETTINGS)
    assert info.value.reason == "RoleNotAllowed"
    assert "privileged" in info.value.errors[0]["detail"]


def test_not_a_dict() -> None:
    with pytest.raises(InvalidSpec):
        parse_spec(["name"], SETTINGS)
