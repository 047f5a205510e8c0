"""Column value converters for Debezium JSON (``decimal.handling.mode=string``).

Each converter takes the raw JSON value (never ``None``: nulls are handled by the caller)
and the column name (for messages) and returns the canonical value or raises
:class:`MappingError`. They are written for speed: regex fast paths, no ``datetime`` or
``Decimal`` unless the input needs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from app.mapping.errors import MappingError

Converter = Callable[[Any, str], Any]

_TS_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}(?::?\d{2})?)\Z"
)
_UTC_OFFSETS = frozenset({"Z", "z", "+00:00", "-00:00", "+00", "+0000", "-0000", "-00"})
_CENTS_RE = re.compile(r"(-?)(\d{1,15})(?:\.(\d{1,2}))?\Z")
_CURRENCY_RE = re.compile(r"[A-Z]{3}\Z")
CANONICAL_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")


def _type_error(column: str, expected: str, value: Any) -> MappingError:
    return MappingError(
        f"column {column!r}: expected {expected}, got {type(value).__name__} {value!r:.40}",
        code="type_drift",
    )


def to_string(value: Any, column: str) -> str:
    if type(value) is str:
        return value
    if type(value) is int:  # integer keys (serial ids, line numbers) are fine as text
        return str(value)
    raise _type_error(column, "string", value)


def to_int(value: Any, column: str) -> int:
    if type(value) is int:
        return value
    raise _type_error(column, "integer", value)


def to_bool(value: Any, column: str) -> bool:
    if type(value) is bool:
        return value
    raise _type_error(column, "boolean", value)


def to_present(value: Any, column: str) -> bool:
    """True when a value is present (used for secrets such as a push token: never copied)."""
    return value is not None and value != ""


def to_timestamp(value: Any, column: str) -> str:
    """ISO-8601 (Debezium ZonedTimestamp) -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC.

    Any number of fraction digits (truncated to microseconds), ``Z`` or a numeric offset.
    """
    if type(value) is not str:
        raise _type_error(column, "ISO-8601 timestamp string", value)
    m = _TS_RE.match(value)
    if m is None:
        raise MappingError(f"column {column!r}: bad timestamp {value!r:.40}", code="bad_timestamp")
    date, clock, frac, offset = m.groups()
    frac6 = (frac or "")[:6].ljust(6, "0")
    if offset in _UTC_OFFSETS:
        return f"{date}T{clock}.{frac6}Z"
    if len(offset) == 3:
        offset += ":00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    try:
        dt = datetime.fromisoformat(f"{date}T{clock}.{frac6}{offset}").astimezone(UTC)
    except ValueError as exc:
        raise MappingError(
            f"column {column!r}: bad timestamp {value!r:.40}", code="bad_timestamp"
        ) from exc
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch_ms_to_timestamp(value: Any, what: str) -> str:
    """Epoch milliseconds (Debezium ``source.ts_ms``) -> canonical UTC timestamp."""
    if type(value) is not int:
        raise _type_error(what, "epoch milliseconds", value)
    secs, ms = divmod(value, 1000)
    try:
        base = datetime.fromtimestamp(secs, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MappingError(f"{what}: bad epoch {value}", code="bad_timestamp") from exc
    return f"{base:%Y-%m-%dT%H:%M:%S}.{ms:03d}000Z"


def to_cents(value: Any, column: str) -> int:
    """Decimal currency units (string, as Debezium writes ``numeric``) -> exact integer cents.

    Floats are refused: they mean the connector is not in ``decimal.handling.mode=string``
    and amounts may already have lost precision. Negative amounts are refused.
    """
    if type(value) is str:
        m = _CENTS_RE.match(value)
        if m is not None:
            sign, whole, frac = m.groups()
            if sign:
                raise MappingError(
                    f"column {column!r}: negative amount {value}", code="negative_amount"
                )
            return int(whole) * 100 + (int(frac.ljust(2, "0")) if frac else 0)
        try:
            dec = Decimal(value.strip())
        except InvalidOperation as exc:
            raise MappingError(
                f"column {column!r}: not a decimal amount {value!r:.40}", code="bad_amount"
            ) from exc
        if not dec.is_finite() or dec.adjusted() > 15:
            raise MappingError(
                f"column {column!r}: not a finite amount {value!r}", code="bad_amount"
            )
        if dec < 0:
            raise MappingError(
                f"column {column!r}: negative amount {value}", code="negative_amount"
            )
        cents = dec * 100
        if cents != cents.to_integral_value():
            raise MappingError(f"column {column!r}: sub-cent amount {value}", code="bad_amount")
        return int(cents)
    if type(value) is int:
        if value < 0:
            raise MappingError(
                f"column {column!r}: negative amount {value}", code="negative_amount"
            )
        return value * 100
    raise _type_error(column, "decimal string (decimal.handling.mode=string)", value)


def to_currency(value: Any, column: str) -> str:
    if type(value) is not str:
        raise _type_error(column, "ISO 4217 currency code", value)
    code = value.strip().upper()
    if _CURRENCY_RE.match(code) is None:
        raise MappingError(f"column {column!r}: bad currency {value!r:.20}", code="bad_currency")
    return code


def to_raw(value: Any, column: str) -> Any:
    return value


CONVERTERS: dict[str, Converter] = {
    "string": to_string,
    "int": to_int,
    "bool": to_bool,
    "present": to_present,
    "timestamp": to_timestamp,
    "cents": to_cents,
    "currency": to_currency,
    "raw": to_raw,
}
