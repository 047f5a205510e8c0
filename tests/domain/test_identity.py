"""Identity resolution: components, survivor rule, deterministic ids, routing of refunds."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.identity import IdentityGraph
from app.domain.profiles import Profiles
from app.domain.program import DEFAULT_PROGRAM, Program
from app.domain.records import (
    AnonymousRecord,
    IdentityLinked,
    InvalidRecord,
    PurchaseCompleted,
    PurchaseRefunded,
    Record,
    UnknownPurchase,
)
from app.domain.state import MemberState
from tests.domain.builders import at, buy, enroll, ids, link, redeem, refund
from tests.domain.helpers import keys
from tests.domain.reference import Reference

P = DEFAULT_PROGRAM.compile()


def test_guest_becomes_member_and_guests_merge_into_members() -> None:
    g = IdentityGraph(P)
    r1 = g.add(link("c1", at(1), customer_id="c1", email="a@x"))
    assert r1.cluster_id.startswith("guest:") and r1.previous_ids == ()
    r2 = g.add(enroll("5", at(2), customer_id="c1"))
    assert r2.cluster_id == "member:5" and r2.previous_ids == (r1.cluster_id,)
    assert r2.events == ()  # a rename, not a merge
    r3 = g.add(link("c2", at(3), customer_id="c2", email="b@x"))
    r4 = g.add(link("u9", at(4), email="b@x", user_id="u9", member_no="3"))
    assert r4.cluster_id == "member:3" and r4.previous_ids == (r3.cluster_id,)
    r5 = g.add(link("x", at(5), email="a@x", user_id="u9"))
    assert r5.cluster_id == "member:3"  # smallest member_no survives
    assert [e.data for e in r5.events] == [{"survivor": "member:3", "absorbed": "member:5"}]
    assert r5.events[0].type == "profiles_merged" and r5.events[0].member_id == "3"


def test_member_no_order_is_numeric() -> None:
    g = IdentityGraph(P)
    g.add(enroll("10", at(1), email="a@x"))
    assert g.add(enroll("9", at(2), email="a@x")).cluster_id == "member:9"


def test_phone_attaches_but_never_joins() -> None:
    g = IdentityGraph(P)
    a = g.add(link("c1", at(1), customer_id="c1", phone="555"))
    b = g.add(link("c2", at(2), customer_id="c2", phone="555"))
    assert a.cluster_id != b.cluster_id
    assert "phone:555" in g.clusters()[a.cluster_id]
    merging_phone = Program.model_validate({"identifiers": {"phone": {"merge": True}}}).compile()
    g2 = IdentityGraph(merging_phone)
    a = g2.add(link("c1", at(1), customer_id="c1", phone="555"))
    assert g2.add(link("c2", at(2), customer_id="c2", phone="555")).cluster_id == a.cluster_id


def test_anonymous_purchase_and_its_return_have_no_identity() -> None:
    """SPEC 2: a POS sale without a card is anonymous: no profile, nothing kept; its
    identifier-less return is an unknown purchase to the graph (the stage drops it)."""
    g = IdentityGraph(P)
    with pytest.raises(AnonymousRecord) as anon:
        g.add(buy("A", 1000, at(1)))
    assert anon.value.record_id == "pos.transactions:A"
    assert g.cluster_of_purchase("pos:A") is None and g.clusters() == {}
    with pytest.raises(UnknownPurchase) as info:
        g.add(refund("R", "A", 100, at(2)))
    assert info.value.record_id == "pos.returns:R"
    # a purchase with identifiers and its identifier-less return still resolve together
    card = g.add(buy("B", 1000, at(3), member_no="7"))
    assert g.add(refund("R3", "B", 100, at(4))).cluster_id == card.cluster_id == "member:7"


def test_grouping_and_ids_independent_of_arrival_order() -> None:
    records = [
        link("c1", at(3), customer_id="c1", email="a@x"),
        link("c2", at(1), customer_id="c2", email="b@x"),
        link("c3", at(2), customer_id="c3", email="a@x"),
        buy("A", 1000, at(0), customer_id="c2"),
        link("c4", at(5), customer_id="c4", email="b@x", member_no="8"),
        buy("B", 1000, at(4)),  # anonymous: forms no cluster
    ]
    seen = set()
    for perm in itertools.permutations(records):
        g = IdentityGraph(P)
        for r in perm:
            try:
                assert g.add(r).cluster_id in g.clusters()
            except AnonymousRecord:
                assert r.record_id == "pos.transactions:B"
        seen.add((tuple(sorted((k, tuple(v)) for k, v in g.clusters().items())),
                  g.cluster_of("email", "a@x"), g.cluster_of_purchase("pos:A")))
    assert len(seen) == 1
    ((clusters, a_cluster, b_cluster),) = seen
    assert b_cluster == "member:8" and a_cluster.startswith("guest:") and len(clusters) == 2


def test_two_members_with_different_tiers_lots_and_debts_merge() -> None:
    m1 = [enroll("1", at(0), customer_id="c1", email="a@x"),
          buy("A", 250_000, at(10), customer_id="c1"),  # gold
          redeem("X", 1000, at(20), customer_id="c1")]
    m2 = [enroll("2", at(5), customer_id="c2"),
          buy("B", 60_000, at(11), customer_id="c2"),  # silver
          redeem("Y", 900, at(12), customer_id="c2"),  # overdraft: debt 300
          buy("C", 10_000, at(30), customer_id="c2")]
    joiner = link("u", at(40), customer_id="c2", email="a@x")
    profiles = Profiles(P)
    before = profiles.ingest_all(m1 + m2)
    assert set(profiles.states) == {"member:1", "member:2"}
    assert profiles.states["member:2"].snapshot()["points_balance"] == -300 + 125
    events = profiles.ingest(joiner)
    assert set(profiles.states) == {"member:1"}
    merged = profiles.states["member:1"]
    merged_events = [e for e in events if e.type == "profiles_merged"]
    assert [e.data for e in merged_events] == [{"survivor": "member:1", "absorbed": "member:2"}]
    snap = merged.snapshot()
    assert snap["member_nos"] == ["1", "2"] and snap["member_id"] == "1"
    assert snap["enrolled_at"] == "2026-01-01T00:00:00.000000Z"
    assert snap["purchase_count"] == 3
    union = m1 + m2 + [joiner]
    ref = Reference(DEFAULT_PROGRAM).run(union, at(40))
    assert snap == ref.snapshot(union)
    # as if always one profile: B earned at gold (1.5x) after A made the member gold
    assert snap["points_balance"] == 2500 - 1000 + 900 - 900 + 150
    assert keys(merged.refold().take_events()) == sorted(e.key() for e in ref.events)
    # events already emitted under member:2 keep their ids and are not emitted again
    emitted = {e.id for e in before}
    assert not emitted & {e.id for e in events}


def test_refund_must_follow_its_purchase_in_the_cluster() -> None:
    s = MemberState(P, "p")
    with pytest.raises(UnknownPurchase):
        s.add(refund("R", "A", 10, at(1)))
    s.add(buy("A", 1000, at(2)))
    with pytest.raises(InvalidRecord, match="before its purchase"):
        s.add(refund("R", "A", 10, at(1)))
    with pytest.raises(InvalidRecord, match="already recorded"):
        s.add(buy("A", 1000, at(2), customer_id="other").__class__(
            "pos.transactions:A2", "pos", "transactions", "A2", at(3), (), "pos:A", 5, "USD"))


def test_graph_storage_round_trip() -> None:
    g = IdentityGraph(P)
    for r in [link("c1", at(1), customer_id="c1", email="a@x"), enroll("4", at(2), email="a@x"),
              buy("A", 100, at(3), customer_id="c1"),
              link("c2", at(4), customer_id="c2", phone="555")]:
        g.add(r)
    g2 = IdentityGraph.from_dict(P, g.to_dict())
    assert g2.clusters() == g.clusters() and g2.to_dict() == g.to_dict()
    nxt = link("c3", at(5), customer_id="c2", email="a@x")
    assert g2.add(nxt) == g.add(nxt)


def _purchase_records(draw: st.DrawFn) -> list[Record]:
    """Purchases, refunds and links over a small pool of identifiers and purchase ids, so
    refunds with identifiers join clusters through their purchase (or precede it)."""
    pool = [{}, {"customer_id": "c1"}, {"customer_id": "c2"}, {"email": "a@x"},
            {"member_no": "7"}, {"phone": "555"}, {"customer_id": "c2", "email": "b@x"}]
    out: list[Record] = []
    for n in range(draw(st.integers(1, 14))):
        who = ids(**draw(st.sampled_from(pool)))
        pid = "pos:" + draw(st.sampled_from("ABCDE"))
        t = at(draw(st.integers(0, 30)))
        kind = draw(st.sampled_from(["buy", "refund", "link"]))
        if kind == "buy":
            out.append(PurchaseCompleted(f"pos.transactions:T{n}", "pos", "transactions", f"T{n}",
                                         t, who, pid, 1000, "USD"))
        elif kind == "refund":
            out.append(PurchaseRefunded(f"pos.returns:R{n}", "pos", "returns", f"R{n}", t, who,
                                        f"R{n}", pid, 100))
        else:
            out.append(IdentityLinked(f"web.customers:L{n}", "web", "customers", f"L{n}", t, who))
    return out


@given(st.data())
def test_forgotten_purchases_restored_from_stored_records_change_nothing(
    data: st.DataObject,
) -> None:
    """A graph that forgets purchase nodes (``forget_purchases``) and, before adding a record
    that names a purchase it no longer knows, re-adds the stored records of that purchase
    (what the identity stage does from the store) resolves every record exactly as a graph
    that never forgot: same cluster ids, same refusals, same clusters."""
    records = data.draw(st.composite(_purchase_records)())
    keep = data.draw(st.integers(0, 2))
    full, lean = IdentityGraph(P), IdentityGraph(P)
    stored: list[Record] = []  # what the store holds: the records placed so far
    for r in records:
        purchase = getattr(r, "purchase_id", None)
        if purchase is not None and not lean.purchase_known(purchase):
            mine = [s for s in stored if getattr(s, "purchase_id", None) == purchase]
            for s in sorted(mine, key=lambda s: not s.identifiers):
                with contextlib.suppress(UnknownPurchase):
                    assert lean.add(s).previous_ids == ()  # nothing but the purchase node
        outcome = []
        for g in (full, lean):
            try:
                res = g.add(r)
                outcome.append((res.cluster_id, res.previous_ids, [e.id for e in res.events]))
            except (AnonymousRecord, UnknownPurchase) as exc:
                outcome.append(type(exc).__name__)
        assert outcome[0] == outcome[1], r
        if not isinstance(outcome[0], str):
            stored.append(r)
        lean.forget_purchases(keep)
    assert lean.clusters() == full.clusters()
    assert len(lean._purchases) <= keep


def test_forget_purchases_keeps_roots_and_counts() -> None:
    g = IdentityGraph(P)
    g.add(buy("A", 100, at(1), customer_id="c1"))
    g.add(buy("B", 100, at(2), customer_id="c1"))
    g.add(buy("P", 100, at(3), phone="555"))  # no merging identifier: the node is the root
    assert g.forget_purchases(1) == 1
    assert not g.purchase_known("pos:A") and g.purchase_known("pos:B")
    assert g.forget_purchases(0) == 1
    assert g.purchase_known("pos:P")  # a cluster's root is never forgotten
    with pytest.raises(UnknownPurchase):
        g.add(refund("R", "A", 10, at(4)))
    g.add(buy("A", 100, at(1), customer_id="c1"))  # the stored record teaches it back
    assert g.add(refund("R", "A", 10, at(4))).cluster_id == g.cluster_of("customer_id", "c1")
