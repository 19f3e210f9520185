"""The pure rule that decides how the registry's readers find identities without a certificate
(shared/sweep.py `lists_every_secret`): read the connection secrets the lease blobs' names point at, or list
every secret of the vault."""

from __future__ import annotations

import datetime as dt

from shared.core.fanout import fan_out
from shared.lease import LeaseIndex
from shared.sweep import lists_every_secret

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def index(listed_ago: dt.timedelta | None) -> LeaseIndex:
    return LeaseIndex(frozenset({"a", "b"}), None if listed_ago is None else NOW - listed_ago)


def test_a_recent_complete_listing_lets_the_index_be_trusted() -> None:
    assert not lists_every_secret(index(dt.timedelta(hours=1)), 0, 1000, NOW, DAY)
    assert not lists_every_secret(index(DAY - dt.timedelta(seconds=1)), 5, 1000, NOW, DAY)


def test_every_secret_is_listed_without_an_index_or_a_recent_complete_listing() -> None:
    assert lists_every_secret(None, 0, 1000, NOW, DAY)  # storage unavailable or not configured
    assert lists_every_secret(index(None), 0, 1000, NOW, DAY)  # never listed (a new deployment or storage account)
    assert lists_every_secret(index(DAY), 0, 1000, NOW, DAY)  # an identity the index misses is found in a period
    assert lists_every_secret(index(-dt.timedelta(minutes=1)), 0, 1000, NOW, DAY)  # a marker from the future


def test_the_listing_is_chosen_when_the_reads_would_cost_more() -> None:
    # 1,000 certificate identities: the listing holds at least their 2,000 secrets, 80 pages and more.
    assert not lists_every_secret(index(dt.timedelta(hours=1)), 80, 1000, NOW, DAY)  # 80 reads <= 84 pages
    assert lists_every_secret(index(dt.timedelta(hours=1)), 100, 1000, NOW, DAY)  # 100 reads > 84 pages
    # A small vault: one page holds everything.
    assert not lists_every_secret(index(dt.timedelta(hours=1)), 1, 1, NOW, DAY)
    assert lists_every_secret(index(dt.timedelta(hours=1)), 2, 1, NOW, DAY)


def test_a_run_to_index_an_identity_waits_behind_what_is_wrong() -> None:
    scheduled, _ = fan_out([("aaa", ["NotIndexed"]), ("zzz", ["KeyMissing"])])
    assert [name for name, _ in scheduled] == ["zzz", "aaa"]
