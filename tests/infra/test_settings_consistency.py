"""Issue: every setting the code reads is in infra/, local.settings.sample.json and the README, and
nothing stale remains in any of them. The list comes from the code (settings_scan.py)."""

from __future__ import annotations

import pytest

from .bicep import ROOT, app_settings
from .settings_scan import (
    HOST_STORAGE,
    PLATFORM_PROVIDED,
    REQUIRED_IN_INFRA_FROM_HOST,
    REQUIRED_IN_LOCAL_FROM_HOST,
    allowed_everywhere,
    binding_settings,
    code_settings,
    connections,
    documented_settings,
    local_settings,
    read_by_settings_object,
)


# -- the derivation itself -------------------------------------------------------------------------
def test_the_code_reads_settings_and_the_derivation_misses_none() -> None:
    names = code_settings()
    assert {"KEY_VAULT_URL", "AZURE_TENANT_ID", "EXO_ORGANIZATION", "RECONCILE_QUEUE"} <= names
    asked = read_by_settings_object()
    if asked is not None:  # the static scan must see every name the settings object asks for
        missed = {n for n in asked if not PLATFORM_PROVIDED.match(n)} - names
        assert not missed, f"the scan of the source missed {sorted(missed)}"


def test_binding_expressions_are_resolved_from_settings() -> None:
    # The timer's schedule and the queue names are %SETTING% references resolved by the host.
    assert binding_settings(), "no binding reads a setting"
    assert connections() == {HOST_STORAGE}, "a new storage connection needs identity-based settings in infra/"


# -- infra -----------------------------------------------------------------------------------------
def test_infra_sets_every_setting_the_code_reads() -> None:
    settings = app_settings()
    missing = (code_settings() | REQUIRED_IN_INFRA_FROM_HOST) - set(settings)
    assert not missing, f"infra/ lacks {sorted(missing)}"
    for connection in connections():
        assert settings.get(f"{connection}__credential") == "managedidentity"
        assert f"{connection}__clientId" in settings
        assert any(f"{connection}__{s}" in settings for s in ("accountName", "serviceUri", "queueServiceUri"))


def test_infra_sets_nothing_stale() -> None:
    stale = set(app_settings()) - allowed_everywhere()
    assert not stale, f"infra/ sets settings no code reads: {sorted(stale)}"


# -- local.settings.sample.json --------------------------------------------------------------------
def test_local_settings_sample_has_every_setting_the_code_reads() -> None:
    values = local_settings()
    missing = (code_settings() | REQUIRED_IN_LOCAL_FROM_HOST) - set(values)
    assert not missing, f"local.settings.sample.json lacks {sorted(missing)}"
    for connection in connections():
        assert connection in values or f"{connection}__accountName" in values


def test_local_settings_sample_has_nothing_stale() -> None:
    stale = set(local_settings()) - allowed_everywhere()
    assert not stale, f"local.settings.sample.json has settings no code reads: {sorted(stale)}"


# -- documentation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("document", ["README.md", "docs/deploy.md"])
def test_documentation_lists_every_setting_the_code_reads(document: str) -> None:
    documented = set(documented_settings(ROOT / document))
    missing = (code_settings() | connections()) - documented
    assert not missing, f"{document}: the settings table (first header cell 'Setting') lacks {sorted(missing)}"


@pytest.mark.parametrize("document", ["README.md", "docs/deploy.md"])
def test_documentation_lists_nothing_stale(document: str) -> None:
    documented = documented_settings(ROOT / document)
    assert len(documented) == len(set(documented)), f"{document}: a setting is listed twice"
    stale = set(documented) - allowed_everywhere()
    assert not stale, f"{document} documents settings no code reads: {sorted(stale)}"
