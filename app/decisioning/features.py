"""Member context, model features and the logistic model (pure).

The member context is derived from the profile snapshot (``MemberState.snapshot()``, SPEC
5 export fields) and the compiled program, with the domain's own arithmetic
(:func:`app.domain.tiers.earn_points`, :func:`next_milestone_gap`, :func:`next_tier_gap`),
so "points this cart earns" is exactly what the fold would credit for one purchase of the
cart total at the tier held at the snapshot's ``as_of`` and the campaigns active at ``at``
(the same what-if as ``MemberState.quote_purchase``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from app.domain.milestones import next_milestone_gap
from app.domain.program import CompiledProgram
from app.domain.records import InvalidRecord, parse_time
from app.domain.tiers import campaign_multiplier, earn_points, next_tier_gap

from .catalog import Coefficients

NO_PURCHASE_RECENCY_DAYS = 365.0  # recency_days of a profile that never purchased


@dataclass(frozen=True, slots=True)
class CartLine:
    """One cart line of the decision API; ``unit_price_cents`` is integer minor units."""

    sku: str
    qty: int
    unit_price_cents: int

    def __post_init__(self) -> None:
        if self.qty < 1:
            raise ValueError("qty must be at least 1")
        if self.unit_price_cents < 0:
            raise ValueError("unit_price_cents must not be negative")


@dataclass(frozen=True, slots=True)
class MemberContext:
    """What the checkout page and the templates know about the person.

    ``points`` is what this cart (or purchase) earns a member (0 for a non-member);
    ``points_if_enrolled`` what it would earn at the base tier, the number the enrollment
    offer states. Gaps are ``None`` past the last milestone / at the top tier.
    """

    known: bool
    enrolled: bool
    member_id: str | None
    tier: str | None
    tier_rank: int
    points_balance: int
    qualifying_spend_cents: int
    cart_total_cents: int
    points: int
    points_if_enrolled: int
    multiplier: str
    next_milestone: int | None
    milestone_gap_points: int | None
    next_tier: str | None
    tier_gap_cents: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "enrolled": self.enrolled,
            "member_id": self.member_id,
            "tier": self.tier,
            "points_balance": self.points_balance,
            "cart_total_cents": self.cart_total_cents,
            "points": self.points,
            "points_if_enrolled": self.points_if_enrolled,
            "multiplier": self.multiplier,
            "next_milestone": self.next_milestone,
            "milestone_gap_points": self.milestone_gap_points,
            "next_tier": self.next_tier,
            "tier_gap_cents": self.tier_gap_cents,
        }


def _decimal_text(f: Fraction) -> str:
    return str((Decimal(f.numerator) / Decimal(f.denominator)).normalize())


def _parse(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return parse_time(value, None, field)
    except InvalidRecord as exc:
        raise ValueError(str(exc)) from exc


def is_enrolled(profile: Mapping[str, Any] | None, at: datetime) -> bool:
    """Enrolled at ``at``: the snapshot has ``enrolled_at`` at or before ``at``."""
    if not profile:
        return False
    enrolled_at = _parse(profile.get("enrolled_at"), "enrolled_at")
    return enrolled_at is not None and enrolled_at <= at


def tier_rank(program: CompiledProgram, profile: Mapping[str, Any] | None) -> int:
    """Index of the profile's tier (0 = base tier; also for guests and unknown tiers)."""
    name = (profile or {}).get("tier")
    return program.tier_names.index(name) if name in program.tier_names else 0


def product_points(
    program: CompiledProgram, profile: Mapping[str, Any] | None, price_cents: int, at: datetime
) -> int:
    """Points a member earns buying for ``price_cents`` at ``at`` (domain earn formula)."""
    return earn_points(program, price_cents, tier_rank(program, profile), at)


