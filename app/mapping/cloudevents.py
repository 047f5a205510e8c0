"""CloudEvents 1.0 envelope of canonical events: ids, keys, serialisation (orjson)."""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import orjson

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
SOURCE_PREFIX = "loyalty-cdp/"


def event_id(source: str, table: str, pk: str, version: str, type_: str) -> str:
    """``sha256("<source>|<table>|<pk>|<version>|<type>")[:32]`` (hex): same input, same id."""
    return sha256(f"{source}|{table}|{pk}|{version}|{type_}".encode()).hexdigest()[:32]


def record_key(source: str, table: str, pk: str) -> str:
    """Kafka key of a canonical event: ``<source>.<table>:<pk>`` (primary keys only, no PII)."""
    return f"{source}.{table}:{pk}"


def envelope(
    id_: str, source: str, type_: str, subject: str, time: str, data: Any
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event (attribute order fixed: stable bytes)."""
    return {
        "specversion": SPECVERSION,
        "id": id_,
        "source": SOURCE_PREFIX + source,
        "type": type_,
        "subject": subject,
        "time": time,
        "datacontenttype": CONTENT_TYPE,
        "data": data,
    }


@dataclass(slots=True, frozen=True)
class CanonicalEvent:
    """One message for ``cdp.events``: the Kafka key and the CloudEvent."""

    key: str
    event: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def time(self) -> str:
        return str(self.event["time"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data

    def key_bytes(self) -> bytes:
        return self.key.encode()

    def to_json(self) -> bytes:
        return serialize(self.event)


def serialize(event: dict[str, Any]) -> bytes:
    """CloudEvent dict -> compact JSON bytes (orjson; deterministic for a given dict)."""
    return orjson.dumps(event)


def deserialize(value: bytes) -> Any:
    return orjson.loads(value)
