"""The identity stage over a real PostgreSQL store: anonymous sales (SPEC 2: a POS sale
without a card) form no profile, and their returns are dropped, not parked forever, also
when they reach a restarted stage or one that parked them before the sale arrived."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.store import Store
from tests.domain.builders import at, buy, refund
from tests.stage_harness import Pipeline, clean_store, count

pytest_plugins = ["tests.pg_support"]


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    with clean_store(source_dsns["cdp"]) as s:
        yield s


def test_anonymous_sales_and_their_returns_have_no_profile(store: Store) -> None:
    p = Pipeline(store)
    p.feed([buy("A", 1_000, at(1)), buy("C", 2_000, at(1), member_no="9")])
    p.feed([refund("RB", "B", 100, at(3))])  # the return overtook its (anonymous) sale
    assert count(store, "SELECT count(*) FROM parked_records") == 1
    p.feed([buy("B", 1_000, at(2))])
    assert count(store, "SELECT count(*) FROM parked_records") == 0
    assert count(store, "SELECT count(*) FROM records") == 1  # only the member's sale
    assert count(store, "SELECT count(*) FROM profiles") == 1
    assert count(store, "SELECT count(*) FROM anonymous_purchases") == 2
    assert p.identity.counts["anonymous"] == 3  # two sales, one return
    # a restarted stage (empty graph) still knows the return of an anonymous sale
    again = Pipeline(store)
    again.feed([refund("RA", "A", 100, at(4)), refund("RX", "X", 100, at(4))])
    assert count(store, "SELECT count(*) FROM parked_records") == 1  # only X: never seen
    assert again.identity.counts["anonymous"] == 1
