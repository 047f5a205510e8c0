"""The identity stage over a real PostgreSQL store: anonymous sales (SPEC 2: a POS sale
without a card) form no profile, and their returns are dropped, not parked forever, also
when they reach a restarted stage or one that parked them before the sale arrived."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from sqlalchemy import text

import streams.identity as identity_module
from app.domain.records import PurchaseRefunded, Record
from streams.store import Store
from tests.domain.builders import at, buy, enroll, ids, link, refund
from tests.stage_harness import Msg, Pipeline, clean_store, cloudevent, count, truncate

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


class _Crash(Exception):
    pass


def test_a_crash_between_commit_and_notifications_still_retires_the_absorbed_profile(
    store: Store,
) -> None:
    """The identity stage commits a merge, then dies before its notifications reach the
    broker (SIGKILL). The redelivered batch changes nothing in the graph (the store has the
    merge), so only the store can say that the absorbed profile must be re-read: its
    notification must still come, and the profile stage retire it."""
    p = Pipeline(store)
    p.feed([link("c1", at(1), customer_id="c1", email="a@x"),
            buy("A", 1_000, at(2), customer_id="c1")])  # a guest profile
    guest = p.identity.graph.cluster_of("customer_id", "c1")
    assert guest is not None and guest.startswith("guest:")
    enrolment = [enroll("9", at(3), customer_id="c1")]  # renames the guest to member:9

    def dies() -> None:
        raise _Crash
    p.out.flush_sync = dies  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        p.identity.process([Msg(cloudevent(r)) for r in enrolment])
    # the rename's two refold notifications (guest and member:9) wait in the store
    assert count(store, "SELECT count(*) FROM resolved_pending") == 2
    with pytest.raises(_Crash):  # the redelivery fails too: they are not written twice
        p.identity.process([Msg(cloudevent(r)) for r in enrolment])
    assert count(store, "SELECT count(*) FROM resolved_pending") == 2
    p.out.sent.clear()  # never reached the broker
    del p.out.flush_sync
    # the restarted worker: a new stage (graph replayed from the store), the batch redelivered
    again = Pipeline(store)
    again.feed(enrolment)
    assert count(store, "SELECT count(*) FROM profiles") == 1
    assert count(store, "SELECT count(*) FROM profiles WHERE profile_id = 'member:9'") == 1
    assert count(store, "SELECT count(*) FROM resolved_pending") == 0  # sent, then cleared


def _profiles(store: Store) -> dict[str, object]:
    with store.tx() as conn:
        return dict(conn.execute(text("SELECT profile_id, doc FROM profiles")).all())


def test_two_workers_resolving_in_turn_agree_with_one(store: Store) -> None:
    """Two identity stages (two workers, each with its own graph) over one store, fed in
    turn with records that link the same people across their batches: each catches up on
    what the other committed (under the identity lock, by records.seq), so the profiles are
    those of one stage fed everything. Whichever worker owns which input partition, this is
    what keeps identity exact."""
    batches = [
        [link("c1", at(1), customer_id="c1", email="a@x"),
         buy("A", 5_000, at(2), customer_id="c1")],
        [enroll("4", at(3), email="a@x"), buy("B", 7_000, at(4), customer_id="c2")],
        [link("c2", at(5), customer_id="c2", email="a@x"), refund("RA", "A", 1_000, at(6))],
        [buy("C", 9_000, at(7), member_no="4"), refund("RB", "B", 500, at(8))],
    ]
    one = Pipeline(store)
    for b in batches:
        one.feed(b)
    want = _profiles(store)
    assert list(want) == ["member:4"]  # everyone is one member in the end
    truncate(store)
    first, second = Pipeline(store), Pipeline(store)
    for i, b in enumerate(batches):
        (first if i % 2 == 0 else second).identity.process([Msg(cloudevent(r)) for r in b])
    for p in (first, second):  # every notification, to one profile stage
        first.out.sent += [m for m in p.out.sent if m not in first.out.sent]
    first.drain()
    assert _profiles(store) == want


def test_catching_up_teaches_forgotten_purchases(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's record names a purchase this worker has forgotten; and a restarted
    worker replays the whole store in chunks while forgetting purchase nodes between them.
    Both catch-ups teach the purchase back first: nobody crashes on an unknown purchase, and
    the merge another worker made through the purchase is seen (one person, one profile)."""
    monkeypatch.setattr(identity_module, "CATCH_UP_CHUNK", 1)  # forget after every record
    first, second = Pipeline(store), Pipeline(store)
    first.identity.purchase_nodes = second.identity.purchase_nodes = 0

    def run(p: Pipeline, records: list[Record]) -> None:
        p.identity.process([Msg(cloudevent(r)) for r in records])

    run(first, [buy("A", 1_000, at(1), customer_id="c1"),
                link("c2", at(1), customer_id="c2", email="z@x")])
    assert not first.identity.graph.purchase_known("pos:A")
    # the second worker links c2's email to c1's purchase: one person
    run(second, [PurchaseRefunded("pos.returns:R1", "pos", "returns", "R1", at(2),
                                  ids(email="z@x"), "R1", "pos:A", 100)])
    # the first worker catches that up (pos:A forgotten: only the store knows it is c1's)
    # with a batch that names no purchase: a new record of c2 must join the merged person
    run(first, [link("c2b", at(3), customer_id="c2")])
    assert first.identity.graph.cluster_of("customer_id", "c1") == (
        first.identity.graph.cluster_of("customer_id", "c2"))
    assert count(store, "SELECT count(DISTINCT profile_id) FROM records") == 1
    # the same worker places a return without identifiers of that purchase
    run(first, [refund("R2", "A", 100, at(4))])
    # a restarted worker: the whole store replayed one record per chunk, forgetting the
    # purchase between chunks (the old replay raised UnknownPurchase on R2 here)
    again = Pipeline(store)
    again.identity.purchase_nodes = 0
    run(again, [link("c1b", at(5), customer_id="c1")])
    assert again.identity.graph.cluster_of("customer_id", "c2") == (
        again.identity.graph.cluster_of("customer_id", "c1"))
    assert count(store, "SELECT count(*) FROM parked_records") == 0
    assert count(store, "SELECT count(DISTINCT profile_id) FROM records") == 1


def test_a_refused_canonical_event_is_dead_lettered_as_a_cdp_events_message(
    store: Store,
) -> None:
    p = Pipeline(store)
    bad = orjson.loads(cloudevent(buy("A", 1_000, at(1), customer_id="c1")))
    bad["data"]["amount_cents"] = -5  # the domain refuses a negative amount
    p.identity.process([Msg(orjson.dumps(bad), topic="pos.public.transactions", partition=0,
                            offset=41)])
    [(value, headers)] = [(m[1], h) for m, h in zip(p.out.sent, p.out.headers, strict=True)
                          if m[0] == "cdp.dlq"]
    assert value == orjson.dumps(bad)
    named = dict(headers or [])
    assert named.pop("dlq.reason")  # the domain's reason, whatever its words
    assert named == {
        "dlq.code": b"invalid_record", "dlq.topic": b"cdp.events",
        "dlq.source.topic": b"pos.public.transactions", "dlq.source.partition": b"0",
        "dlq.source.offset": b"41",
    }
