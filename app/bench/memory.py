"""``bench pipeline``'s memory at scale: what one more member costs once the caches are full.

The worker bounds what it keeps per member: hot states (``LOYALTY_CDP_HOT_STATES``, ~39 KB
each), compacted ones (``LOYALTY_CDP_COLD_STATES``, ~2 KB each) and the identity graph's
purchase nodes (``LOYALTY_CDP_PURCHASE_NODES``, ~170 bytes each); beyond them a member costs
only its identity-graph entry (~0.7 KB: its identifiers and cluster). At the defaults those
caches fill at 5,000 / 55,000 members and 100,000 purchases, far beyond what a benchmark can
push through in a minute, and a burst's growth is mostly the caches filling and the batches'
buffers, not the members. So this phase starts a second stack whose caches are small
(:data:`SCALE_CACHES`), pushes bursts of new members through it and fits a line through the
stage processes' resident memory after each burst: the slope is the bytes per member at
scale; a line fit, because the resident memory of a Python process moves by megabytes with
its allocator's arenas from one burst to the next.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.bench.cpu import stage_processes

__all__ = ["SCALE_CACHES", "least_squares_slope", "scale_caches", "stage_rss"]

#: the scale stack's caches: far below one burst, so every burst is past them
SCALE_CACHES = {
    "LOYALTY_CDP_HOT_STATES": "200",
    "LOYALTY_CDP_COLD_STATES": "200",
    "LOYALTY_CDP_PURCHASE_NODES": "2000",
}


def stage_rss(worker: int | None) -> int:
    """Resident memory of the worker and its profile-stage child (the stages' state)."""
    if worker is None:
        return 0
    total = 0
    for pid in stage_processes(worker):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float:
    """The slope of the least-squares line through ``points`` (0.0 for fewer than two
    distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


@contextlib.contextmanager
def scale_caches(env: dict[str, str] | None = None) -> Iterator[None]:
    """Set :data:`SCALE_CACHES` in this process's environment (which ``up`` hands to the
    stack it starts) for the block, then restore what was there."""
    values = SCALE_CACHES if env is None else env
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
