"""Tier arithmetic (SPEC 5): spend tier, earn multiplier, the approaching band.

Kept as small pure functions over the compiled program so the fold, the what-if quote and
the decision API compute tiers the same way.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from fractions import Fraction

from app.domain.program import CompiledProgram


def spend_tier(program: CompiledProgram, qualifying_cents: int) -> int:
    """Index of the highest tier whose threshold is <= Q (0 = base tier)."""
    return max(0, bisect_right(program.tier_thresholds, qualifying_cents) - 1)


def campaign_index(program: CompiledProgram, at: datetime) -> int:
    """Index of the campaign with the largest multiplier active at ``at`` (``[start, end)``;
    ties: the first listed), or -1 when none is active."""
    best = -1
    for i, (start, end, mult, _name) in enumerate(program.campaigns):
        if start <= at < end and (best < 0 or mult > program.campaigns[best][2]):
            best = i
    return best


def campaign_multiplier(program: CompiledProgram, at: datetime) -> Fraction:
    """Largest multiplier among campaigns active at ``at``; none -> 1."""
    i = campaign_index(program, at)
    return Fraction(1) if i < 0 else program.campaigns[i][2]


def earn_points(program: CompiledProgram, amount_cents: int, tier: int, at: datetime) -> int:
    """``floor(floor(a/100) x rate x tier multiplier x campaign multiplier)``, exactly."""
    m = program.earn_rate * program.tier_multipliers[tier] * campaign_multiplier(program, at)
    return (amount_cents // 100) * m.numerator // m.denominator


def ceil_ratio(value: int, ratio: Fraction) -> int:
    """``ceil(value x ratio)`` in integers: the lower edge of an approaching band."""
    return -((-value * ratio.numerator) // ratio.denominator)


def next_tier_gap(
    program: CompiledProgram, tier: int, qualifying_cents: int
) -> tuple[str, int] | None:
    """(next tier name, cents missing to reach it) or None at the top tier."""
    nxt = tier + 1
    if nxt >= len(program.tier_thresholds):
        return None
    return program.tier_names[nxt], max(0, program.tier_thresholds[nxt] - qualifying_cents)
