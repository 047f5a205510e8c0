"""MemberState API details: snapshot shape and time travel, what-if quote, storage, events."""

from __future__ import annotations

import orjson

from app.domain.program import DEFAULT_PROGRAM, Program
from app.domain.state import MemberState
from tests.domain.builders import T0, at, buy, consent, enroll, link
from tests.domain.reference import Reference

P = DEFAULT_PROGRAM.compile()
M = {"member_no": "7"}
HISTORY = [
    link("c1", at(-1), customer_id="c1", email="ann@x.com", phone="5550100"),
    enroll("7", at(0), customer_id="c1"),
    consent("c1", at(0), email_opt_in=True),
    buy("A", 45_000, at(1), **M),
    buy("B", 46_000, at(2), **M),
]
EXPORT_FIELDS = {
    "member_id", "member_nos", "identifiers", "enrolled_at", "tier", "points_balance",
    "qualifying_spend_cents", "lifetime_spend_cents", "purchase_count", "last_purchase_at",
    "lapse_risk", "consent", "as_of",
}


def state() -> MemberState:
    s = MemberState(P, "member:7")
    s.add_many(HISTORY)
    return s


def test_snapshot_has_exactly_the_export_fields_and_is_json() -> None:
    snap = state().snapshot()
    assert set(snap) == EXPORT_FIELDS
    assert set(snap["consent"]) == {"email_opt_in", "sms_consent", "admt_opt_out", "push_opt_in"}
    assert snap["identifiers"] == ["customer_id:c1", "email:ann@x.com", "member_no:7",
                                   "phone:5550100"]
    assert snap["tier"] == "silver" and snap["as_of"] == "2026-01-03T00:00:00.000000Z"
    orjson.dumps(snap)


def test_snapshot_is_a_pure_function_of_records_and_time() -> None:
    s = state()
    past = s.snapshot(at(1))
    assert past["purchase_count"] == 1 and past["tier"] == "member"
    future = s.snapshot(at(400))
    assert future["tier"] == "member" and future["points_balance"] == 0
    assert s.snapshot()["tier"] == "silver"  # the live state did not move
    ref = Reference(DEFAULT_PROGRAM).run(HISTORY, at(400))
    assert future == ref.snapshot(HISTORY)


def test_quote_purchase() -> None:
    q = state().quote_purchase(10_050, at(3))
    assert q["enrolled"] and q["tier"] == "silver" and q["multiplier"] == "1.25"
    assert q["points"] == 125 and q["balance"] == 450 + 460
    assert (q["next_milestone"], q["milestone_gap_points"]) == (1000, 90)
    assert q["closes_milestone_gap"]
    assert (q["next_tier"], q["tier_gap_cents"]) == ("gold", 200_000 - 91_000)
    guest = MemberState(P, "guest:x")
    guest.add(buy("G", 2_000, at(1), customer_id="c9"))
    gq = guest.quote_purchase(2_000, at(2))
    assert (gq["enrolled"], gq["points"], gq["points_if_enrolled"], gq["tier"]) == (
        False, 0, 20, None)
    campaign = Program.model_validate({"campaigns": [
        {"name": "x2", "start": T0, "end": at(10), "multiplier": 2}]}).compile()
    assert MemberState(campaign, "g").quote_purchase(1_000, at(5))["points_if_enrolled"] == 20


def test_storage_round_trip_continues_identically() -> None:
    s = state()
    blob = s.to_bytes()
    restored = MemberState.from_bytes(P, blob)
    assert restored.snapshot() == s.snapshot()
    plain = MemberState.from_bytes(P, s.to_bytes(compress=False))
    assert plain.to_dict() == restored.to_dict() == s.to_dict()
    nxt = buy("C", 120_000, at(3), **M)
    assert [e.id for e in restored.add(nxt)] == [e.id for e in s.add(nxt)]


def test_events_are_json_and_carry_member_and_cause() -> None:
    s = MemberState(P, "member:7")
    events = s.add_many(HISTORY)
    types = [e.type for e in events]
    assert types == ["member_enrolled", "consent_changed", "points_earned", "tier_approaching",
                     "points_earned", "tier_upgraded"]
    for e in events:
        d = orjson.loads(orjson.dumps(e.to_dict()))
        assert d["member_id"] == "7" and d["profile_id"] == "member:7"
        assert d["cause_record_id"] and "balance" in d["data"]
    notice = s.advance_to(at(400))
    assert {e.type for e in notice} >= {"points_expiring", "points_expired", "tier_downgraded"}
    assert orjson.dumps([e.to_dict() for e in notice])


def test_engagement_is_not_stored_unless_it_brings_a_new_identifier() -> None:
    from app.domain.records import EngagementRecorded, Identifier

    s = state()
    n = len(s.records)
    seen = EngagementRecorded("app.app_events:E1", "app", "app_events", "E1", at(3),
                              (Identifier("customer_id", "c1"),), "view", "sku1")
    assert s.add(seen) == [] and len(s.records) == n
    new = EngagementRecorded("app.app_events:E2", "app", "app_events", "E2", at(4),
                             (Identifier("user_id", "u1"),), "view", None)
    assert s.add(new) == [] and len(s.records) == n + 1
    assert "user_id:u1" in s.snapshot()["identifiers"]
    assert MemberState.from_bytes(P, s.to_bytes()).snapshot() == s.snapshot()


def test_compacted_state_is_small_and_continues_identically() -> None:
    s, hot = state(), state()
    size = s.compact()
    assert s.is_cold and size == len(s.to_bytes()) < 2048
    assert (s.as_of, s.member_id, s.next_due) == (hot.as_of, hot.member_id, hot.next_due)
    assert s.advance_to(at(2, 12)) == hot.advance_to(at(2, 12)) == []
    assert s.is_cold and s.as_of == at(2, 12)  # nothing due: only as_of moved
    nxt = buy("C", 120_000, at(3), **M)
    assert [e.id for e in s.add(nxt)] == [e.id for e in hot.add(nxt)]
    assert not s.is_cold and s.snapshot() == hot.snapshot()
    s.compact()
    assert [e.id for e in s.advance_to(at(400))] == [e.id for e in hot.advance_to(at(400))]
    assert s.snapshot() == hot.snapshot() and s.records == hot.records


def test_reads_the_readable_format_1() -> None:
    s = state()
    old = MemberState.from_bytes(P, orjson.dumps(s.to_dict()))
    assert old.snapshot() == s.snapshot() and old.records == s.records
