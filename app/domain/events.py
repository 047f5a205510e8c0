"""Loyalty events (SPEC 6) and their deterministic ids.

An event id is ``blake2b-128(type | effective time | causing record id | discriminator)``.
The member id is carried on the event but deliberately *not* hashed: the causing record id
is globally unique, so it already scopes the event to one person, and leaving the member id
out keeps ids stable when profiles merge or a guest becomes a member. After a merge the
absorbed profile's history is refolded under the survivor; with the member id in the hash
all of it would come back under new ids and be emitted again as fresh "moments".
The numbers (balance, gap, ...) are not hashed either: a late record that changes a number
does not change the identity of the moment, so the event is not emitted twice (the corrected
numbers reach consumers through the profile snapshot).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from hashlib import blake2b
from typing import Any

from app.domain.records import format_time

EVENT_TYPES = (
    "member_enrolled",
    "points_earned",
    "points_reversed",
    "points_redeemed",
    "redemption_overdraft",
    "points_expiring",
    "points_expired",
    "tier_upgraded",
    "tier_downgraded",
    "tier_approaching",
    "milestone_approaching",
    "milestone_reached",
    "lapse_risk",
    "profiles_merged",
    "consent_changed",
)


HASH = blake2b(digest_size=16)  # copied per id: cheaper than a new hash with its options
_DAYS: dict[int, str] = {}  # proleptic ordinal -> "YYYY-MM-DDT"
_CLOCKS: dict[int, str] = {}  # second of the day -> "HH:MM:SS" (at most 86,400 entries)


def day_prefix(ordinal: int) -> str:
    """``"YYYY-MM-DDT"`` of a proleptic Gregorian ordinal (cached)."""
    day = _DAYS.get(ordinal)
    if day is None:
        if len(_DAYS) >= 100_000:  # bound the cache (a day is ~110 bytes with its entry)
            _DAYS.clear()
        day = _DAYS[ordinal] = date.fromordinal(ordinal).isoformat() + "T"
    return day


def spell_time(at: datetime) -> str:
    """``at.isoformat()``, the spelling hashed into event ids, about 3x cheaper for UTC
    times (the only kind the domain holds): the day and the second of the day are spelled
    once each and cached. Any other ``tzinfo`` takes ``isoformat()`` itself."""
    if at.tzinfo is not UTC:
        return at.isoformat()
    day = day_prefix(at.toordinal())
    h, m, s = at.hour, at.minute, at.second
    sod = h * 3600 + m * 60 + s
    clock = _CLOCKS.get(sod)
    if clock is None:
        clock = _CLOCKS[sod] = f"{h:02d}:{m:02d}:{s:02d}"
    us = at.microsecond
    if us:
        return f"{day}{clock}.{us:06d}+00:00"
    return f"{day}{clock}+00:00"


def event_id(type_: str, effective_at: datetime, cause: str, discriminator: str = "") -> str:
    """Same inputs, same id: consumers drop redelivered or re-emitted events by it."""
    return event_id_at(type_, spell_time(effective_at), cause, discriminator)


def event_id_at(type_: str, at_iso: str, cause: str, discriminator: str) -> str:
    """:func:`event_id` with the time already spelled (``datetime.isoformat()`` of a UTC
    time: all domain times are UTC-aware, so it is one canonical spelling per instant)."""
    h = HASH.copy()
    h.update(f"{type_}|{at_iso}|{cause}|{discriminator}".encode())
    return h.hexdigest()


class LoyaltyEvent:
    """One loyalty moment. ``data`` holds the numbers that caused it.

    Built on the hot path (about two per record), so the costly parts are made only when
    read: an event built with ``id=None`` computes its id (:func:`event_id` of type,
    effective time, cause and ``disc``) on the first read of ``id``, and one built with
    ``keys`` holds ``data`` as the tuple of its values for those keys and makes the dict on
    the first read of ``data``. Both are then kept, so every read returns the same object
    and the results equal those of an event built with them: the fold creates no hash, no
    spelled time and no dict for an event nobody reads (the quiet prefix and the discarded
    suffix of a late record, the refolds of a merge). Otherwise it behaves like the named
    tuple it was: the seven fields by name, equality field by field, iteration, repr.
    """

    __slots__ = (
        "_data", "_disc", "_id", "_keys", "cause_record_id", "effective_at", "member_id",
        "profile_id", "type",
    )

    def __init__(
        self,
        id: str | None,
        type: str,
        profile_id: str,
        member_id: str | None,
        effective_at: datetime,
        cause_record_id: str,
        data: dict[str, Any] | tuple[Any, ...],
        disc: str = "",
        keys: tuple[str, ...] | None = None,
    ) -> None:
        self._id = id
        self.type = type
        self.profile_id = profile_id
        self.member_id = member_id
        self.effective_at = effective_at
        self.cause_record_id = cause_record_id
        self._data = data
        self._disc = disc
        self._keys = keys

    @property
    def id(self) -> str:
        """``blake2b-128(type | effective time | causing record id | discriminator)``."""
        i = self._id
        if i is None:
            i = self._id = event_id(self.type, self.effective_at, self.cause_record_id, self._disc)
        return i

    @property
    def data(self) -> dict[str, Any]:
        d = self._data
        if self._keys is not None:
            d = self._data = dict(zip(self._keys, d, strict=True))
            self._keys = None
        assert isinstance(d, dict)
        return d

    def _fields(self) -> tuple[Any, ...]:
        return (self.id, self.type, self.profile_id, self.member_id, self.effective_at,
                self.cause_record_id, self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoyaltyEvent):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # data is a dict (as in the named tuple)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fields())

    def __repr__(self) -> str:
        names = ("id", "type", "profile_id", "member_id", "effective_at", "cause_record_id",
                 "data")
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True))
        return f"LoyaltyEvent({inner})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (times as RFC 3339 ``Z`` strings) for the adapters."""
        return {
            "id": self.id,
            "type": self.type,
            "profile_id": self.profile_id,
            "member_id": self.member_id,
            "effective_at": format_time(self.effective_at),
            "cause_record_id": self.cause_record_id,
            "data": {
                k: format_time(v) if isinstance(v, datetime) else v for k, v in self.data.items()
            },
        }
