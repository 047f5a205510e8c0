from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.mapping import CanonicalEvent, Mapper, validate_canonical
from app.mapping.bench import change_event

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors" / "mappings"
COMMIT_MS = 1_772_360_100_250  # 2026-03-01T10:15:00.250Z

Row = dict[str, Any]
MapFn = Callable[..., list[CanonicalEvent]]


def cdc(op: str, after: Row | None = None, before: Row | None = None) -> bytes:
    """A Debezium change-event value as the JsonConverter writes it with schemas off."""
    return orjson.dumps(change_event(op, after, before, ts_ms=COMMIT_MS))


@pytest.fixture(scope="session")
def mapper() -> Mapper:
    return Mapper.from_dir(MAPPINGS)


@pytest.fixture
def m(mapper: Mapper) -> MapFn:
    """``m(topic, op, after, before=None)`` -> events, each checked against the JSON Schema."""

    def run(topic: str, op: str, after: Row | None, before: Row | None = None) -> list[Any]:
        events = mapper.map(topic, cdc(op, after, before))
        for ev in events:
            validate_canonical(orjson.loads(ev.to_json()))
            assert ev.key == f"{ev.data['source']}.{ev.data['table']}:{ev.data['pk']}"
        return events

    return run
