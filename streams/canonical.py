"""The canonical-events agent: Debezium change topics and ``cdp.ingest`` -> ``cdp.events``.

Each change event is mapped by the pure mapping layer (``app/mapping``) from its before and
after row images; anything that cannot be parsed or mapped goes to ``cdp.dlq`` with the
original key and bytes and the reason in headers (the Kafka Connect DLQ convention), and the
pipeline keeps going. Canonical events published directly by upstream systems on
``cdp.ingest`` are validated against the same JSON Schema and passed through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust

from app.mapping.engine import Mapper
from app.mapping.errors import MappingError
from app.mapping.schema import parse_ingest
from streams.producer import BatchProducer
from streams.stages import crash_on_failure

__all__ = ["CANONICAL_TOPIC", "DLQ_TOPIC", "INGEST_TOPIC", "register_canonical_agent"]

CANONICAL_TOPIC = "cdp.events"
INGEST_TOPIC = "cdp.ingest"
DLQ_TOPIC = "cdp.dlq"
BATCH = 2000
WITHIN_S = 0.02


class CanonicalRouter:
    """Maps one batch of input messages to output messages (no I/O of its own)."""

    def __init__(self, mapper: Mapper, out: BatchProducer) -> None:
        self.mapper = mapper
        self.out = out
        self.counts = {"in": 0, "out": 0, "dlq": 0}

    def _dead_letter(self, message: Any, err: MappingError) -> None:
        headers = [
            *err.with_topic(message.topic).dlq_headers(),
            ("dlq.partition", str(message.partition).encode()),
            ("dlq.offset", str(message.offset).encode()),
        ]
        self.out.send(DLQ_TOPIC, message.value, message.key, headers)
        self.counts["dlq"] += 1

    def route(self, messages: Iterable[Any]) -> None:
        send = self.out.send
        mapper_map = self.mapper.map
        n_in = n_out = 0
        for m in messages:
            n_in += 1
            try:
                events = (
                    parse_ingest(m.value)
                    if m.topic == INGEST_TOPIC
                    else mapper_map(m.topic, m.value)
                )
                for ev in events:
                    send(CANONICAL_TOPIC, ev.to_json(), ev.key_bytes())
                    n_out += 1
            except MappingError as err:
                self._dead_letter(m, err)
        self.counts["in"] += n_in
        self.counts["out"] += n_out


def register_canonical_agent(
    app: faust.App, mapper: Mapper, out: BatchProducer, change_topics: list[str]
) -> CanonicalRouter:
    source = app.topic(*change_topics, INGEST_TOPIC, key_serializer="raw", value_serializer="raw")
    router = CanonicalRouter(mapper, out)

    @app.agent(source, name="canonical")
    async def canonical(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            # a bug, or a broker that stopped acknowledging
            async with crash_on_failure(app, "canonical batch"):
                router.route(e.message for e in events)
                await out.flush()
            del events  # not kept (messages and all) while the stream is idle

    return router
