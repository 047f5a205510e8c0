"""Loyalty events (domain) as CloudEvents 1.0 on ``loyalty.events`` (key = member id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from app.domain.events import LoyaltyEvent
from app.domain.records import format_time

SOURCE = "loyalty-cdp/loyalty"
TYPE_PREFIX = "loyalty."


def event_key(ev: LoyaltyEvent) -> str:
    """Member id for members; the opaque profile id for guests (never an email or phone)."""
    return ev.member_id or ev.profile_id


def to_cloudevent(ev: LoyaltyEvent) -> dict[str, Any]:
    at = format_time(ev.effective_at)
    return {
        "specversion": "1.0",
        "id": ev.id,
        "source": SOURCE,
        "type": TYPE_PREFIX + ev.type,
        "subject": event_key(ev),
        "time": at,
        "datacontenttype": "application/json",
        "data": {
            "member_id": ev.member_id,
            "profile_id": ev.profile_id,
            "effective_at": at,
            "cause_record_id": ev.cause_record_id,
            # times in data in the contract's spelling (``...ffffffZ``), as in ``time``
            **{k: format_time(v) if isinstance(v, datetime) else v for k, v in ev.data.items()},
        },
    }


def encode(ev: LoyaltyEvent) -> bytes:
    """The CloudEvent's bytes, in an allocation of their own size.

    ``orjson.dumps`` returns bytes whose allocation keeps its whole write buffer (measured
    with tracemalloc on orjson 3.13: 4,097 bytes for a 408-byte result, 32 KB for 3 KB; older
    versions start at 1 KB). A loyalty event is ~500 bytes and the profile stage
    holds a chunk's events for the outbox insert (~3,000 in the bench's first burst: 11 MB
    instead of 1.5 MB), so the result is copied into an exact-size object (a two-item join:
    0.2 µs; ``bytes(memoryview(b))`` 0.8 µs).
    """
    return b"".join((orjson.dumps(to_cloudevent(ev)), b""))
