"""``bench pipeline``'s memory at scale (app/bench/memory.py): the line fit, the scoped cache
settings, and the phase itself on a real embedded stack."""

from __future__ import annotations

import os

import pytest

from app.bench.memory import SCALE_CACHES, least_squares_slope, scale_caches
from app.bench.pipeline import memory_at_scale


def test_least_squares_slope() -> None:
    assert least_squares_slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    # noise around a line: the fit, not the end points
    assert least_squares_slope([(0, 0), (1, 12), (2, 18), (3, 30)]) == pytest.approx(9.6)
    assert least_squares_slope([(1, 5)]) == 0.0
    assert least_squares_slope([(1, 5), (1, 7)]) == 0.0


def test_scale_caches_are_set_for_the_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_CDP_HOT_STATES", "1234")
    monkeypatch.delenv("LOYALTY_CDP_COLD_STATES", raising=False)
    with scale_caches():
        assert {k: os.environ[k] for k in SCALE_CACHES} == SCALE_CACHES
    assert os.environ["LOYALTY_CDP_HOT_STATES"] == "1234"
    assert "LOYALTY_CDP_COLD_STATES" not in os.environ


@pytest.mark.integration
def test_memory_at_scale_runs_a_stack_with_small_caches() -> None:
    """The phase's stack gets the small caches: its profile stage drops states (their
    members are read from the store again) and the fit has one point per measured burst."""
    slope, mb, dropped = memory_at_scale(members=400, bursts=2)
    assert len(mb) == 2 and all(m > 10 for m in mb)
    assert dropped > 0  # 1,200 members through a stage that keeps 200 hot + 200 cold
    assert isinstance(slope, float)  # its size is the benchmark's figure, not a test's
