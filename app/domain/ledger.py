"""The points ledger: lots, debt, earn / clawback / redemption / expiry (SPEC 5).

Lots are kept in earn order, which is also expiry order (every lot lives the same number of
days), so "oldest first" consumption and expiry both work at the front of one deque and cost
O(1) amortised. Debt is a single non-negative integer: the balance is ``lots - debt`` and
may go negative; new earns repay debt before they create a lot.

A lot does not store its expiry and notice times: they are ``earned_at + lot_life`` and
``earned_at + lot_life - notice_lead`` (the ledger holds both offsets), which saves two
datetimes per live lot; ``earned_at`` is the purchase's own time object.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from copy import copy
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(slots=True)
class Lot:
    """One earn. ``remaining`` shrinks by redemptions, clawbacks and expiry."""

    purchase_id: str
    cause: str  # record id of the purchase that earned it
    earned_at: datetime
    remaining: int


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
        copies = {id(lot): copy(lot) for lot in self.lots}
        for lot in self.notices:
            copies.setdefault(id(lot), copy(lot))
        new.lots = deque(copies[id(lot)] for lot in self.lots)
        new.notices = deque(copies[id(lot)] for lot in self.notices)
        new.by_purchase = {
            k: copies[id(lot)] for k, lot in self.by_purchase.items() if id(lot) in copies
        }
        new.total, new.debt = self.total, self.debt
        return new

    def expires_at(self, lot: Lot) -> datetime:
        return lot.earned_at + self.life

    @property
    def balance(self) -> int:
        return self.total - self.debt

    def earn(self, lot: Lot) -> int:
        """Add an earn of ``lot.remaining`` points; debt is repaid first. Returns the repaid."""
        repaid = min(self.debt, lot.remaining)
        self.debt -= repaid
        lot.remaining -= repaid
        if lot.remaining:
            self.lots.append(lot)
            self.notices.append(lot)
            self.by_purchase[lot.purchase_id] = lot
            self.total += lot.remaining
        return repaid

    def _take_oldest(self, points: int) -> int:
        """Consume up to ``points`` from the oldest lots; returns what could not be taken."""
        lots = self.lots
        while points and lots:
            lot = lots[0]
            n = min(lot.remaining, points)
            lot.remaining -= n
            self.total -= n
            points -= n
            if not lot.remaining:
                lots.popleft()
                self.by_purchase.pop(lot.purchase_id, None)
        return points

    def claw(self, points: int, purchase_id: str) -> int:
        """Reverse ``points``: that purchase's lot first, then oldest lots, rest to debt.

        Returns the part that became debt.
        """
        lot = self.by_purchase.get(purchase_id)
        if lot is not None and lot.remaining:
            n = min(lot.remaining, points)
            lot.remaining -= n
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

    def next_due(self) -> datetime | None:
        """Earliest pending expiry or expiring notice (lots emptied meanwhile are skipped)."""
        lots, notices = self.lots, self.notices
        while lots and not lots[0].remaining:
            lots.popleft()
        while notices and not notices[0].remaining:
            notices.popleft()
        if lots:
            expires = lots[0].earned_at + self.life
            if notices:
                notice = notices[0].earned_at + self.notice_offset
                if notice < expires:
                    return notice
            return expires
        return notices[0].earned_at + self.notice_offset if notices else None

    def expire(self, at: datetime) -> Iterator[tuple[Lot, int]]:
        """Expire, one by one, the lots due at or before ``at``; yields (lot, points expired).

        A generator so the caller sees the balance after each lot (one event per lot).
        """
        lots = self.lots
        if not lots:
            return
        life = self.life
        while lots and lots[0].earned_at + life <= at:
            lot = lots.popleft()
            self.by_purchase.pop(lot.purchase_id, None)
            if lot.remaining:
                amount, lot.remaining = lot.remaining, 0
                self.total -= amount
                yield lot, amount

    def due_notices(self, at: datetime) -> list[Lot]:
        """Lots whose notice is due at or before ``at`` and that still hold points."""
        out: list[Lot] = []
        notices = self.notices
        if not notices:
            return out
        offset = self.notice_offset
        while notices and notices[0].earned_at + offset <= at:
            lot = notices.popleft()
            if lot.remaining:
                out.append(lot)
        return out
