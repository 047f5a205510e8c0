"""Reading topics in tests: assign every partition from the start, no consumer group
(so no group-join delay and no committed offsets left behind)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    timeout: float = 60.0,
    settle: float = 1.0,
) -> list[Any]:
    """All messages of ``topic``; polls until ``until(messages)`` holds (then ``settle``
    more seconds, to catch duplicates that would follow) or ``timeout``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        satisfied_at: float | None = None
        while time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if not m.error():
                    out.append(m)
            if satisfied_at is None and (until is None or until(out)):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - satisfied_at >= settle:
                break
        return out
    finally:
        c.close()


def cloudevents(messages: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]
