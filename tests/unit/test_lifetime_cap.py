"""The certificate validity cap for a tenant's maximum key credential lifetime (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.adapters.directory import capped_validity_months, key_lifetime_limit, parse_duration

DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(("requested", "max_lifetime", "expected"), [
    (12, None, 12),                                   # no policy: as requested
    (12, 400 * DAY, 12),                              # 12 x 31 days + 10 min fits in 400 days
    (12, 372 * DAY, 11),                              # 12 x 31 = 372 days, but the 10-minute backdating does not fit
    (12, 372 * DAY + dt.timedelta(minutes=10), 12),   # exactly fits
    (12, 90 * DAY, 2),                                # 2 x 31 = 62 <= 90 < 93
    (12, 93 * DAY, 2),                                # 3 x 31 days + 10 min > 93 days
    (12, 62 * DAY + dt.timedelta(minutes=10), 2),
    (12, 62 * DAY, 1),
    (1, 365 * DAY, 1),                                # never more than requested
    (12, 31 * DAY + dt.timedelta(minutes=10), 1),     # one month, just
    (12, 31 * DAY, 0),                                # not even one month
    (12, 20 * DAY, 0),
    (12, dt.timedelta(minutes=5), 0),
    (12, dt.timedelta(0), 0),
])
def test_capped_validity_months(requested: int, max_lifetime: dt.timedelta | None, expected: int) -> None:
    assert capped_validity_months(requested, max_lifetime) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("P90D", 90 * DAY),
    ("P4DT12H30M5S", dt.timedelta(days=4, hours=12, minutes=30, seconds=5)),
    ("PT2160H", 90 * DAY),
    ("P2W", 14 * DAY),
    ("p30d", 30 * DAY),
    ("P1Y", None), ("P3M", None), ("P", None), ("PT", None), ("P1DT", None), ("90", None), (None, None),
])
def test_parse_duration(text: Any, expected: dt.timedelta | None) -> None:
    assert parse_duration(text) == expected


def restriction(max_lifetime: str | None, **extra: Any) -> dict[str, Any]:
    return {"restrictionType": "asymmetricKeyLifetime", "maxLifetime": max_lifetime,
            "restrictForAppsCreatedAfterDateTime": "2019-01-01T00:00:00Z", "state": "enabled", **extra}


def policy(*restrictions: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    return {"id": "00000000-0000-0000-0000-000000000000", "isEnabled": enabled,
            "applicationRestrictions": {"passwordCredentials": [
                {"restrictionType": "passwordLifetime", "maxLifetime": "P1D", "state": "enabled"}],
                "keyCredentials": list(restrictions)}}


@pytest.mark.parametrize(("document", "expected"), [
    (None, None),
    (policy(restriction("P90D"), enabled=False), None),               # not enabled
    (policy(), None),                                                  # nothing on keys (password limits ignored)
    (policy(restriction("P90D", state="disabled")), None),
    (policy(restriction("P1Y")), None),                                # unreadable: warned and ignored
    (policy(restriction("P90D")), ("P90D", 90 * DAY)),
    (policy(restriction("P90D", state=None)), ("P90D", 90 * DAY)),    # state absent (older payloads): enforced
    (policy(restriction("P90D"), restriction("P30D")), ("P30D", 30 * DAY)),  # the strictest
    (policy(restriction("P90D", restrictionType="unknownFutureValue")), None),
])
def test_key_lifetime_limit(document: dict[str, Any] | None, expected: tuple[str, dt.timedelta] | None) -> None:
    limit = key_lifetime_limit(document)
    assert (None if limit is None else (limit.text, limit.max_lifetime)) == expected
