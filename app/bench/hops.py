"""Where the latency goes: ``bench pipeline``'s latency phase timed hop by hop.

Every Kafka message carries its producer's create time: the CDC runner's on the change
topic, the worker's on ``cdp.events``, ``cdp.resolved`` and ``loyalty.events``, all on this
host's clock. So each latency row's path can be timed without instrumenting the stages:
source commit -> its change event -> its canonical event -> the first notification of its
profile on ``cdp.resolved`` after that -> its ``points_earned`` event. The per-hop
percentiles say which stage to work on (session 5: the profile stage, at 1,000 rows/s).
"""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, TopicPartition

from app.bench.cdc import _percentile

__all__ = ["HOPS", "end_offsets", "hop_latencies", "read_since"]

HOPS = (
    "commit_to_change_topic",
    "change_topic_to_canonical",
    "canonical_to_resolved",
    "resolved_to_loyalty_event",
)


def hop_latencies(
    commits: dict[str, float],
    change: dict[str, float],
    canonical: dict[str, float],
    notes: dict[str, list[float]],
    earned: dict[str, tuple[float, str]],
) -> dict[str, dict[str, float]]:
    """Per hop, ``{"p50": ms, "p99": ms, "n": rows}`` over the rows seen at both its ends.

    ``commits``, ``change``, ``canonical``: row key -> time (s) at the source commit, on the
    change topic, on ``cdp.events``; ``notes``: profile id -> times of its notifications;
    ``earned``: row key -> (time of its ``points_earned`` event, its profile id). A row's
    notification is the first of its profile at or after its canonical event (to the
    millisecond of the message timestamps).
    """
    resolved: dict[str, float] = {}
    for key, (_, profile) in earned.items():
        at = canonical.get(key)
        times = notes.get(profile)
        if at is None or not times:
            continue
        i = bisect.bisect_left(times, at - 0.001)
        if i < len(times):
            resolved[key] = times[i]
    ends = [commits, change, canonical, resolved, {k: t for k, (t, _) in earned.items()}]
    out: dict[str, dict[str, float]] = {}
    for hop, a, b in zip(HOPS, ends, ends[1:], strict=False):
        d = sorted((b[k] - a[k]) * 1000 for k in b if k in a)
        if d:
            out[hop] = {
                "p50": round(_percentile(d, 50), 1),
                "p99": round(_percentile(d, 99), 1),
                "n": len(d),
            }
    return out


def end_offsets(broker: str, topic: str) -> list[TopicPartition]:
    """Each partition of ``topic`` at its current end (where :func:`read_since` starts)."""
    c = _consumer(broker)
    try:
        md = c.list_topics(topic, timeout=10)
        return [
            TopicPartition(
                topic, p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            )
            for p in md.topics[topic].partitions
        ]
    finally:
        c.close()


def read_since(
    broker: str, start: list[TopicPartition], timeout: float = 60.0
) -> Iterator[tuple[float, bytes | None]]:
    """(create time in s, value) of every message from ``start`` to the ends now."""
    c = _consumer(broker)
    try:
        ends = {
            tp.partition: c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), 10)[1]
            for tp in start
        }
        todo = {tp.partition for tp in start if tp.offset < ends[tp.partition]}
        c.assign(start)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                if m.error() is not None:
                    continue
                yield m.timestamp()[1] / 1000, m.value()
                if m.offset() + 1 >= ends[m.partition()]:
                    todo.discard(m.partition())
    finally:
        c.close()


def _consumer(broker: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"bench-hops-{uuid.uuid4().hex}",  # required by the client; never joined
            "enable.auto.commit": False,
        }
    )
