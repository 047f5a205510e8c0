"""An independent, deliberately naive reference fold of SPEC 5 (shares no code with
app/domain beyond the record dataclasses it reads and the pydantic Program it reads
settings from).

Strategy: walk a timeline. At every step, recompute from scratch every effect time still
pending (window exits, hold expiries, lot expiries and notices, the lapse deadline) by
scanning all purchases / holds / lots, take the earliest; if it is not after the next
record's time, apply the whole batch of effects at that instant, else apply the record.
Q(t) and the tier are recomputed from the full purchase list every time. Quadratic, simple.

Documented batch order at one instant (docs/domain.md): window exits and hold expiries,
then one tier evaluation; point expiries; expiring notices; lapse risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from app.domain.program import Program
from app.domain.records import Record

RANKS = {
    "IdentityLinked": 0,
    "MemberEnrolled": 1,
    "ConsentChanged": 2,
    "PurchaseCompleted": 3,
    "PurchaseLine": 4,
    "PurchaseRefunded": 5,
    "PointsRedeemed": 6,
    "EngagementRecorded": 7,
}


def order(r: Record) -> tuple[Any, ...]:
    return (r.occurred_at, RANKS[type(r).__name__], r.source, r.table, r.pk, r.record_id)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class P:  # purchase
    rid: str
    pid: str
    at: datetime
    amount: int
    enrolled: bool
    points: int = 0
    refunds: list[tuple[datetime, int]] = field(default_factory=list)
    reversed: int = 0
    exited: bool = False


@dataclass
class L:  # lot
    pid: str
    rid: str
    earned: datetime
    expires: datetime
    remaining: int
    noticed: bool = False
    done: bool = False


@dataclass
class Ev:
    type: str
    at: datetime
    cause: str
    points: int | None
    balance: int
    extra: Any = None

    def key(self) -> tuple[Any, ...]:
        return (self.type, self.at, self.cause, self.points, self.balance, self.extra)


class Reference:
    def __init__(self, program: Program) -> None:
        self.pr = program
        self.window = timedelta(days=program.qualification_window_days)
        self.hold = timedelta(days=program.tier_hold_days)
        self.life = timedelta(days=program.expiry.lot_days)
        self.lead = timedelta(days=program.expiry.notice_lead_days)
        self.thresholds = [t.threshold_cents for t in program.tiers]
        self.names = [t.name for t in program.tiers]
        self.enrolled_at: datetime | None = None
        self.purchases: list[P] = []
        self.lots: list[L] = []
        self.debt = 0
        self.holds: list[tuple[int, datetime, str]] = []  # level, until, cause
        self.tier = 0
        self.lapse_flag = False
        self.lapse_fired_for: datetime | None = None
        self.consent = dict.fromkeys(
            ("email_opt_in", "sms_consent", "admt_opt_out", "push_opt_in", "push_token"), False
        )
        self.events: list[Ev] = []
        self.now: datetime | None = None

    # --- derived quantities, from scratch ---
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots if not lot.done) - self.debt

    def q(self, t: datetime) -> int:
        total = 0
        for p in self.purchases:
            if p.enrolled and t - self.window < p.at <= t:
                total += p.amount - min(p.amount, sum(a for (u, a) in p.refunds if u <= t))
        return total

    def spend_tier(self, q: int) -> int:
        return max(i for i, th in enumerate(self.thresholds) if th <= q)

    def eff_tier(self, t: datetime) -> int:
        held = [lvl for (lvl, until, _) in self.holds if until > t]
        return max([self.spend_tier(self.q(t)), *held])

    def enrolled_purchases(self) -> list[P]:
        return [p for p in self.purchases if p.enrolled]

    def lapse_deadline(self) -> datetime | None:
        ps = self.enrolled_purchases()
        n = len(ps)
        if n < self.pr.lapse.min_purchases or self.lapse_flag:
            return None
        first, last = ps[0].at, ps[-1].at
        span_us = Fraction((last - first) // timedelta(microseconds=1))
        gap_us = math.ceil(Fraction(self.pr.lapse.gap_factor) * span_us / (n - 1))
        gap = max(timedelta(microseconds=gap_us), timedelta(days=self.pr.lapse.floor_days))
        return last + gap

    def pending(self) -> list[datetime]:
        times: list[datetime] = []
        for p in self.purchases:
            if p.enrolled and not p.exited:
                times.append(p.at + self.window)
        times += [until for (_, until, _) in self.holds]
        for lot in self.lots:
            if not lot.done and lot.remaining > 0:
                times.append(lot.expires)
                if not lot.noticed:
                    times.append(lot.expires - self.lead)
        d = self.lapse_deadline()
        if d is not None:
            times.append(d)
        return times

    def emit(
        self, type_: str, at: datetime, cause: str, points: int | None, extra: Any = None
    ) -> None:
        self.events.append(Ev(type_, at, cause, points, self.balance(), extra))

    # --- effects ---
    def effects_at(self, d: datetime) -> None:
        cause = None
        for p in self.purchases:
            if p.enrolled and not p.exited and p.at + self.window <= d:
                p.exited = True
                if p.amount > sum(a for _, a in p.refunds):
                    cause = cause or p.rid
        for h in sorted(self.holds):
            if h[1] <= d:
                self.holds.remove(h)
                cause = cause or h[2]
        if cause is not None:
            self.retier(d, cause)
        for lot in self.lots:
            if not lot.done and lot.expires <= d:
                lot.done = True
                if lot.remaining > 0:
                    pts, lot.remaining = lot.remaining, 0
                    self.emit("points_expired", d, lot.rid, pts)
        for lot in self.lots:
            if not lot.done and not lot.noticed and lot.expires - self.lead <= d:
                lot.noticed = True
                if lot.remaining > 0:
                    self.emit("points_expiring", d, lot.rid, lot.remaining)
        dl = self.lapse_deadline()
        if dl is not None and dl <= d:
            self.lapse_flag = True
            self.emit("lapse_risk", d, self.enrolled_purchases()[-1].rid, None)

    def retier(self, t: datetime, cause: str) -> None:
        new = self.eff_tier(t)
        if new != self.tier:
            kind = "tier_upgraded" if new > self.tier else "tier_downgraded"
            self.tier = new
            self.emit(kind, t, cause, None, self.names[new])

    def advance(self, t: datetime, inclusive: bool) -> None:
        while True:
            times = self.pending()
            if not times:
                break
            d = min(times)
            if d > t or (d == t and not inclusive):
                break
            self.effects_at(d)
        self.now = t if self.now is None else max(self.now, t)

    # --- records ---
    def take(self, points: int, first_pid: str | None) -> int:
        lots = [lot for lot in self.lots if lot.pid == first_pid and not lot.done]
        lots += sorted((lot for lot in self.lots if lot.pid != first_pid and not lot.done),
                       key=lambda lot: lot.earned)
        for lot in lots:
            n = min(lot.remaining, points)
            lot.remaining -= n
            points -= n
        return points

    def apply(self, r: Record) -> None:
        self.advance(r.occurred_at, inclusive=True)
        t = r.occurred_at
        kind = type(r).__name__
        if kind == "MemberEnrolled" and self.enrolled_at is None:
            self.enrolled_at = t
            self.emit("member_enrolled", t, r.record_id, None)
        elif kind == "ConsentChanged":
            changed = {k: v for k, v in r.consent if self.consent[k] != v}  # type: ignore[attr-defined]
            self.consent.update(changed)
            if changed:
                self.emit("consent_changed", t, r.record_id, None)
        elif kind == "PurchaseCompleted":
            self.purchase(r, t)
        elif kind == "PurchaseRefunded":
            self.refund(r, t)
        elif kind == "PointsRedeemed":
            pts: int = r.points  # type: ignore[attr-defined]
            short = self.take(pts, None)
            self.debt += short
            self.emit("points_redeemed", t, r.record_id, pts)
            if short:
                self.emit("redemption_overdraft", t, r.record_id, pts)

    def campaign(self, t: datetime) -> Fraction:
        active = [Fraction(c.multiplier) for c in self.pr.campaigns if c.start <= t < c.end]
        return max(active) if active else Fraction(1)

    def purchase(self, r: Any, t: datetime) -> None:
        enrolled = self.enrolled_at is not None and self.enrolled_at <= t
        p = P(r.record_id, r.purchase_id, t, r.amount_cents, enrolled)
        self.lapse_flag = False
        if not enrolled:
            self.purchases.append(p)
            return
        q_before = self.q(t)
        b_before = self.balance()
        mult = (Fraction(self.pr.earn_rate) * Fraction(self.pr.tiers[self.tier].multiplier)
                * self.campaign(t))
        p.points = math.floor((r.amount_cents // 100) * mult)
        self.purchases.append(p)
        if p.points:
            repay = min(self.debt, p.points)
            self.debt -= repay
            self.lots.append(L(r.purchase_id, r.record_id, t, t + self.life, p.points - repay))
            self.emit("points_earned", t, r.record_id, p.points)
        q_after = self.q(t)
        st0, st1 = self.spend_tier(q_before), self.spend_tier(q_after)
        for lvl in range(st0 + 1, st1 + 1):
            self.holds = [h for h in self.holds if h[0] != lvl]
            self.holds.append((lvl, t + self.hold, r.record_id))
        self.retier(t, r.record_id)
        if self.tier + 1 < len(self.thresholds):
            top = self.thresholds[self.tier + 1]
            lo = math.ceil(top * Fraction(self.pr.tier_approaching_ratio))
            if q_before < lo <= q_after < top:
                self.emit("tier_approaching", t, r.record_id, None, self.names[self.tier + 1])
        b_after = self.balance()
        for m in self.pr.milestones.thresholds:
            lo = math.ceil(m * Fraction(self.pr.milestones.approaching_ratio))
            if b_before < m <= b_after:
                self.emit("milestone_reached", t, r.record_id, None, m)
            elif b_before < lo <= b_after < m:
                self.emit("milestone_approaching", t, r.record_id, None, m)

    def refund(self, r: Any, t: datetime) -> None:
        p = next(p for p in self.purchases if p.pid == r.purchase_id)
        already = sum(a for _, a in p.refunds)
        inc = min(r.amount_cents, p.amount - already)
        if inc <= 0:
            return
        p.refunds.append((t, inc))
        if not p.enrolled:
            return
        total_rev = math.floor(Fraction(p.points) * (already + inc) / p.amount)
        claw = total_rev - p.reversed
        p.reversed = total_rev
        if claw:
            self.debt += self.take(claw, p.pid)
            self.emit("points_reversed", t, r.record_id, claw)
        self.retier(t, r.record_id)

    # --- run ---
    def run(self, records: list[Record], until: datetime) -> Reference:
        for r in sorted(records, key=order):
            if type(r).__name__ in ("PurchaseLine", "EngagementRecorded"):
                continue
            self.apply(r)
        self.advance(until, inclusive=True)
        return self

    def snapshot(self, records: list[Record]) -> dict[str, Any]:
        def mkey(v: str) -> tuple[int, int, str]:
            return (0, int(v), v) if v.isdigit() else (1, 0, v)

        nos = sorted({i.value for r in records for i in r.identifiers if i.type == "member_no"},
                     key=mkey)
        assert self.now is not None
        return {
            "member_id": nos[0] if nos else None,
            "member_nos": nos,
            "identifiers": sorted({f"{i.type}:{i.value}" for r in records for i in r.identifiers}),
            "enrolled_at": iso(self.enrolled_at),
            "tier": self.names[self.tier] if self.enrolled_at else None,
            "points_balance": self.balance(),
            "qualifying_spend_cents": self.q(self.now),
            "lifetime_spend_cents": sum(
                p.amount - sum(a for _, a in p.refunds) for p in self.purchases
            ),
            "purchase_count": len(self.purchases),
            "last_purchase_at": iso(max((p.at for p in self.purchases), default=None)),
            "lapse_risk": self.lapse_flag,
            "consent": {k: self.consent[k] for k in
                        ("email_opt_in", "sms_consent", "admt_opt_out", "push_opt_in")},
            "as_of": iso(self.now),
        }


def event_keys(events: list[Ev]) -> list[tuple[Any, ...]]:
    return sorted(e.key() for e in events)
