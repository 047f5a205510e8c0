"""The event-time fold of one identity cluster (SPEC 5): records in, state and events out.

A :class:`Fold` is fed records in fold order (:meth:`Record.sort_key`) and explicit clock
advances. Before a record at time t it applies every time-driven effect due at or before t
(an effect due at t comes before a record at t). All pending effects live in FIFO queues
whose heads are the only candidates for "next due" (window exits and lot expiries are
created in time order because every purchase lives the same number of days), so applying
a record in order costs O(1) amortised. Effects due at the same instant are applied as one
batch in this order: window exits and tier-hold expiries (then one tier re-evaluation, so a
simultaneous exit + hold expiry yields one ``tier_downgraded``), point expiries, expiring
notices, lapse risk.

The fold never reads a clock and never does float arithmetic: multipliers are Fractions,
amounts integer cents, times aware UTC datetimes.

It is the hot path of the domain (every record of every member goes through it), so it is
written for CPython speed rather than elegance: purchases and lots are small lists (indexes
``P_*`` and ``ledger.L_*``) instead of dataclasses, the ledger's earn and expiry are inlined,
a record is dispatched on its exact type, and an event is built as the tuple of its data
values: its id (a blake2b of its spelled time) and its data dict are made only when read
(:class:`app.domain.events.LoyaltyEvent`). Same states, events and ids as before.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from copy import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

from app.domain.events import LoyaltyEvent
from app.domain.ledger import L_CAUSE, L_EARNED, L_PURCHASE, Ledger, Lot
from app.domain.program import CompiledProgram
from app.domain.records import (
    ConsentChanged,
    Identifier,
    MemberEnrolled,
    PointsRedeemed,
    PurchaseCompleted,
    PurchaseRefunded,
    Record,
    smallest_member_no,
)
from app.domain.tiers import campaign_index

FAR = datetime.max.replace(tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_US = timedelta(microseconds=1)
CONSENT_DEFAULTS = {
    "email_opt_in": False,
    "sms_consent": False,
    "admt_opt_out": False,
    "push_opt_in": False,
    "push_token": False,
}

# What the fold remembers of a purchase, enough to apply any later refund: a tuple
# (record_id, at, amount, refunded, points, reversed, enrolled), replaced by a refund.
# Immutable and of atomic values, so the cyclic GC stops tracking it: a member keeps one
# per purchase forever, and tracked containers make every full collection longer. A
# purchase is in the Q window while enrolled and ``at + window`` is after the fold's time
# (window exits due at or before a record's time are applied before the record).
P_RECORD: Final = 0
P_AT: Final = 1
P_AMOUNT: Final = 2
P_REFUNDED: Final = 3
P_POINTS: Final = 4
P_REVERSED: Final = 5
P_ENROLLED: Final = 6
Purchase = tuple[str, datetime, int, int, int, int, bool]

# The keys of each event type's data, in order ("balance", after the event, last). An
# event holds the tuple of its values and makes the dict (and its id) only when read.
K_ENROLLED: Final = ("member_no", "balance")
K_CONSENT: Final = ("changed", "balance")
K_EARNED: Final = ("points", "amount_cents", "multiplier", "debt_repaid", "purchase_id",
                   "balance")
K_EXPIRED: Final = ("points", "earned_at", "balance")
K_EXPIRING: Final = ("points", "expires_at", "balance")
K_LAPSE: Final = ("purchases", "last_purchase_at", "mean_gap_seconds", "balance")
K_TIER: Final = ("from_tier", "to_tier", "qualifying_spend_cents", "reason", "balance")
K_APPROACHING: Final = ("qualifying_spend_cents", "next_tier", "gap_cents", "balance")
K_MILESTONE: Final = ("milestone", "gap_points", "balance")
K_REVERSED: Final = ("points", "refund_cents", "purchase_id", "to_debt", "balance")
K_REDEEMED: Final = ("points", "redemption_id", "balance")
K_OVERDRAFT: Final = ("shortfall", "points", "balance")


def _fraction_text(f: Fraction) -> str:
    return str((Decimal(f.numerator) / Decimal(f.denominator)).normalize())


class Fold:
    """Derived state of one cluster at ``as_of``; see the module docstring for the order."""

    __slots__ = (
        "_held",
        "_hold_next",
        "_last_purchase_record",
        "_next_due",
        "as_of",
        "consent",
        "emit_since",
        "enrolled_at",
        "events",
        "holds",
        "identifiers",
        "lapse_due",
        "lapse_first",
        "lapse_last",
        "lapse_n",
        "lapse_risk",
        "last_purchase_at",
        "ledger",
        "lifetime",
        "member_id",
        "profile_id",
        "program",
        "purchase_count",
        "purchases",
        "qualifying",
        "tier",
        "window",
    )

    def __init__(
        self,
        program: CompiledProgram,
        profile_id: str,
        member_id: str | None,
        emit_since: datetime | None = None,
        collect: bool = True,
    ) -> None:
        self.program = program
        self.profile_id = profile_id
        self.member_id = member_id
        # Events are built only when collecting and effective at/after emit_since: a refold
        # whose prefix is already known skips the (hashing) cost of events it would discard.
        self.emit_since = emit_since
        self.events: list[LoyaltyEvent] | None = [] if collect else None
        self.as_of: datetime | None = None
        self.enrolled_at: datetime | None = None
        self.consent: dict[str, bool] = dict(CONSENT_DEFAULTS)
        self.ledger = Ledger(program.lot_life, program.notice_offset)
        self.purchases: dict[str, Purchase] = {}
        self.window: deque[Purchase] = deque()
        self.qualifying = 0
        self.tier = 0
        self.holds: dict[int, tuple[datetime, str]] = {}
        self._hold_next = FAR  # earliest hold end, or earlier (see _effects_at)
        self._held = 0  # the highest held level (max(holds)), 0 without holds
        self.identifiers: set[Identifier] = set()  # every identifier the cluster linked
        self.lifetime = 0
        self.purchase_count = 0
        self.last_purchase_at: datetime | None = None
        self.lapse_n = 0
        self.lapse_first: datetime | None = None
        self.lapse_last: datetime | None = None
        self.lapse_due: datetime | None = None
        self.lapse_risk = False
        self._last_purchase_record = ""
        self._next_due = FAR  # never later than the true next due time

    # -- events -------------------------------------------------------------------------

    def _on(self, at: datetime) -> bool:
        """Whether events effective at ``at`` are built (quiet folds build none)."""
        return self.events is not None and (self.emit_since is None or at >= self.emit_since)

    def _emit(
        self, type_: str, at: datetime, cause: str, disc: str, keys: tuple[str, ...],
        values: tuple[Any, ...],
    ) -> None:
        """Append one event (data: ``keys`` = ``values`` + the balance now); the caller
        checked :meth:`_on`. Its id and data dict are made when read (see LoyaltyEvent)."""
        led = self.ledger
        events = self.events
        assert events is not None
        events.append(LoyaltyEvent(
            None, type_, self.profile_id, self.member_id, at, cause,
            (*values, led.total - led.debt), disc, keys,
        ))

    def clone(self) -> Fold:
        """An independent copy of the derived state (events list not copied).

        Lets a late record share the fold of the unchanged prefix between the "before"
        and "after" folds instead of folding the prefix twice.
        """
        new = copy(self)
        new.purchases = dict(self.purchases)  # purchases are immutable tuples
        new.window = deque(self.window)
        new.ledger = self.ledger.clone()
        new.holds = dict(self.holds)
        new.consent = dict(self.consent)
        new.identifiers = set(self.identifiers)
        new.events = None if self.events is None else []
        return new

    def take_events(self) -> list[LoyaltyEvent]:
        """Events produced since the last call (in fold order)."""
        if not self.events:
            return []
        out, self.events = self.events, []
        return out

    # -- driving ------------------------------------------------------------------------

    def run(self, records: Iterable[Record], until: datetime | None = None) -> Fold:
        """Apply records (already in fold order), then advance to ``until`` if later."""
        apply = self.apply
        for r in records:
            apply(r)
        if until is not None:
            self.advance(until)
        return self

    def advance(self, to: datetime) -> None:
        """Apply every time-driven effect due at or before ``to``."""
        if self._next_due <= to:
            self._run_effects(to)
        if self.as_of is None or to > self.as_of:
            self.as_of = to

    def apply(self, r: Record) -> None:
        """Apply one record; the caller guarantees fold order."""
        t = r.occurred_at
        if self._next_due <= t:
            self._run_effects(t)
        as_of = self.as_of
        if as_of is None or t > as_of:
            self.as_of = t
        ids = r.identifiers
        # before the record's own events, so they carry the member id; an identifier
        # already known was already considered for the member id
        if ids and not self.identifiers.issuperset(ids):
            self.identifiers.update(ids)
            self.member_id = smallest_member_no(ids, self.member_id)
        if isinstance(r, PurchaseCompleted):  # most records: test it first
            self._purchase(r, t)
        elif isinstance(r, PurchaseRefunded):
            self._refund(r, t)
        elif isinstance(r, PointsRedeemed):
            self._redeem(r, t)
        elif isinstance(r, MemberEnrolled):
            if self.enrolled_at is None:
                self.enrolled_at = t
                if self._on(t):
                    self._emit("member_enrolled", t, r.record_id, "", K_ENROLLED, (r.member_no,))
        elif isinstance(r, ConsentChanged):
            changed = {k: v for k, v in r.consent if self.consent[k] != v}
            if changed:
                self.consent.update(changed)
                if self._on(t):
                    self._emit("consent_changed", t, r.record_id, "", K_CONSENT, (changed,))

    # -- time-driven effects ------------------------------------------------------------

    def _compute_next_due(self) -> datetime:
        window = self.window
        best: datetime = window[0][P_AT] + self.program.window if window else FAR
        if self._hold_next < best:
            best = self._hold_next
        # the ledger's next due (expiry or notice), emptied lots skipped
        led = self.ledger
        lots, notices, left = led.lots, led.notices, led.left
        while lots and lots[0] not in left:
            lots.popleft()
        if lots:
            due: datetime = lots[0][L_EARNED] + led.life
            if due < best:
                best = due
        while notices and notices[0] not in left:
            notices.popleft()
        if notices:
            due = notices[0][L_EARNED] + led.notice_offset
            if due < best:
                best = due
        lapse = self.lapse_due
        if lapse is not None and lapse < best and not self.lapse_risk:
            best = lapse
        return best

    def _run_effects(self, to: datetime) -> None:
        while True:
            d = self._compute_next_due()
            self._next_due = d
            if d > to:
                return
            self._effects_at(d)

    def _effects_at(self, d: datetime) -> None:
        cause: str | None = None
        reason = ""
        window = self.window
        if window:
            win = self.program.window
            while window and window[0][P_AT] + win <= d:
                p = window.popleft()
                net = p[P_AMOUNT] - p[P_REFUNDED]
                self.qualifying -= net
                if cause is None and net:  # a fully refunded purchase leaving changes nothing
                    cause, reason = p[P_RECORD], "window_exit"
        holds = self.holds
        if self._hold_next <= d:
            for level in sorted(holds):
                until, hold_cause = holds[level]
                if until <= d:
                    del holds[level]
                    if cause is None:
                        cause, reason = hold_cause, "hold_expired"
            self._hold_next = min([u for u, _ in holds.values()], default=FAR)
            self._held = max(holds, default=0)
        if cause is not None:
            self._retier(d, cause, reason)
        events = self.events
        on = events is not None and (self.emit_since is None or d >= self.emit_since)
        led = self.ledger
        lots = led.lots
        left = led.left
        if lots:  # expiries, one event per lot with the balance after it
            life = led.life
            by_purchase = led.by_purchase
            while lots and lots[0][L_EARNED] + life <= d:
                lot = lots.popleft()
                by_purchase.pop(lot[L_PURCHASE], None)
                amount = left.pop(lot, 0)
                if amount:
                    led.total -= amount
                    if on:
                        assert events is not None
                        events.append(LoyaltyEvent(
                            None, "points_expired", self.profile_id, self.member_id, d,
                            lot[L_CAUSE], (amount, lot[L_EARNED], led.total - led.debt),
                            lot[L_PURCHASE], K_EXPIRED,
                        ))
        notices = led.notices
        if notices:  # expiring notices of lots still holding points
            offset = led.notice_offset
            while notices and notices[0][L_EARNED] + offset <= d:
                lot = notices.popleft()
                held = left.get(lot)
                if held and on:
                    assert events is not None
                    events.append(LoyaltyEvent(
                        None, "points_expiring", self.profile_id, self.member_id, d,
                        lot[L_CAUSE], (held, lot[L_EARNED] + led.life, led.total - led.debt),
                        lot[L_PURCHASE], K_EXPIRING,
                    ))
        if self.lapse_due is not None and self.lapse_due <= d and not self.lapse_risk:
            self.lapse_risk = True
            last, first, n = self.lapse_last, self.lapse_first, self.lapse_n
            assert last is not None and first is not None
            if on:
                self._emit(
                    "lapse_risk", d, self._last_purchase_record, "", K_LAPSE,
                    (n, last, (last - first) // _SECOND // (n - 1)),
                )

    # -- tiers --------------------------------------------------------------------------

    def _effective_tier(self) -> int:
        # the base tier's threshold is 0 and Q is never negative: bisect gives >= 1
        st = bisect_right(self.program.tier_thresholds, self.qualifying) - 1
        held = self._held
        return held if held > st else st

    def _retier(self, at: datetime, cause: str, reason: str) -> None:
        new = self._effective_tier()
        old = self.tier
        if new == old:
            return
        self.tier = new
        if not self._on(at):
            return
        names = self.program.tier_names
        self._emit(
            "tier_upgraded" if new > old else "tier_downgraded", at, cause, names[new],
            K_TIER, (names[old], names[new], self.qualifying, reason),
        )

    # -- records ------------------------------------------------------------------------

    def _mult(self, tier: int, at: datetime) -> tuple[int, int, str]:
        """Earn multiplier (rate x tier x campaign) as integer numerator, denominator and
        text, cached on the program per (tier, campaign)."""
        prog = self.program
        ci = campaign_index(prog, at) if prog.campaigns else -1
        key = (tier, ci)
        hit = prog.mult_cache.get(key)
        if hit is None:
            camp = Fraction(1) if ci < 0 else prog.campaigns[ci][2]
            m = prog.earn_rate * prog.tier_multipliers[tier] * camp
            hit = prog.mult_cache[key] = (m.numerator, m.denominator, _fraction_text(m))
        return hit

    def _multiplier(self, tier: int, at: datetime) -> tuple[Fraction, str]:
        num, den, text = self._mult(tier, at)
        return Fraction(num, den), text

    def _purchase(self, r: PurchaseCompleted, t: datetime) -> None:
        a = r.amount_cents
        rid = r.record_id
        pid = r.purchase_id
        self.lifetime += a
        self.purchase_count += 1
        self.last_purchase_at = t
        self.lapse_risk = False  # the next purchase ends a lapse episode
        if self.enrolled_at is None:
            self.purchases[pid] = (rid, t, a, 0, 0, 0, False)
            return
        prog = self.program
        events = self.events
        on = events is not None and (self.emit_since is None or t >= self.emit_since)
        num, den, mult_text = self._mult(self.tier, t)
        pts = (a // 100) * num // den
        p = (rid, t, a, 0, pts, 0, True)
        self.purchases[pid] = p
        self.window.append(p)
        led = self.ledger
        b_before = led.total - led.debt
        if pts:
            # ledger.earn, inlined: debt is repaid first, the rest becomes a lot
            debt = led.debt
            repaid = debt if debt < pts else pts
            if repaid:
                led.debt = debt - repaid
            rest = pts - repaid
            if rest:
                led.total += rest
            if on:
                assert events is not None
                events.append(LoyaltyEvent(
                    None, "points_earned", self.profile_id, self.member_id, t, rid,
                    (pts, a, mult_text, repaid, pid, led.total - led.debt), "", K_EARNED,
                ))
            if rest:
                lot: Lot = (pid, rid, t)
                led.lots.append(lot)
                led.notices.append(lot)
                led.by_purchase[pid] = lot
                led.left[lot] = rest
        q_before = self.qualifying
        q = self.qualifying = q_before + a
        thresholds = prog.tier_thresholds
        # spend tiers before and after (base threshold 0, Q >= 0: bisect gives >= 1)
        st_after = bisect_right(thresholds, q) - 1
        if st_after:
            st_before = bisect_right(thresholds, q_before) - 1
            if st_after > st_before:
                until = t + prog.hold
                for level in range(st_before + 1, st_after + 1):
                    self.holds[level] = (until, rid)
                if st_after > self._held:
                    self._held = st_after
                if until < self._hold_next:  # (a refreshed hold may leave it early: harmless)
                    self._hold_next = until
        # _retier, inlined: tier = max(spend tier, held levels)
        new = self._held
        if st_after > new:
            new = st_after
        old = self.tier
        if new != old:
            self.tier = new
            if on:
                names = prog.tier_names
                self._emit(
                    "tier_upgraded" if new > old else "tier_downgraded", t, rid, names[new],
                    K_TIER, (names[old], names[new], q, "purchase"),
                )
        nxt = new + 1
        if on and nxt < len(thresholds):
            top = thresholds[nxt]
            if q_before < prog.tier_approach_lo[nxt] <= q < top:
                self._emit(
                    "tier_approaching", t, rid, prog.tier_names[nxt], K_APPROACHING,
                    (q, prog.tier_names[nxt], top - q),
                )
        if pts and on:
            # milestones.crossings, inlined: upward crossings of the balance
            b_after = led.total - led.debt
            marks = prog.milestone_marks  # nothing to emit unless a mark is crossed
            if b_after > b_before and bisect_right(marks, b_before) != bisect_right(
                marks, b_after
            ):
                for m, lo in prog.milestone_bands:
                    if b_before < m <= b_after:
                        self._emit("milestone_reached", t, rid, str(m), K_MILESTONE, (m, 0))
                    elif b_before < lo <= b_after < m:
                        self._emit("milestone_approaching", t, rid, str(m), K_MILESTONE,
                                   (m, m - b_after))
        # lapse clock: purchases made while enrolled (lapse.lapse_deadline, inlined)
        n = self.lapse_n = self.lapse_n + 1
        first = self.lapse_first
        if first is None:
            first = self.lapse_first = t
        self.lapse_last = t
        self._last_purchase_record = rid
        # keep _next_due a lower bound of every pending effect
        nd = t + prog.first_due
        if nd > self._next_due:
            nd = self._next_due
        if n < prog.lapse_min_purchases:
            self.lapse_due = None
        else:
            num = prog.lapse_num * ((t - first) // _US)
            den = prog.lapse_den * (n - 1)
            gap = -((-num) // den)
            floor = prog.lapse_floor_us
            due = self.lapse_due = t + _US * (gap if gap > floor else floor)
            if due < nd:
                nd = due
        self._next_due = nd

    def _refund(self, r: PurchaseRefunded, t: datetime) -> None:
        pid = r.purchase_id
        p = self.purchases[pid]
        rid, at, amount, refunded, points, reversed_, enrolled = p
        dr = min(amount - refunded, r.amount_cents)
        if dr <= 0:
            return
        refunded += dr
        self.lifetime -= dr
        rev = points * refunded // amount if enrolled else reversed_
        new = self.purchases[pid] = (rid, at, amount, refunded, points, rev, enrolled)
        in_window = enrolled and at + self.program.window > t
        if in_window:  # the window holds this very tuple: replace it there too
            window = self.window
            for i, q in enumerate(window):
                if q is p:
                    window[i] = new
                    break
        if not enrolled:
            return  # a purchase made before enrollment moves no points and no Q
        inc = rev - reversed_
        if inc:
            to_debt = self.ledger.claw(inc, pid)
            if self._on(t):
                self._emit(
                    "points_reversed", t, r.record_id, "", K_REVERSED, (inc, dr, pid, to_debt)
                )
        if in_window:
            self.qualifying -= dr
            self._retier(t, r.record_id, "refund")

    def _redeem(self, r: PointsRedeemed, t: datetime) -> None:
        short = self.ledger.redeem(r.points)
        if not self._on(t):
            return
        self._emit("points_redeemed", t, r.record_id, "", K_REDEEMED,
                   (r.points, r.redemption_id))
        if short:
            self._emit("redemption_overdraft", t, r.record_id, "", K_OVERDRAFT,
                       (short, r.points))
