"""Hypothesis strategies: random programs and multi-person histories on a coarse time grid
(whole days and half days), so records land exactly on expiry / window / hold instants."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from app.domain.program import Program
from app.domain.records import (
    ConsentChanged,
    IdentityLinked,
    MemberEnrolled,
    PointsRedeemed,
    PurchaseCompleted,
    PurchaseRefunded,
    Record,
)
from tests.domain.builders import T0, ids

END = T0 + timedelta(days=1500)


@dataclass
class History:
    program: Program
    records: list[Record]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    campaigns: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 2))):
        start = T0 + timedelta(days=draw(st.integers(0, 600)))
        campaigns.append({
            "name": f"c{n}", "start": start,
            "end": start + timedelta(days=draw(st.integers(1, 60))),
            "multiplier": draw(st.sampled_from(["1.5", "2", "3", "0.5"])),
        })
    lot_days, lead = draw(st.sampled_from([(365, 30), (365, 30), (100, 10), (30, 0)]))
    return Program.model_validate({
        "campaigns": campaigns,
        "tier_hold_days": draw(st.sampled_from([365, 365, 180, 30, 0])),
        "qualification_window_days": draw(st.sampled_from([365, 365, 90])),
        "expiry": {"lot_days": lot_days, "notice_lead_days": lead},
        "lapse": {"min_purchases": draw(st.sampled_from([3, 2])),
                  "gap_factor": draw(st.sampled_from(["2", "1.5"])),
                  "floor_days": draw(st.sampled_from([21, 1]))},
    })


@st.composite
def histories(draw: st.DrawFn, max_people: int = 3, max_records: int = 12) -> History:
    counter = itertools.count()
    records: list[Record] = []
    people = draw(st.integers(1, max_people))

    def when() -> Any:
        return T0 + timedelta(days=draw(st.integers(0, 800)), hours=draw(st.sampled_from([0, 12])))

    for k in range(people):
        who = {"customer_id": f"c{k}"}
        if draw(st.integers(0, 3)) > 0:
            mno = str(k + 1)
            records.append(MemberEnrolled(
                f"web.loyalty_enrollments:{mno}", "web", "loyalty_enrollments", mno, when(),
                ids(member_no=mno, customer_id=f"c{k}", email=f"p{k}@x"), mno))
        bought: list[PurchaseCompleted] = []
        for _ in range(draw(st.integers(0, max_records))):
            kind = draw(st.sampled_from(["buy", "buy", "buy", "refund", "redeem", "consent"]))
            n = next(counter)
            t = when()
            if kind == "buy" or (kind == "refund" and not bought):
                amount = draw(st.one_of(
                    st.integers(0, 300_000),
                    st.sampled_from([99, 100, 44_000, 45_000, 50_000, 94_000, 200_000]),
                ))
                anon = draw(st.integers(0, 9)) == 0
                p = PurchaseCompleted(
                    f"pos.transactions:T{n}", "pos", "transactions", f"T{n}", t,
                    () if anon else ids(**who), f"pos:T{n}", amount, "USD")
                bought.append(p)
                records.append(p)
            elif kind == "refund":
                p = draw(st.sampled_from(bought))
                rt = p.occurred_at + timedelta(days=draw(st.integers(0, 400)))
                records.append(PurchaseRefunded(
                    f"pos.returns:R{n}", "pos", "returns", f"R{n}", rt, (), f"R{n}",
                    p.purchase_id, draw(st.integers(1, max(1, p.amount_cents)))))
            elif kind == "redeem":
                records.append(PointsRedeemed(
                    f"app.redemptions:X{n}", "app", "redemptions", f"X{n}", t, ids(**who),
                    f"X{n}", draw(st.integers(1, 3000)), None))
            else:
                flags = draw(st.dictionaries(
                    st.sampled_from(["email_opt_in", "sms_consent", "admt_opt_out",
                                     "push_opt_in"]), st.booleans(), min_size=1))
                records.append(ConsentChanged(
                    f"web.customers:c{k}#{n}", "web", "customers", f"c{k}", t, ids(**who),
                    tuple(sorted(flags.items()))))
    if people > 1 and draw(st.booleans()):
        a, b = draw(st.permutations(range(people)))[:2]
        records.append(IdentityLinked(
            f"app.users:U{a}{b}", "app", "users", f"U{a}{b}", when(),
            ids(customer_id=f"c{a}", email=f"p{b}@x")))
    return History(draw(programs()), records)
