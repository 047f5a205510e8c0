"""The canonical agent's routing: what it publishes on ``cdp.events`` is exactly what it hands
to the identity stage (in the worker, since session 9), with where each event came from;
what it dead-letters is handed to nobody."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from app.bench.pipeline import synthetic_events
from app.mapping.engine import Mapper
from app.settings import settings
from streams.canonical import CANONICAL_TOPIC, DLQ_TOPIC, INGEST_TOPIC, CanonicalRouter
from tests.stage_harness import FakeProducer


@dataclass
class _Message:
    topic: str
    value: bytes
    key: bytes
    partition: int
    offset: int


def test_route_hands_on_what_it_published_and_nothing_it_dead_lettered() -> None:
    out = FakeProducer()
    router = CanonicalRouter(Mapper.from_dir(settings().mappings_dir), out)  # type: ignore[arg-type]
    good = [v for _, v in synthetic_events(2, 4, "t")]
    messages = [_Message(INGEST_TOPIC, v, b"k", 3, 10 + i) for i, v in enumerate(good)]
    messages.insert(1, _Message(INGEST_TOPIC, b"{not json", b"k", 3, 99))
    handed = router.route(messages)
    published = [(v, k) for t, v, k, _ in out.sent if t == CANONICAL_TOPIC]
    assert [(h.value, h.key) for h in handed] == published and len(handed) == 4
    assert [orjson.loads(h.value)["id"] for h in handed] == [orjson.loads(v)["id"] for v in good]
    assert [(h.topic, h.partition, h.offset) for h in handed] == [
        (INGEST_TOPIC, 3, 10), (INGEST_TOPIC, 3, 11), (INGEST_TOPIC, 3, 12), (INGEST_TOPIC, 3, 13)
    ]
    assert [v for t, v, _, _ in out.sent if t == DLQ_TOPIC] == [b"{not json"]
    assert router.counts == {"in": 5, "out": 4, "dlq": 1}
