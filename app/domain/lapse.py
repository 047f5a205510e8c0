"""Lapse-risk deadline (SPEC 5), in exact integer microseconds.

deadline = last + max(factor x (last - first) / (n - 1), floor). The mean gap is a rational
number of microseconds; it is rounded *up* so risk is never flagged before the exact
real-valued deadline.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.domain.program import CompiledProgram

_US = timedelta(microseconds=1)


def lapse_deadline(
    program: CompiledProgram, first: datetime, last: datetime, n: int
) -> datetime | None:
    """When lapse risk starts if no purchase comes first; None below the minimum count."""
    if n < program.lapse_min_purchases:
        return None
    span = (last - first) // _US
    f = program.lapse_factor
    num, den = f.numerator * span, f.denominator * (n - 1)
    gap = timedelta(microseconds=-((-num) // den))
    return last + max(gap, program.lapse_floor)
