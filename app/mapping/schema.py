"""JSON Schema validation of canonical events (``schemas/cdp.events.schema.json``).

Used for ``cdp.ingest``, where upstream systems that cannot be captured by CDC publish
canonical events directly, and by tests for every event the mapper produces.

Two engines, one schema: ``jsonschema-rs`` (Rust) decides whether an event is valid, in
~5 µs; only for an invalid one does the reference ``jsonschema`` (pure Python) run, to name
the offending path the way the error messages always have (its ``best_match``). Python's
engine alone took ~690 µs per event: ``cdp.ingest`` could not pass 1,500 events/s on a
core. Where the two could disagree (Python's ``$`` also matches before a final newline, Rust's
does not), an event Rust rejects is checked again by the reference, whose verdict stands; a
test checks that both agree on every valid and invalid example of the test suite.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from typing import Any

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped,unused-ignore]

from app.domain.records import normalize_identifier
from app.mapping.cloudevents import SOURCE_PREFIX, CanonicalEvent, record_key
from app.mapping.config import SCHEMA_PATH
from app.mapping.errors import MappingError

INGEST_TOPIC = "cdp.ingest"


@cache
def schema() -> dict[str, Any]:
    """The canonical-event JSON Schema (draft 2020-12)."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_bytes())
    return loaded


@cache
def _validator() -> Any:
    return Draft202012Validator(schema())


@cache
def _fast_validator() -> Any:
    # formats are annotations in draft 2020-12 (as for the reference validator above)
    return jsonschema_rs.Draft202012Validator(schema(), validate_formats=False)


def _invalid(reason: str, topic: str | None) -> MappingError:
    return MappingError(reason, topic, "invalid_event")


def validate_canonical(event: Any, topic: str | None = INGEST_TOPIC) -> None:
    """Raise :class:`MappingError` (code ``invalid_event``) unless ``event`` is a valid
    canonical CloudEvent: the JSON Schema plus the rules a schema cannot say (real calendar
    times, ``time == data.occurred_at``, ``source``/``subject`` consistent with ``data``,
    identifiers already normalised)."""
    if not _fast_validator().is_valid(event):
        error = best_match(_validator().iter_errors(event))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(event)"
            raise _invalid(f"{where}: {error.message[:300]}", topic)
    data = event["data"]
    for what, value in (("time", event["time"]), ("data/occurred_at", data["occurred_at"])):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise _invalid(f"{what}: not a real date/time {value!r}", topic) from None
    if event["time"] != data["occurred_at"]:
        raise _invalid("time: must equal data.occurred_at", topic)
    if event["source"] != SOURCE_PREFIX + data["source"]:
        raise _invalid(f"source: must be {SOURCE_PREFIX}<data.source>", topic)
    if event["subject"] != data["record_id"]:
        raise _invalid("subject: must equal data.record_id", topic)
    for i, ident in enumerate(data["identifiers"]):
        if normalize_identifier(ident["type"], ident["value"]) != ident["value"]:
            raise _invalid(f"data/identifiers/{i}/value: not normalised", topic)


def parse_ingest(value: bytes | None, topic: str = INGEST_TOPIC) -> list[CanonicalEvent]:
    """Decode and validate one ``cdp.ingest`` record; ``[]`` for a tombstone.

    The Kafka key of the result is ``<data.source>.<data.table>:<data.pk>``, as for CDC.
    """
    if not value:
        return []
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MappingError(f"unparseable JSON: {exc}", topic, "bad_json") from None
    validate_canonical(event, topic)
    data = event["data"]
    return [CanonicalEvent(record_key(data["source"], data["table"], data["pk"]), event)]