def checkout_context(
    profile: Mapping[str, Any] | None,
    cart: Sequence[CartLine],
    program: CompiledProgram,
    at: datetime,
) -> MemberContext:
    """Member context for the decision API (``profile`` None = unknown person = guest).

    The cart is priced as one purchase: ``total = sum(qty x unit_price_cents)``.
    """
    p = profile or {}
    enrolled = is_enrolled(profile, at)
    rank = tier_rank(program, profile) if enrolled else 0
    total = sum(line.qty * line.unit_price_cents for line in cart)
    points_if = earn_points(program, total, rank, at)
    mult = program.earn_rate * program.tier_multipliers[rank] * campaign_multiplier(program, at)
    balance = int(p.get("points_balance") or 0)
    qualifying = int(p.get("qualifying_spend_cents") or 0)
    ms = next_milestone_gap(program, balance) if enrolled else None
    nt = next_tier_gap(program, rank, qualifying) if enrolled else None
    return MemberContext(
        known=profile is not None,
        enrolled=enrolled,
        member_id=p.get("member_id"),
        tier=program.tier_names[rank] if enrolled else None,
        tier_rank=rank,
        points_balance=balance,
        qualifying_spend_cents=qualifying,
        cart_total_cents=total,
        points=points_if if enrolled else 0,
        points_if_enrolled=points_if,
        multiplier=_decimal_text(mult),
        next_milestone=ms[0] if ms else None,
        milestone_gap_points=ms[1] if ms else None,
        next_tier=nt[0] if nt else None,
        tier_gap_cents=nt[1] if nt else None,
    )


def features(
    profile: Mapping[str, Any] | None,
    member: MemberContext,
    program: CompiledProgram,
    now: datetime,
) -> dict[str, float]:
    """The named model features (docs/decisioning.md lists units)."""
    p = profile or {}
    last = _parse(p.get("last_purchase_at"), "last_purchase_at")
    recency = (
        NO_PURCHASE_RECENCY_DAYS if last is None else max(0.0, (now - last).total_seconds() / 86400)
    )
    ms_ratio = (
        member.milestone_gap_points / member.next_milestone
        if member.next_milestone and member.milestone_gap_points is not None
        else 1.0
    )
    nxt = member.tier_rank + 1
    tier_ratio = (
        member.tier_gap_cents / program.tier_thresholds[nxt]
        if member.tier_gap_cents is not None and nxt < len(program.tier_thresholds)
        else 1.0
    )
    return {
        "recency_days": recency,
        "purchase_count": float(p.get("purchase_count") or 0),
        "tier_rank": float(member.tier_rank if member.enrolled else 0),
        "points_balance": member.points_balance / 1000,
        "milestone_gap_ratio": float(ms_ratio),
        "tier_gap_ratio": float(tier_ratio),
        "lapse_risk": 1.0 if p.get("lapse_risk") else 0.0,
        "enrolled": 1.0 if member.enrolled else 0.0,
        "lifetime_spend": int(p.get("lifetime_spend_cents") or 0) / 100,
    }


def segment_values(
    profile: Mapping[str, Any] | None, member: MemberContext, feats: Mapping[str, float]
) -> dict[str, Any]:
    """Everything a segment predicate may test (catalog.SEGMENT_FIELDS)."""
    p = profile or {}
    return {
        **feats,
        "tier": member.tier,
        "qualifying_spend_cents": member.qualifying_spend_cents,
        "lifetime_spend_cents": int(p.get("lifetime_spend_cents") or 0),
        "milestone_gap_points": member.milestone_gap_points,
        "tier_gap_cents": member.tier_gap_cents,
        "next_milestone": member.next_milestone,
        "next_tier": member.next_tier,
    }


def logistic(model: Coefficients, feats: Mapping[str, float]) -> float:
    """``p = 1 / (1 + exp(-(intercept + sum(coef_i x feature_i))))``."""
    z = float(model.intercept) + sum(
        float(c) * feats[name] for name, c in model.coefficients.items()
    )
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)

