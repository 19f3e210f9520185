"""Issue #15: a malformed URL setting is a SettingInvalid naming the setting, never urllib's ValueError."""

from __future__ import annotations

import pytest

from shared.errors import SettingsError
from shared.settings import Settings

BASE = {"KEY_VAULT_URL": "https://kv.vault.azure.net/", "AZURE_TENANT_ID": "0d1e6d58-9a3b-4b8c-9d6e-1f2a3b4c5d6e",
        "EXO_ORGANIZATION": "contoso.onmicrosoft.com"}


@pytest.mark.parametrize("setting", ["KEY_VAULT_URL", "GRAPH_ENDPOINT", "EXO_ENDPOINT", "AZURE_AUTHORITY_HOST",
                                     "NOTIFY_WEBHOOK_URL"])
def test_a_bracket_in_a_url_setting_names_the_setting(setting: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_environment({**BASE, setting: "https://[kv.vault.azure.net/?sig=s3kr1t"})
    assert raised.value.reason == "SettingInvalid"
    assert raised.value.setting == setting
    assert f"setting {setting} is malformed" in raised.value.message
    if setting == "NOTIFY_WEBHOOK_URL":
        assert "s3kr1t" not in raised.value.message  # it may carry a signature


def test_settings_errors_name_their_setting() -> None:
    with pytest.raises(SettingsError) as missing:
        Settings.from_environment({k: v for k, v in BASE.items() if k != "EXO_ORGANIZATION"})
    assert (missing.value.reason, missing.value.setting) == ("SettingMissing", "EXO_ORGANIZATION")
    with pytest.raises(SettingsError) as unknown_role:
        Settings.from_environment({**BASE, "ALLOWED_ROLES": "Made Up Role"})
    assert (unknown_role.value.reason, unknown_role.value.setting) == ("SettingInvalid", "ALLOWED_ROLES")
