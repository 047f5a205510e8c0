"""The identity stage over a real PostgreSQL store: anonymous sales (SPEC 2: a POS sale
without a card) form no profile, and their returns are dropped, not parked forever, also
when they reach a restarted stage or one that parked them before the sale arrived."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.domain.records import PurchaseRefunded
from streams.store import Store
from tests.domain.builders import at, buy, ids, refund
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


def test_a_forgotten_purchase_is_read_back_from_the_store(store: Store) -> None:
    """With no purchase node kept in memory (LOYALTY_CDP_PURCHASE_NODES=0) a later return
    still lands with its purchase, and a return that brings another person's identifier
    still merges the two profiles through the purchase (cdp_0010's lookup)."""
    p = Pipeline(store)
    p.identity.purchase_nodes = 0
    p.feed([buy("A", 1_000, at(1), customer_id="c1"),
            buy("B", 500, at(1), customer_id="c2", email="z@x")])
    assert not p.identity.graph.purchase_known("pos:A")
    assert count(store, "SELECT count(*) FROM records WHERE purchase_id = 'pos:A'") == 1
    p.feed([refund("R1", "A", 100, at(2))])  # no identifier: only its purchase says whose
    assert count(store, "SELECT count(*) FROM parked_records") == 0
    assert count(store, "SELECT count(DISTINCT profile_id) FROM records"
                        " WHERE purchase_id = 'pos:A'") == 1
    assert count(store, "SELECT count(*) FROM profiles") == 2
    with_email = PurchaseRefunded("pos.returns:R2", "pos", "returns", "R2", at(3),
                                  ids(email="z@x"), "R2", "pos:A", 100)
    p.feed([with_email])  # links c1's purchase to c2's email: one person
    assert count(store, "SELECT count(*) FROM profiles") == 1
    assert count(store, "SELECT count(DISTINCT profile_id) FROM records") == 1
    assert p.identity.counts["merges"] == 1
    assert p.identity.counts["purchases_restored"] >= 2
    assert not p.identity.graph.purchase_known("pos:A")  # forgotten again after the batch
