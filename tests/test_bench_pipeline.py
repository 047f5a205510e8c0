"""``bench pipeline``'s synthetic load: one enrollment per member first, then purchases
round-robin in event-time order; another tag gives other members (the second, memory
burst must add new members, not touch the first burst's)."""

from __future__ import annotations

import orjson

from app.bench.pipeline import synthetic_events


def test_synthetic_events() -> None:
    msgs = synthetic_events(3, 10, "a")
    assert len(msgs) == 10
    docs = [orjson.loads(v) for _, v in msgs]
    assert [d["type"] for d in docs[:3]] == ["cdp.member.enrolled"] * 3
    assert {d["type"] for d in docs[3:]} == {"cdp.purchase.completed"}
    times = [d["time"] for d in docs[3:]]
    assert times == sorted(times)
    assert len({d["id"] for d in docs}) == 10  # deterministic, distinct ids
    assert synthetic_events(3, 10, "a") == msgs
    other = {k for k, _ in synthetic_events(3, 10, "b")}
    assert other.isdisjoint({k for k, _ in msgs}) and len(other) == 3
