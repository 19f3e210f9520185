from __future__ import annotations

import pytest

from shared.errors import SettingsError
from shared.settings import Settings

BASE = {
    "KEY_VAULT_URL": "https://kv-contoso.vault.azure.net",
    "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "EXO_ORGANIZATION": "contoso.onmicrosoft.com",
}


def test_defaults() -> None:
    s = Settings.from_environment(BASE)
    assert s.key_vault_url == "https://kv-contoso.vault.azure.net/"
    assert s.graph_endpoint == "https://graph.microsoft.com"
    assert s.exo_scope == "https://outlook.office365.com/.default"
    assert s.verify_challenge_resource is True
    assert s.allowed_roles == {"31392ffb-586c-42d1-9346-e59415a2cc4e"}
    assert s.disable_instance_discovery is False


def test_national_cloud_endpoints() -> None:
    s = Settings.from_environment({**BASE, "GRAPH_ENDPOINT": "https://graph.microsoft.us/",
                                   "EXO_ENDPOINT": "https://outlook.office365.us",
                                   "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us"})
    assert s.graph_scope == "https://graph.microsoft.us/.default"
    assert s.disable_instance_discovery is False


def test_custom_authority_disables_instance_discovery() -> None:
    assert Settings.from_environment({**BASE, "AZURE_AUTHORITY_HOST": "https://127.0.0.1:4443"}).disable_instance_discovery


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("KEY_VAULT_URL", None, "KEY_VAULT_URL is missing"),
        ("KEY_VAULT_URL", "http://kv.vault.azure.net", "https:// URL"),
        ("AZURE_TENANT_ID", "contoso", "GUID"),
        ("AZURE_TENANT_ID", None, "AZURE_TENANT_ID is missing"),
        ("EXO_ORGANIZATION", "contoso.com", "onmicrosoft"),
        ("GRAPH_ENDPOINT", "graph.microsoft.com", "https:// URL"),
        ("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "maybe", "true or false"),
        ("ALLOWED_ROLES", "Global Administrator", "privileged"),
        ("ALLOWED_ROLES", "User Administrator", "unknown role"),
        ("ROTATION_GRACE_HOURS", "-1", "number from 0"),
        ("RENEW_BEFORE_FRACTION", "1.5", "between 0 and 1"),
        ("CERTIFICATE_VALIDITY_MONTHS", "36", "from 1 to 24"),
    ],
)
def test_bad_settings_name_the_setting(name: str, value: str | None, fragment: str) -> None:
    env = dict(BASE)
    if value is None:
        env.pop(name, None)
    else:
        env[name] = value
    with pytest.raises(SettingsError) as info:
        Settings.from_environment(env)
    assert name in str(info.value)
    assert fragment in str(info.value)


def test_settings_are_parsed_once_per_process_until_a_setting_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"KEY_VAULT_URL": "https://kv.vault.azure.net",
                        "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
                        "EXO_ORGANIZATION": "contoso.onmicrosoft.com"}.items():
        monkeypatch.setenv(name, value)
    first = Settings.current()
    assert Settings.current() is first, "the same object while nothing changed"
    monkeypatch.setenv("ROTATION_GRACE_HOURS", "12")
    changed = Settings.current()
    assert changed is not first and changed.rotation_grace_hours == 12.0
    monkeypatch.setenv("SOMETHING_UNRELATED", "x")
    assert Settings.current() is changed


@pytest.mark.parametrize(("value", "expected"), [("Self", "Self"), ("self", "Self"), ("contoso-ca", "contoso-ca")])
def test_the_certificate_issuer_is_a_key_vault_issuer_name(value: str, expected: str) -> None:
    env = {"KEY_VAULT_URL": "https://kv.vault.azure.net", "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
           "EXO_ORGANIZATION": "contoso.onmicrosoft.com", "CERTIFICATE_ISSUER": value}
    assert Settings.from_environment(env).certificate_issuer == expected


def test_a_malformed_certificate_issuer_names_the_setting() -> None:
    env = {"KEY_VAULT_URL": "https://kv.vault.azure.net", "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
           "EXO_ORGANIZATION": "contoso.onmicrosoft.com", "CERTIFICATE_ISSUER": "my issuer/1"}
    with pytest.raises(SettingsError, match="CERTIFICATE_ISSUER"):
        Settings.from_environment(env)
