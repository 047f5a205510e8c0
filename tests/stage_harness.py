"""The identity and profile stages over a real PostgreSQL store, fed by hand.

Hand-made ``cdp.events`` messages go to the real :class:`IdentityStage`; its notifications go
to the real :class:`ProfileStage`; the producer is a fake that keeps what was sent. Used by
the store-level tests of erasure, the identity stage and the profile stage's state cache
(no broker, no Faust: the real-stack versions are in tests/integration).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text

from app.domain.program import load_program
from app.domain.records import Record, format_time, record_to_data
from app.settings import settings
from streams.erasure import OUTBOXES, TABLES
from streams.identity import IdentityStage
from streams.outbox import Outbox
from streams.profiles import ProfileStage
from streams.store import Store
from streams.topics import RESOLVED

__all__ = [
    "PARTS",
    "PROGRAM",
    "FakeProducer",
    "Msg",
    "Pipeline",
    "clean_store",
    "cloudevent",
    "count",
    "truncate",
]

PROGRAM = load_program(settings().program_file).compile()
PARTS = 8


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.headers: list[Sequence[tuple[str, bytes]] | None] = []  # parallel to ``sent``

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        self.sent.append((topic, value, key, partition))
        self.headers.append(headers)

    def flush_sync(self, timeout: float = 60.0) -> None:
        pass


@dataclass
class Msg:
    value: bytes
    key: bytes = b"k"
    topic: str = "cdp.events"
    partition: int = 0
    offset: int = 0


def cloudevent(r: Record) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": r.record_id.replace(":", "-"),
            "source": f"loyalty-cdp/{r.source}",
            "type": r.TYPE,
            "subject": r.record_id,
            "time": format_time(r.occurred_at),
            "datacontenttype": "application/json",
            "data": record_to_data(r),
        }
    )


class Pipeline:
    """The identity and profile stages over the real store, with a fake producer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.out = FakeProducer()
        # one outbox per stage, as in the worker: the profile stage defers its marks
        ident_outbox = Outbox(store, self.out, "unused:9092")  # type: ignore[arg-type]
        self.identity = IdentityStage(
            PROGRAM, store, self.out, ident_outbox, PARTS  # type: ignore[arg-type]
        )
        self.profiles = ProfileStage(
            PROGRAM, store, self.out, Outbox(store, self.out, "unused:9092"),  # type: ignore[arg-type]
            PARTS, clock="manual",
        )
        # reconciliation reads back what this pipeline's fake producer sent (the topics)
        self.profiles.outbox._ids_on_topic = self.ids_on_topic  # type: ignore[method-assign]

    def ids_on_topic(self, since_ms: int, topic: str) -> set[str]:
        return {orjson.loads(v)["id"] for t, v, _, _ in self.out.sent if t == topic and v}

    def feed(self, records: list[Record]) -> None:
        self.identity.process([Msg(cloudevent(r)) for r in records])
        self.drain()

    def drain(self) -> None:
        notes = [(p or 0, v) for t, v, _, p in self.out.sent if t == RESOLVED and v]
        self.out.sent = [m for m in self.out.sent if m[0] != RESOLVED]
        if notes:
            self.profiles.process(notes)


def count(store: Store, sql: str, **params: Any) -> int:
    with store.tx() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


#: Every table the stages and erasure write: emptied before each store-level test.
STATE_TABLES = (
    *TABLES, *(f"{t}_pending" for t in OUTBOXES), "anonymous_purchases", "erasure_audit", "clock",
    "resolved_pending",
)


def truncate(store: Store) -> None:
    with store.tx() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(STATE_TABLES)}"))


@contextmanager
def clean_store(dsn: str) -> Iterator[Store]:
    """A store over ``dsn`` with every stage table emptied; disposed afterwards."""
    store = Store(dsn)
    truncate(store)
    try:
        yield store
    finally:
        store.dispose()
