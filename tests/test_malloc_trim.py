"""The worker's malloc trim: only after the RSS grew by the threshold since the last trim."""

from __future__ import annotations

from streams.malloc_trim import Trimmer, rss_bytes


class Fake:
    def __init__(self, rss: int) -> None:
        self.rss = rss
        self.trims = 0

    def trim(self) -> int:
        self.trims += 1
        self.rss -= 30  # gives back part of it
        return 1


def test_trims_after_growth_beyond_the_threshold_and_rebases() -> None:
    f = Fake(100)
    t = Trimmer(50, f.trim, lambda: f.rss)
    f.rss = 150
    assert not t.check() and f.trims == 0  # grown by 50: not beyond
    f.rss = 151
    assert t.check() and f.trims == 1 and t.base == 121  # rebased after the trim
    f.rss = 160
    assert not t.check()  # live growth is trimmed once, not every period


def test_the_base_follows_a_shrinking_process() -> None:
    f = Fake(100)
    t = Trimmer(50, f.trim, lambda: f.rss)
    f.rss = 80
    assert not t.check() and t.base == 80
    f.rss = 131
    assert t.check()


def test_rss_is_read() -> None:
    assert rss_bytes() > 1 << 20
