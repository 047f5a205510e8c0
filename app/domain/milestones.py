"""Milestones on the available balance B (SPEC 5).

``milestone_reached`` for each threshold B crosses upward (every upward crossing: a member
who redeems below 1 000 and earns back above it reaches it again, which is a real moment).
``milestone_approaching`` only when B enters ``[ceil(r x M), M)`` from below that band, so a
single earn that jumps past M yields ``milestone_reached`` and no ``approaching``.
"""

from __future__ import annotations

from app.domain.program import CompiledProgram


def crossings(
    program: CompiledProgram, before: int, after: int
) -> list[tuple[str, int]]:
    """[(event type, milestone)] for a balance rising from ``before`` to ``after``."""
    out: list[tuple[str, int]] = []
    if after <= before:
        return out
    for m, lo in program.milestone_bands:
        if before < m <= after:
            out.append(("milestone_reached", m))
        elif before < lo <= after < m:
            out.append(("milestone_approaching", m))
    return out


def next_milestone_gap(program: CompiledProgram, balance: int) -> tuple[int, int] | None:
    """(next milestone, points missing) or None once B is past the last one."""
    for m in program.milestones:
        if balance < m:
            return m, m - balance
    return None
