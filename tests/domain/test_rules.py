"""Table-driven examples for every rule and edge of issue 4 / SPEC 5.

Each case is (records, clock, expected snapshot fields, expected events, forbidden events).
Every case is also checked against the independent reference fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from app.domain.program import DEFAULT_PROGRAM, Program
from app.domain.records import Record
from app.domain.state import MemberState
from tests.domain.builders import T0, at, buy, consent, enroll, redeem, refund
from tests.domain.helpers import keys
from tests.domain.reference import Reference

M = {"member_no": "1"}


@dataclass
class Case:
    name: str
    records: list[Record]
    until: datetime
    snapshot: dict[str, Any] = field(default_factory=dict)
    # (type, effective time, {data subset}) that must be emitted
    events: list[tuple[str, datetime, dict[str, Any]]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    program: dict[str, Any] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)  # exact number of events of a type


CAMPAIGNS = {
    "campaigns": [
        {"name": "double", "start": T0 + timedelta(days=10), "end": T0 + timedelta(days=12),
         "multiplier": "2.0"},
        {"name": "boost", "start": T0 + timedelta(days=11), "end": T0 + timedelta(days=20),
         "multiplier": "1.5"},
    ]
}

CASES = [
    Case(
        "purchase before enrollment then refunded",
        [buy("A", 10000, at(-5), **M), enroll("1", at(0)), refund("R", "A", 4000, at(2))],
        at(3),
        {"points_balance": 0, "qualifying_spend_cents": 0, "lifetime_spend_cents": 6000,
         "purchase_count": 1, "tier": "member"},
        [("member_enrolled", at(0), {})],
        ["points_earned", "points_reversed"],
    ),
    Case(
        "refund spanning several lots",
        [enroll("1", at(0)), buy("A", 20000, at(1), **M), buy("B", 30000, at(2), **M),
         buy("C", 10000, at(3), **M), redeem("X", 250, at(4), **M),
         refund("R", "B", 30000, at(5))],
        at(6),
        {"points_balance": 75, "qualifying_spend_cents": 30000, "lifetime_spend_cents": 30000},
        [("points_reversed", at(5), {"points": 300, "to_debt": 0, "balance": 75})],
    ),
    Case(
        "refund beyond all lots becomes debt, next earn repays it",
        [enroll("1", at(0)), buy("A", 10000, at(1), **M), redeem("X", 80, at(2), **M),
         refund("R", "A", 10000, at(3)), buy("B", 20000, at(4), **M)],
        at(5),
        {"points_balance": 120},
        [("points_reversed", at(3), {"points": 100, "to_debt": 80, "balance": -80}),
         ("points_earned", at(4), {"points": 200, "debt_repaid": 80, "balance": 120})],
    ),
    Case(
        "cumulative clawback floor(p*R/a), not per-refund floors",
        [enroll("1", at(0)), buy("A", 1050, at(1), **M), refund("R1", "A", 350, at(2)),
         refund("R2", "A", 350, at(3)), refund("R3", "A", 350, at(4)),
         refund("R4", "A", 350, at(5))],
        at(6),
        {"points_balance": 0, "lifetime_spend_cents": 0},
        [("points_reversed", at(2), {"points": 3}), ("points_reversed", at(3), {"points": 3}),
         ("points_reversed", at(4), {"points": 4})],
        count={"points_reversed": 3},
    ),
    Case(
        "redemption overdraft then an earn repaying the debt",
        [enroll("1", at(0)), buy("A", 50000, at(1), **M), redeem("X", 700, at(2), **M),
         buy("B", 30000, at(3), **M)],
        at(4),
        {"points_balance": 175},
        [("points_redeemed", at(2), {"points": 700, "balance": -200}),
         ("redemption_overdraft", at(2), {"shortfall": 200, "balance": -200}),
         ("points_earned", at(3), {"points": 375, "debt_repaid": 200, "balance": 175})],
    ),
    Case(
        "campaign multiplier on top of tier multiplier; largest campaign wins; end exclusive",
        [enroll("1", at(0)), buy("A", 60000, at(1), **M), buy("B", 10000, at(11), **M),
         buy("C", 10001, at(12), **M), buy("D", 10000, at(20), **M)],
        at(21),
        {"tier": "silver"},
        [("points_earned", at(1), {"points": 600, "multiplier": "1"}),
         ("points_earned", at(11), {"points": 250, "multiplier": "2.5"}),
         ("points_earned", at(12), {"points": 187, "multiplier": "1.875"}),
         ("points_earned", at(20), {"points": 125, "multiplier": "1.25"})],
        program=CAMPAIGNS,
    ),
    Case(
        "tier hold expiring while spend has dropped",
        [enroll("1", at(0)), buy("A", 60000, at(1), **M), refund("R", "A", 30000, at(10))],
        at(400),
        {"tier": "member", "qualifying_spend_cents": 0},
        [("tier_upgraded", at(1), {"to_tier": "silver"}),
         ("tier_downgraded", at(181), {"to_tier": "member", "reason": "hold_expired",
                                       "qualifying_spend_cents": 30000})],
        program={"tier_hold_days": 180},
        count={"tier_downgraded": 1},
    ),
    Case(
        "hold and window end at the same instant: a single downgrade",
        [enroll("1", at(0)), buy("A", 60000, at(1), **M), refund("R", "A", 30000, at(10))],
        at(400),
        {"tier": "member"},
        [("tier_downgraded", at(366), {"from_tier": "silver", "to_tier": "member"})],
        count={"tier_downgraded": 1, "tier_upgraded": 1},
    ),
    Case(
        "downgrade when a purchase leaves the 365-day window",
        [enroll("1", at(0)), buy("A", 40000, at(0), **M), buy("B", 20000, at(100), **M)],
        at(366),
        {"tier": "member", "qualifying_spend_cents": 20000},
        [("tier_upgraded", at(100), {"to_tier": "silver"}),
         ("tier_downgraded", at(365), {"to_tier": "member", "reason": "window_exit",
                                       "qualifying_spend_cents": 20000})],
        program={"tier_hold_days": 30},
    ),
    Case(
        "tier_approaching when Q rises into [90%, 100%)",
        [enroll("1", at(0)), buy("A", 44000, at(1), **M), buy("B", 1000, at(2), **M),
         buy("C", 1000, at(3), **M)],
        at(4),
        {"qualifying_spend_cents": 46000},
        [("tier_approaching", at(2), {"next_tier": "silver", "gap_cents": 5000})],
        count={"tier_approaching": 1},
    ),
    Case(
        "no tier_approaching when one purchase jumps past the threshold",
        [enroll("1", at(0)), buy("A", 44000, at(1), **M), buy("B", 10000, at(2), **M)],
        at(3),
        {"tier": "silver"},
        [("tier_upgraded", at(2), {"to_tier": "silver"})],
        ["tier_approaching"],
    ),
    Case(
        "milestone_approaching when B rises into [950, 1000)",
        [enroll("1", at(0)), buy("A", 94000, at(1), **M), buy("B", 1000, at(2), **M)],
        at(3),
        {"points_balance": 952},
        [("milestone_approaching", at(2), {"milestone": 1000, "gap_points": 48})],
        ["milestone_reached"],
    ),
    Case(
        "no milestone_approaching when one earn jumps past M; every threshold crossed",
        [enroll("1", at(0)), buy("A", 94000, at(1), **M), buy("B", 10000, at(2), **M),
         buy("C", 500000, at(3), **M)],
        at(4),
        {"points_balance": 940 + 125 + 6250},
        [("milestone_reached", at(2), {"milestone": 1000}),
         ("milestone_reached", at(3), {"milestone": 5000})],
        ["milestone_approaching"],
    ),
    Case(
        "lapse risk once per episode, ended by the next purchase",
        [enroll("1", at(0)), buy("A", 1000, at(0), **M), buy("B", 1000, at(10), **M),
         buy("C", 1000, at(20), **M), buy("D", 1000, at(100), **M)],
        at(400),
        {"lapse_risk": True},
        [("lapse_risk", at(41), {"purchases": 3}),
         # n=4, first 0, last 100: 2 x 100/3 days, rounded up to the microsecond
         ("lapse_risk", at(100) + timedelta(microseconds=-(-2 * 100 * 86400 * 10**6 // 3)),
          {"purchases": 4})],
        count={"lapse_risk": 2},
    ),
    Case(
        "an effect due at t comes before a record at t (lapse fires, then purchase ends it)",
        [enroll("1", at(0)), buy("A", 1000, at(0), **M), buy("B", 1000, at(10), **M),
         buy("C", 1000, at(20), **M), buy("D", 1000, at(41), **M)],
        at(42),
        {"lapse_risk": False},
        [("lapse_risk", at(41), {})],
    ),
    Case(
        "points expiring notice 30 days before, then expiry",
        [enroll("1", at(0)), buy("A", 10000, at(0), **M), redeem("X", 40, at(10), **M)],
        at(400),
        {"points_balance": 0},
        [("points_expiring", at(335), {"points": 60, "expires_at": at(365)}),
         ("points_expired", at(365), {"points": 60, "balance": 0})],
    ),
    Case(
        "no notice when nothing remains; expiry before a redemption at the same instant",
        [enroll("1", at(0)), buy("A", 10000, at(0), **M), buy("B", 10000, at(100), **M),
         redeem("X", 100, at(10), **M), redeem("Y", 150, at(465), **M)],
        at(500),
        {"points_balance": -150},
        [("redemption_overdraft", at(465), {"shortfall": 150})],
        count={"points_expiring": 1, "points_expired": 1},
    ),
    Case(
        "consent: latest value by event time, an unchanged value emits nothing",
        [consent("c1", at(1), email_opt_in=True), consent("c1", at(2), email_opt_in=True),
         consent("c1", at(3), sms_consent=True, email_opt_in=False)],
        at(4),
        {"consent": {"email_opt_in": False, "sms_consent": True, "admt_opt_out": False,
                     "push_opt_in": False}, "tier": None, "member_id": None},
        [("consent_changed", at(3), {"changed": {"sms_consent": True, "email_opt_in": False}})],
        count={"consent_changed": 2},
    ),
]


def fold(case: Case) -> tuple[dict[str, Any], list[Any], Program]:
    program = Program.model_validate(case.program)
    state = MemberState(program.compile(), "p")
    events = []
    for r in sorted(case.records, key=lambda r: r.sort_key()):
        events += state.add(r)
    events += state.advance_to(case.until)
    return state.snapshot(), events, program


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rule(case: Case) -> None:
    snap, events, program = fold(case)
    for k, v in case.snapshot.items():
        assert snap[k] == v, (k, snap[k], v)
    for type_, when, data in case.events:
        matching = [e for e in events if e.type == type_ and e.effective_at == when]
        assert matching, f"no {type_} at {when}: {[(e.type, e.effective_at) for e in events]}"
        assert any(all(e.data.get(k) == v for k, v in data.items()) for e in matching), (
            [e.data for e in matching], data)
    for type_ in case.forbidden:
        assert type_ not in [e.type for e in events]
    for type_, n in case.count.items():
        assert [e.type for e in events].count(type_) == n, type_
    ref = Reference(program).run(case.records, case.until)
    assert ref.snapshot(case.records) == snap
    assert keys(events) == sorted(e.key() for e in ref.events)


def test_default_program_equals_spec() -> None:
    p = DEFAULT_PROGRAM.compile()
    assert p.tier_thresholds == (0, 50_000, 200_000, 500_000)
    assert [str(m) for m in p.tier_multipliers] == ["1", "5/4", "3/2", "2"]
    assert p.milestones == (1000, 5000, 10000)
    assert p.merging == {"member_no", "card_no", "customer_id", "user_id", "email"}
    assert (p.lot_life.days, p.notice_lead.days, p.window.days, p.hold.days) == (365, 30, 365, 365)
    assert (p.lapse_min_purchases, p.lapse_factor, p.lapse_floor.days) == (3, 2, 21)
