"""Identity resolution: components, survivor rule, deterministic ids, routing of refunds."""

from __future__ import annotations

import itertools

import pytest

from app.domain.identity import IdentityGraph
from app.domain.profiles import Profiles
from app.domain.program import DEFAULT_PROGRAM, Program
from app.domain.records import AnonymousRecord, InvalidRecord, UnknownPurchase
from app.domain.state import MemberState
from tests.domain.builders import at, buy, enroll, link, redeem, refund
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
