"""One identity cluster's member state: its record history plus the derived fold.

This is the object the stream topology keeps per cluster (Faust table value or Postgres
row). The history is the source of truth; the fold is a cache of "history folded up to
``as_of``". Three ways in:

* **in order** (the common case: record sorts after every stored record and is not before
  ``as_of``): applied to the live fold, O(1) amortised; its events are returned.
* **late** (sorts before a stored record, or before ``as_of``): the history is refolded in
  event-time order. The events returned are those of the new fold that the old fold had not
  produced (compared by id, only for effective times at or after the late record's time,
  since the prefix is identical). Events of the old fold whose ids vanish are *not*
  retracted: loyalty events are moments that were true given what was known; the corrected
  numbers reach consumers through the next profile snapshot.
* **merge**: :meth:`MemberState.merged` folds the union of the histories and emits the new
  fold's events that none of the merged states had produced.

Duplicates (same record id, same content) change nothing and return no events.
``purchase.line`` and ``engagement.recorded`` records do not affect loyalty state and are
not stored (decisioning keeps its own view of them), except as an identity link when they
bring an identifier the cluster did not know.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from app.domain.events import LoyaltyEvent
from app.domain.fold import P_AT, P_RECORD, Fold
from app.domain.milestones import next_milestone_gap
from app.domain.program import CompiledProgram
from app.domain.records import (
    EngagementRecorded,
    IdentityLinked,
    InvalidRecord,
    PurchaseCompleted,
    PurchaseLine,
    PurchaseRefunded,
    Record,
    UnknownPurchase,
    format_time,
    member_no_order,
    parse_time,
    record_from_data,
    record_to_data,
    smallest_member_no,
)
from app.domain.storage import decode_records, encode_records, from_us, to_us
from app.domain.tiers import next_tier_gap

FORMAT_VERSION = 2  # of to_bytes(); to_dict() writes format 1; both are read
_NOT_STORED = (PurchaseLine, EngagementRecorded)


def _key(r: Record) -> tuple[datetime, int, str, str, str, str]:
    return r.sort_key()


def _time(dt: datetime | None) -> str | None:
    return None if dt is None else format_time(dt)


class MemberState:
    """History + derived state of one cluster. Not thread-safe; one owner (its partition).

    A state is *hot* (history as records plus the live fold) or, after :meth:`compact`,
    *cold*: only its stored form (:meth:`to_bytes`, ~1.5 KB for a typical member) plus
    ``as_of``, ``next_due`` and ``member_id``. Any other use restores it transparently
    (a quiet refold of the history, no events), so an owner can compact idle members and
    keep millions of them in memory.
    """

    __slots__ = ("_cold", "_fold", "_records", "profile_id", "program")

    def __init__(self, program: CompiledProgram, profile_id: str) -> None:
        self.program = program
        self.profile_id = profile_id
        self._records: list[Record] = []  # fold order
        self._fold = Fold(program, profile_id, None)
        # when cold: (stored form, as_of, next_due, member_id); _records and _fold unset
        self._cold: tuple[bytes, datetime | None, datetime, str | None] | None = None

    # -- hot / cold ---------------------------------------------------------------------

    def compact(self) -> int:
        """Drop the records and the fold, keep the stored form; returns its size in bytes.

        The next use other than ``as_of``/``next_due``/``member_id``/``to_bytes()``
        restores the state (:meth:`thaw`), identical to what it was.
        """
        if self._cold is None:
            f = self._fold
            self._cold = (self.to_bytes(), f.as_of, f._next_due, f.member_id)
            del self._records, self._fold
        return len(self._cold[0])

    @property
    def is_cold(self) -> bool:
        return self._cold is not None

    def thaw(self) -> None:
        """Restore a compacted state (no-op when hot): decode and quietly refold."""
        cold = self._cold
        if cold is None:
            return
        self._records, self._fold = self._restore(
            self.program, orjson.loads(zlib.decompress(cold[0]))
        )
        self._cold = None
        if cold[1] is not None:  # advance_to() while cold moved only as_of
            self._fold.advance(cold[1])

    @property
    def records(self) -> list[Record]:
        """The history in fold order (read-only by convention)."""
        if self._cold is not None:
            self.thaw()
        return self._records

    @records.setter
    def records(self, value: list[Record]) -> None:
        self.thaw()
        self._records = value

    # -- reading ------------------------------------------------------------------------

    @property
    def as_of(self) -> datetime | None:
        return self._fold.as_of if self._cold is None else self._cold[1]

    @property
    def next_due(self) -> datetime:
        """A lower bound of the next time-driven effect (far future when none is pending).

        Lets a wall-clock timer skip the states with nothing due instead of advancing all.
        """
        return self._fold._next_due if self._cold is None else self._cold[2]

    @property
    def member_id(self) -> str | None:
        return self._fold.member_id if self._cold is None else self._cold[3]

    @property
    def fold(self) -> Fold:
        """The live derived state (read-only by convention)."""
        if self._cold is not None:
            self.thaw()
        return self._fold

    # -- writing ------------------------------------------------------------------------

    def _validate(self, r: Record) -> None:
        purchases = self._fold.purchases
        if isinstance(r, PurchaseRefunded):
            p = purchases.get(r.purchase_id)
            if p is None:
                raise UnknownPurchase(
                    r.record_id, f"refund of unknown purchase {r.purchase_id!r}"
                )
            if r.occurred_at < p[P_AT]:
                raise InvalidRecord(
                    r.record_id, f"refund before its purchase {r.purchase_id!r}"
                )
        elif isinstance(r, PurchaseCompleted):
            p = purchases.get(r.purchase_id)
            if p is not None and p[P_RECORD] != r.record_id:
                raise InvalidRecord(
                    r.record_id,
                    f"purchase {r.purchase_id!r} already recorded by {p[P_RECORD]}",
                )

    def add(self, r: Record) -> list[LoyaltyEvent]:
        """Add one record; returns the loyalty events not emitted before (see module doc)."""
        if self._cold is not None:
            self.thaw()
        fold = self._fold
        if isinstance(r, _NOT_STORED):
            # lines and engagement do not move loyalty state; only an identifier the
            # cluster did not know yet is kept (as an identity link), for the export
            if not r.identifiers or fold.identifiers.issuperset(r.identifiers):
                return []
            r = IdentityLinked(r.record_id, r.source, r.table, r.pk, r.occurred_at, r.identifiers)
        records = self._records
        t = r.occurred_at
        as_of = fold.as_of
        if as_of is None or t >= as_of:
            # in order: sorts after the last record (compare whole keys only on a tie)
            if not records:
                ordered = True
            else:
                last = records[-1]
                lt = last.occurred_at
                ordered = t > lt or (t == lt and r.sort_key() > last.sort_key())
            if ordered:
                self._validate(r)
                records.append(r)
                fold.apply(r)
                return fold.take_events()
        key = r.sort_key()
        pos = bisect_left(records, key, key=_key)
        if pos < len(records) and records[pos].record_id == r.record_id:
            if records[pos] == r:
                return []
            raise InvalidRecord(r.record_id, "record id reused with different content")
        self._validate(r)
        return self._late(r, pos)

    def _late(self, r: Record, pos: int) -> list[LoyaltyEvent]:
        since = r.occurred_at
        old = self._fold
        records = self._records
        until = old.as_of if old.as_of is not None and old.as_of > since else since
        # fold the unchanged prefix once, quietly (its events were emitted already)
        after = Fold(self.program, self.profile_id, old.member_id, collect=False)
        after.run(records[:pos])
        before = after.clone()
        suffix = records[pos:]
        for f in (before, after):
            f.events, f.emit_since = [], since
        before.run(suffix, old.as_of)
        after.apply(r)
        after.run(suffix, until)
        records.insert(pos, r)
        seen = {e.id for e in before.take_events()}
        out = [e for e in after.take_events() if e.id not in seen]
        after.emit_since = None
        self._fold = after
        return out

    def add_many(self, records: Iterable[Record]) -> list[LoyaltyEvent]:
        """Add records in fold order (cheap for a batch of late records too)."""
        out: list[LoyaltyEvent] = []
        for r in sorted(records, key=_key):
            out.extend(self.add(r))
        return out

    def advance_to(self, at: datetime) -> list[LoyaltyEvent]:
        """Apply time-driven effects up to ``at``; returns the new events."""
        cold = self._cold
        if cold is not None:
            blob, as_of, due, member_id = cold
            if at < due:  # nothing due: only as_of moves, the state stays cold
                if as_of is None or at > as_of:
                    self._cold = (blob, at, due, member_id)
                return []
            self.thaw()
        self._fold.advance(at)
        return self._fold.take_events()

    def refold(self, as_of: datetime | None = None, *, collect: bool = True) -> Fold:
        """A fresh fold of the history (records at or before ``as_of``), to ``as_of``."""
        records: Sequence[Record] = self.records
        if as_of is not None and records and records[-1].occurred_at > as_of:
            records = [r for r in records if r.occurred_at <= as_of]
        until = self._fold.as_of if as_of is None else as_of
        return Fold(self.program, self.profile_id, self.member_id, collect=collect).run(
            records, until
        )

    @classmethod
    def merged(
        cls, program: CompiledProgram, profile_id: str, states: Sequence[MemberState]
    ) -> tuple[MemberState, list[LoyaltyEvent]]:
        """The state over the union of histories, as if it had always been one profile.

        Returns the new state and the events none of ``states`` had emitted. (The
        ``profiles_merged`` events come from identity resolution, which knows survivor and
        absorbed.) Also used to rename a cluster (one state, new id).
        """
        by_id: dict[str, Record] = {}
        for s in states:
            for r in s.records:
                by_id.setdefault(r.record_id, r)
        out = cls(program, profile_id)
        out._records = sorted(by_id.values(), key=_key)
        times = [s.as_of for s in states if s.as_of is not None]
        until = max(times) if times else None
        seen: set[str] = set()
        for s in states:
            seen.update(e.id for e in s.refold().take_events())
        # learn the member id first so every event payload carries it
        member_id = smallest_member_no(i for r in out._records for i in r.identifiers)
        fold = Fold(program, profile_id, member_id).run(out._records, until)
        out._fold = fold
        return out, [e for e in fold.take_events() if e.id not in seen]

    # -- export -------------------------------------------------------------------------

    def snapshot(self, as_of: datetime | None = None) -> dict[str, Any]:
        """Exactly the export fields of SPEC 5, JSON-able (times RFC 3339 ``Z``)."""
        f = self.fold
        if as_of is not None and as_of != f.as_of:
            f = self.refold(as_of, collect=False)
        idents = {i.key for i in f.identifiers}
        nos = sorted(
            {i.value for i in f.identifiers if i.type == "member_no"}, key=member_no_order
        )
        enrolled = f.enrolled_at is not None
        return {
            "member_id": nos[0] if nos else None,
            "member_nos": nos,
            "identifiers": sorted(idents),
            "enrolled_at": _time(f.enrolled_at),
            "tier": self.program.tier_names[f.tier] if enrolled else None,
            "points_balance": f.ledger.balance,
            "qualifying_spend_cents": f.qualifying,
            "lifetime_spend_cents": f.lifetime,
            "purchase_count": f.purchase_count,
            "last_purchase_at": _time(f.last_purchase_at),
            "lapse_risk": f.lapse_risk,
            "consent": {
                k: f.consent[k]
                for k in ("email_opt_in", "sms_consent", "admt_opt_out", "push_opt_in")
            },
            "as_of": _time(f.as_of),
        }

    def quote_purchase(self, amount_cents: int, at: datetime) -> dict[str, Any]:
        """What-if for decisioning: what a purchase of ``amount_cents`` at ``at`` would earn.

        Uses the tier held at the state's ``as_of`` (the stream layer keeps it current)
        and the campaigns active at ``at``. ``points_if_enrolled`` is what a non-member
        would have earned at the base tier (the enrollment offer states it).
        """
        f = self.fold
        enrolled = f.enrolled_at is not None and at >= f.enrolled_at
        tier = f.tier if enrolled else 0
        mult, mult_text = f._multiplier(tier, at)
        points = (amount_cents // 100) * mult.numerator // mult.denominator
        balance = f.ledger.balance
        ms = next_milestone_gap(self.program, balance)
        nt = next_tier_gap(self.program, tier, f.qualifying)
        return {
            "enrolled": enrolled,
            "points": points if enrolled else 0,
            "points_if_enrolled": points,
            "multiplier": mult_text,
            "tier": self.program.tier_names[tier] if enrolled else None,
            "balance": balance,
            "next_milestone": ms[0] if ms else None,
            "milestone_gap_points": ms[1] if ms else None,
            "closes_milestone_gap": bool(ms and enrolled and points >= ms[1]),
            "next_tier": nt[0] if nt else None,
            "tier_gap_cents": nt[1] if nt else None,
        }

    # -- storage ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Readable JSON-able form (format 1): the history and the horizon; the fold is
        derived."""
        return {
            "v": 1,
            "profile_id": self.profile_id,
            "as_of": _time(self.as_of),
            "records": [[r.TYPE, record_to_data(r)] for r in self.records],
        }

    def to_bytes(self, *, compress: bool = True) -> bytes:
        """The stored form (format 2, :mod:`app.domain.storage`): orjson of the history as
        compact rows, zlib-compressed by default (a typical member: ~1.5 KB)."""
        if compress and self._cold is not None:
            return self._cold[0]
        as_of = self.as_of
        raw = orjson.dumps({
            "v": FORMAT_VERSION,
            "profile_id": self.profile_id,
            "as_of": None if as_of is None else to_us(as_of),
            "records": encode_records(self.records),
        })
        return zlib.compress(raw, 6) if compress else raw

    @classmethod
    def _restore(cls, program: CompiledProgram, d: dict[str, Any]) -> tuple[list[Record], Fold]:
        """History and quiet fold of a stored form (format 1 or 2)."""
        v = d.get("v")
        if v == FORMAT_VERSION:
            records = decode_records(d["records"])
            as_of = None if d.get("as_of") is None else from_us(d["as_of"])
        elif v == 1:
            records = sorted(
                (record_from_data(t, data, currencies=program.currencies)
                 for t, data in d["records"]),
                key=_key,
            )
            as_of = parse_time(d["as_of"], d["profile_id"], "as_of") if d.get("as_of") else None
        else:
            raise ValueError(f"unsupported member state format {v!r}")
        fold = Fold(program, d["profile_id"], None, collect=False).run(records, as_of)
        fold.events = []
        return records, fold

    @classmethod
    def from_dict(cls, program: CompiledProgram, d: dict[str, Any]) -> MemberState:
        """Rebuild by refolding the stored history (no events are emitted)."""
        out = cls(program, d["profile_id"])
        out._records, out._fold = cls._restore(program, d)
        return out

    @classmethod
    def from_bytes(cls, program: CompiledProgram, blob: bytes) -> MemberState:
        """Inverse of :meth:`to_bytes` (plain JSON starts with ``{``, else zlib); reads
        formats 1 and 2."""
        raw = blob if blob[:1] == b"{" else zlib.decompress(blob)
        return cls.from_dict(program, orjson.loads(raw))
