"""Keeping CPython's cyclic garbage collector off a stream process's long-lived heap.

Why: the member states (the profile process) and the identity graph (the worker) are large
heaps of long-lived objects. CPython runs a full collection each time the objects that
survived into its oldest generation have grown by a quarter, and a full collection walks
all of them: ~460 ms in the profile process and ~800 ms of collector time in the worker
(one full collection among it) during 10 s at 500-1,000 rows/s, a pause in the middle of
a batch, which is the latency tail.

:class:`GcFreezer` collects the young garbage (generations 0 and 1) and then *freezes* what
survived (``gc.freeze``): the automatic collections never walk it again. Objects that are
frozen and later become garbage are still freed by their reference counts; only those in
a reference cycle wait for the full collection of everything that :meth:`GcFreezer.settle`
runs every ``full_every_s`` (the domain's objects form no cycles; a batch's own cyclic
garbage is collected young, before the freeze).

:func:`count_gc` adds the collector's time and full collections to a stage's counters
(``/healthz``: ``gc_ms``, ``gc_full``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

__all__ = ["GcFreezer", "count_gc"]


class GcFreezer:
    def __init__(
        self, full_every_s: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.full_every_s = full_every_s
        self._clock = clock
        self._full_at = clock()

    def settle(self) -> None:
        """Collect the young garbage and freeze the rest (now and then: collect it all)."""
        now = self._clock()
        if now - self._full_at >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self._full_at = now
        else:
            gc.collect(1)
        gc.freeze()


def count_gc(counts: dict[str, int]) -> None:
    """Add this process's collector time (``gc_ms``) and full collections (``gc_full``) to
    ``counts`` from now on."""
    counts["gc_ms"] = counts["gc_full"] = 0
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            counts["gc_ms"] += int((time.perf_counter() - started[0]) * 1000)
            counts["gc_full"] += info["generation"] == 2

    gc.callbacks.append(on_gc)
