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

from datetime import datetime
from hashlib import blake2b
from typing import Any, NamedTuple

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


def event_id(type_: str, effective_at: datetime, cause: str, discriminator: str = "") -> str:
    """Same inputs, same id: consumers drop redelivered or re-emitted events by it."""
    return event_id_at(type_, effective_at.isoformat(), cause, discriminator)


def event_id_at(type_: str, at_iso: str, cause: str, discriminator: str) -> str:
    """:func:`event_id` with the time already spelled (``datetime.isoformat()`` of a UTC
    time: all domain times are UTC-aware, so it is one canonical spelling per instant)."""
    raw = f"{type_}|{at_iso}|{cause}|{discriminator}".encode()
    return blake2b(raw, digest_size=16).hexdigest()


class LoyaltyEvent(NamedTuple):
    """One loyalty moment. ``data`` holds the numbers that caused it.

    A NamedTuple rather than a frozen dataclass: events are built on the hot path (about
    two per purchase) and a tuple is several times cheaper to create.
    """

    id: str
    type: str
    profile_id: str
    member_id: str | None
    effective_at: datetime
    cause_record_id: str
    data: dict[str, Any]  # datetimes are formatted by to_dict

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
