"""The points ledger: lots, debt, earn / clawback / redemption / expiry (SPEC 5).

Lots are kept in earn order, which is also expiry order (every lot lives the same number of
days), so "oldest first" consumption and expiry both work at the front of one deque and cost
O(1) amortised. Debt is a single non-negative integer: the balance is ``lots - debt`` and
may go negative; new earns repay debt before they create a lot.

A lot is a small list ``[purchase_id, cause, earned_at, remaining]`` (indexes ``L_*``):
building one costs a quarter of a slots dataclass, and one is built per earn on the hot
path. It does not store its expiry and notice times: they are ``earned_at + lot_life`` and
``earned_at + lot_life - notice_lead`` (the ledger holds both offsets); ``earned_at`` is the
purchase's own time object. The fold does earn, expiry, notices and the next due time
inline on the hot path; clawback and redemption are here.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

# fields of a lot
L_PURCHASE, L_CAUSE, L_EARNED, L_REMAINING = range(4)
Lot = list[Any]


class Ledger:
    """Lots and debt of one profile. All amounts are integer points."""

    __slots__ = ("by_purchase", "debt", "life", "lots", "notice_offset", "notices", "total")

    def __init__(self, life: timedelta, notice_offset: timedelta) -> None:
        self.life = life  # a lot expires at earned_at + life
        self.notice_offset = notice_offset  # ... and its notice is due at earned_at + this
        self.lots: deque[Lot] = deque()
        self.notices: deque[Lot] = deque()  # lots whose expiring notice is still ahead
        self.by_purchase: dict[str, Lot] = {}
        self.total = 0  # sum of remaining over lots
        self.debt = 0

    def clone(self) -> Ledger:
        """An independent copy (lots are mutable and shared by three indexes)."""
        new = Ledger(self.life, self.notice_offset)
        copies = {id(lot): lot.copy() for lot in self.lots}
        for lot in self.notices:
            if id(lot) not in copies:
                copies[id(lot)] = lot.copy()
        new.lots = deque(copies[id(lot)] for lot in self.lots)
        new.notices = deque(copies[id(lot)] for lot in self.notices)
        new.by_purchase = {
            k: copies[id(lot)] for k, lot in self.by_purchase.items() if id(lot) in copies
        }
        new.total, new.debt = self.total, self.debt
        return new

    @property
    def balance(self) -> int:
        return self.total - self.debt

    def _take_oldest(self, points: int) -> int:
        """Consume up to ``points`` from the oldest lots; returns what could not be taken."""
        lots = self.lots
        while points and lots:
            lot = lots[0]
            n = min(lot[L_REMAINING], points)
            lot[L_REMAINING] -= n
            self.total -= n
            points -= n
            if not lot[L_REMAINING]:
                lots.popleft()
                self.by_purchase.pop(lot[L_PURCHASE], None)
        return points

    def claw(self, points: int, purchase_id: str) -> int:
        """Reverse ``points``: that purchase's lot first, then oldest lots, rest to debt.

        Returns the part that became debt.
        """
        lot = self.by_purchase.get(purchase_id)
        if lot is not None and lot[L_REMAINING]:
            n = min(lot[L_REMAINING], points)
            lot[L_REMAINING] -= n
            self.total -= n
            points -= n
        short = self._take_oldest(points)
        self.debt += short
        return short

    def redeem(self, points: int) -> int:
        """Consume oldest lots first; the shortfall becomes debt and is returned."""
        short = self._take_oldest(points)
        self.debt += short
        return short
