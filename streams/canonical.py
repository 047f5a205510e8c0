"""The canonical-events agent: Debezium change topics and ``cdp.ingest`` -> ``cdp.events``,
then identity resolution of the same batch.

Each change event is mapped by the pure mapping layer (``app/mapping``) from its before and
after row images; anything that cannot be parsed or mapped goes to ``cdp.dlq`` with the
original key and bytes and the reason in headers (the Kafka Connect DLQ convention), and the
pipeline keeps going. Canonical events published directly by upstream systems on
``cdp.ingest`` are validated against the same JSON Schema and passed through.

The batch's canonical events are published on ``cdp.events`` (the contract topic for
consumers) and handed, in this process, to the identity stage (``resolve``); the input is
acknowledged only once both are done. Until session 9 the identity stage consumed
``cdp.events`` back from the broker: a second trip through the broker and through Faust's
per-message path for every event, and a hop of latency. A crash between the two redelivers
the batch: its canonical ids are deterministic, so ``cdp.events`` may carry a copy (as any
at-least-once redelivery could) and the identity stage skips records it already stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Canonical:
    """A canonical event handed to the identity stage: its bytes as published on
    ``cdp.events``, and where it came from (the change or ingest message a dead letter
    names)."""

    value: bytes
    key: bytes
    topic: str
    partition: int
    offset: int


Resolve = Callable[[list[Canonical]], Awaitable[None]]


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

    def route(self, messages: Iterable[Any]) -> list[Canonical]:
        """Map and publish a batch; returns its canonical events (for the identity stage)."""
        send = self.out.send
        mapper_map = self.mapper.map
        n_in = 0
        out: list[Canonical] = []
        for m in messages:
            n_in += 1
            try:
                events = (
                    parse_ingest(m.value)
                    if m.topic == INGEST_TOPIC
                    else mapper_map(m.topic, m.value)
                )
                for ev in events:
                    value, key = ev.to_json(), ev.key_bytes()
                    send(CANONICAL_TOPIC, value, key)
                    out.append(Canonical(value, key, m.topic, m.partition, m.offset))
            except MappingError as err:
                self._dead_letter(m, err)
        self.counts["in"] += n_in
        self.counts["out"] += len(out)
        return out


def register_canonical_agent(
    app: faust.App,
    mapper: Mapper,
    out: BatchProducer,
    change_topics: list[str],
    resolve: Resolve | None = None,
) -> CanonicalRouter:
    """The agent; ``resolve`` (the identity stage, ``streams/stages.py``) gets each batch's
    canonical events once they are on ``cdp.events``, before the input is acknowledged."""
    source = app.topic(*change_topics, INGEST_TOPIC, key_serializer="raw", value_serializer="raw")
    router = CanonicalRouter(mapper, out)

    @app.agent(source, name="canonical")
    async def canonical(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            # a bug, or a broker that stopped acknowledging
            async with crash_on_failure(app, "canonical batch"):
                handed = router.route(e.message for e in events)
                await out.flush()
            if resolve is not None and handed:
                await resolve(handed)  # crashes the worker itself on failure
            del events, handed  # not kept (messages and all) while the stream is idle

    return router
