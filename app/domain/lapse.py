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
    num, den = program.lapse_num * span, program.lapse_den * (n - 1)
    # max(ceil(num / den) µs, floor) in integers: the same instant as the timedelta form
    return last + timedelta(microseconds=max(-((-num) // den), program.lapse_floor_us))
