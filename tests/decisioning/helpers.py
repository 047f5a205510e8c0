"""Builders for the decisioning tests: a small catalog, profiles, moments."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from app.decisioning import (
    Contactability,
    DecisionContext,
    Moment,
    OfferCatalog,
    Send,
)
from app.domain.program import DEFAULT_PROGRAM

PROGRAM = DEFAULT_PROGRAM.compile()
# 2026-06-10 16:00 UTC = 12:00 in New York (EDT): outside quiet hours
NOW = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)

ALL = {"email": {"subject": "{offer_name}", "body": "{offer_name} for {member_id}"},
       "sms": {"body": "{offer_name}"},
       "push": {"subject": "{offer_name}", "body": "{offer_name}"},
       "in_app": {"subject": "{offer_name}", "body": "{offer_name}"}}
NEAR = ["milestone_approaching", "tier_approaching", "api:cart", "api:home"]


def product(oid: str, price: int, margin: str = "0.4", prio: int = 50) -> dict[str, Any]:
    return {
        "id": oid, "sku": oid.upper(), "name": f"Product {oid}", "price_cents": price,
        "category": "misc", "margin": margin, "priority": prio,
        "eligibility": {"moments": NEAR, "enrolled": True},
        "templates": {"email": {"subject": "{product_name}",
                                "body": "{product_name} {price} earns {product_points}"},
                      "in_app": {"body": "{product_name} earns {product_points}"}},
    }


def loyalty(oid: str, kind: str, value: int, prio: int, moments: list[str],
            enrolled: bool | None = True, **el: Any) -> dict[str, Any]:
    return {"id": oid, "kind": kind, "name": f"Offer {oid}", "value": value, "priority": prio,
            "eligibility": {"moments": moments, "enrolled": enrolled, **el},
            "templates": copy.deepcopy(ALL)}


def catalog_doc() -> dict[str, Any]:
    receipt = loyalty("receipt", "points_receipt", 10, 1,
                      ["purchase", "api:checkout_confirmation", "api:cart"])
    receipt["templates"]["in_app"]["body"] = "This purchase earned you {points} points."
    receipt["templates"]["email"]["body"] = "This purchase earned you {points} points."
    enroll = loyalty("enroll", "enrollment", 400, 2,
                     ["purchase", "api:checkout_confirmation", "api:cart", "api:home"],
                     enrolled=False)
    enroll["templates"]["in_app"]["body"] = "Join: you would have earned {points_if_enrolled}."
    enroll["templates"]["email"]["body"] = "Join: you would have earned {points_if_enrolled}."
    return {
        "product_offers": [
            product("p50", 5000), product("p250", 25000), product("p400", 40000),
            product("p300", 30000),
        ],
        "loyalty_offers": [
            receipt, enroll,
            # lower value but higher priority than "dbl": ADMT order differs from model order
            loyalty("winback", "win_back", 100, 5, ["lapse_risk", "milestone_approaching"]),
            loyalty("dbl", "double_points", 900, 20, ["lapse_risk", "milestone_approaching"]),
            loyalty("gold-early", "early_access", 200, 30, ["tier_upgraded", "lapse_risk"],
                    tiers=["gold", "platinum"]),
            loyalty("refer", "referral_bonus", 300, 40, ["lapse_risk"],
                    segment=[{"field": "purchase_count", "op": "gte", "value": 10}]),
        ],
        "models": {"default": {"intercept": "-1", "coefficients": {"purchase_count": "0.1"}}},
        "contact_policy": {
            "timezone": "America/New_York", "window_days": 7, "global_cap": 4,
            "repeat_days": 30, "channel_order": ["push", "email", "sms"],
            "max_outbound_per_moment": 1, "max_in_app": 3,
            "channels": {
                "email": {"cap": 3},
                "sms": {"cap": 1, "quiet_hours": {"start": "21:00", "end": "08:00"}},
                "push": {"cap": 2, "quiet_hours": {"start": "21:00", "end": "08:00"}},
                "in_app": {"cap": None, "global_cap_counts": False},
            },
        },
    }


def catalog(**policy: Any) -> OfferCatalog:
    doc = catalog_doc()
    doc["contact_policy"].update(policy)
    return OfferCatalog.model_validate(doc)


def profile(**kw: Any) -> dict[str, Any]:
    consent = {"email_opt_in": True, "sms_consent": True, "admt_opt_out": False,
               "push_opt_in": True}
    consent.update(kw.pop("consent", {}))
    p: dict[str, Any] = {
        "member_id": "M1",
        "member_nos": ["M1"],
        "identifiers": ["email:a@example.com", "member_no:M1", "phone:+15551230000"],
        "enrolled_at": "2025-01-01T00:00:00.000000Z",
        "tier": "member",
        "points_balance": 0,
        "qualifying_spend_cents": 0,
        "lifetime_spend_cents": 50000,
        "purchase_count": 5,
        "last_purchase_at": "2026-06-01T00:00:00.000000Z",
        "lapse_risk": False,
        "consent": consent,
        "as_of": "2026-06-10T00:00:00.000000Z",
    }
    p.update(kw)
    return p


def guest(**kw: Any) -> dict[str, Any]:
    return profile(member_id=None, member_nos=[], enrolled_at=None, tier=None,
                   identifiers=["email:g@example.com"], **kw)


def event(type_: str, at: datetime = NOW, eid: str | None = None, **data: Any) -> Moment:
    return Moment(id=eid or f"ev-{type_}", kind="event", type=type_, at=at, data=data)


def ctx(push_token: bool = True, tz: str | None = None, pid: str = "prof-1") -> DecisionContext:
    return DecisionContext(PROGRAM, pid, Contactability(push_token=push_token, timezone=tz))


def sends(offer: str, channel: str, *days_ago: float) -> list[Send]:
    return [Send(offer, channel, NOW - timedelta(days=d)) for d in days_ago]


def codes(decision: Any, offer: str, channel: str | None) -> list[str]:
    return [r.code for r in decision.rejected if r.offer_id == offer and r.channel == channel]
