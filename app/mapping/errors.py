"""Typed mapping errors: everything that sends a record to ``cdp.dlq``."""

from __future__ import annotations

#: Machine-readable categories of :class:`MappingError` (``MappingError.code``).
ERROR_CODES = frozenset(
    {
        "bad_json",  # the value is not a JSON object
        "bad_envelope",  # not a Debezium change event (no op / after / before)
        "unknown_topic",  # no mapping for this topic
        "missing_column",  # a column the mapping needs is absent or null
        "type_drift",  # a column has an unexpected JSON type or format
        "bad_timestamp",
        "bad_amount",  # not a decimal, sub-cent precision
        "negative_amount",
        "bad_currency",
        "bad_value",  # an int below its declared minimum, an unknown enum value ...
        "invalid_event",  # a canonical (ingest) event that fails the JSON Schema
    }
)


class MappingError(Exception):
    """A record that cannot be parsed or mapped.

    ``reason`` is a one-line human explanation (it goes to the ``cdp.dlq`` record together
    with the original bytes), ``topic`` the topic the record came from, ``code`` one of
    :data:`ERROR_CODES` for metrics and alerting.
    """

    __slots__ = ("code", "reason", "topic")

    def __init__(self, reason: str, topic: str | None = None, code: str = "bad_value") -> None:
        super().__init__(f"{topic}: {reason}" if topic else reason)
        self.reason = reason
        self.topic = topic
        self.code = code

    def with_topic(self, topic: str) -> MappingError:
        """Return a copy bound to ``topic`` (errors raised deep inside carry none)."""
        return MappingError(self.reason, topic, self.code)

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers for the ``cdp.dlq`` record that carries the original bytes."""
        return [
            ("dlq.reason", self.reason.encode()),
            ("dlq.code", self.code.encode()),
            ("dlq.topic", (self.topic or "").encode()),
        ]
