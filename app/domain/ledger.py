"""The points ledger: lots, debt, earn / clawback / redemption / expiry (SPEC 5).

Lots are kept in earn order, which is also expiry order (every lot lives the same number of
days), so "oldest first" consumption and expiry both work at the front of one deque and cost
O(1) amortised. Debt is a single non-negative integer: the balance is ``lots - debt`` and
may go negative; new earns repay debt before they create a lot.

A lot is an immutable tuple ``(purchase_id, cause, earned_at)`` (indexes ``L_*``); the
points it still holds live in ``left`` (lot -> points, only lots holding some), so a lot
is of atomic values and the cyclic GC stops tracking it (a member keeps a year of them),
and a clone copies one dict instead of every lot. It does not store its expiry and notice
times: they are ``earned_at + lot_life`` and ``earned_at + lot_life - notice_lead`` (the
ledger holds both offsets); ``earned_at`` is the purchase's own time object. The fold does
earn, expiry, notices and the next due time inline on the hot path; clawback and
redemption are here.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Final

# fields of a lot
L_PURCHASE: Final = 0
L_CAUSE: Final = 1
L_EARNED: Final = 2
Lot = tuple[str, str, datetime]


class Ledger:
    """Lots and debt of one profile. All amounts are integer points."""

    __slots__ = (
        "by_purchase", "debt", "left", "life", "lots", "notice_offset", "notices", "total"
    )

    def __init__(self, life: timedelta, notice_offset: timedelta) -> None:
        self.life = life  # a lot expires at earned_at + life
        self.notice_offset = notice_offset  # ... and its notice is due at earned_at + this
        self.lots: deque[Lot] = deque()
        self.notices: deque[Lot] = deque()  # lots whose expiring notice is still ahead
        self.by_purchase: dict[str, Lot] = {}
        self.left: dict[Lot, int] = {}  # points left per lot; a lot holding none is absent
        self.total = 0  # sum of left
        self.debt = 0

    def clone(self) -> Ledger:
        """An independent copy (lots are immutable: only the containers are copied)."""
        new = Ledger(self.life, self.notice_offset)
        new.lots = deque(self.lots)
        new.notices = deque(self.notices)
        new.by_purchase = dict(self.by_purchase)
        new.left = dict(self.left)
        new.total, new.debt = self.total, self.debt
        return new

    @property
    def balance(self) -> int:
        return self.total - self.debt

    def _take(self, lot: Lot, points: int) -> int:
        """Take up to ``points`` from ``lot``; returns the points it still holds."""
        left = self.left
        held = left.get(lot, 0)
        n = held if held < points else points
        held -= n
        self.total -= n
        if held:
            left[lot] = held
        else:
            left.pop(lot, None)
        return held

    def _take_oldest(self, points: int) -> int:
        """Consume up to ``points`` from the oldest lots; returns what could not be taken."""
        lots, left = self.lots, self.left
        while points and lots:
            lot = lots[0]
            n = left.get(lot, 0)
            if self._take(lot, points):
                return 0
            points -= n
            lots.popleft()
            self.by_purchase.pop(lot[L_PURCHASE], None)
        return points

    def claw(self, points: int, purchase_id: str) -> int:
        """Reverse ``points``: that purchase's lot first, then oldest lots, rest to debt.

        Returns the part that became debt.
        """
        lot = self.by_purchase.get(purchase_id)
        if lot is not None:
            held = self.left.get(lot, 0)
            if held:
                points -= held - self._take(lot, points)
        short = self._take_oldest(points)
        self.debt += short
        return short

    def redeem(self, points: int) -> int:
        """Consume oldest lots first; the shortfall becomes debt and is returned."""
        short = self._take_oldest(points)
        self.debt += short
        return short
