"""Shared assertions: compare app events with the reference's event keys."""

from __future__ import annotations

from typing import Any

from app.domain.events import LoyaltyEvent

_POINTS = {
    "points_earned", "points_reversed", "points_redeemed", "redemption_overdraft",
    "points_expiring", "points_expired",
}
_EXTRA = {
    "tier_upgraded": "to_tier",
    "tier_downgraded": "to_tier",
    "milestone_reached": "milestone",
    "milestone_approaching": "milestone",
    "tier_approaching": "next_tier",
}


def key(e: LoyaltyEvent) -> tuple[Any, ...]:
    extra_field = _EXTRA.get(e.type)
    return (
        e.type,
        e.effective_at,
        e.cause_record_id,
        e.data["points"] if e.type in _POINTS else None,
        e.data["balance"],
        e.data[extra_field] if extra_field else None,
    )


def keys(events: list[LoyaltyEvent]) -> list[tuple[Any, ...]]:
    return sorted(key(e) for e in events)


def types(events: list[LoyaltyEvent]) -> list[str]:
    return [e.type for e in events]
