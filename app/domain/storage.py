"""Compact stored form of a record history (``MemberState.to_bytes`` format 2).

One JSON array per record, fields in constructor order, so decoding needs no per-field
validation or time parsing (the form is written only by :func:`encode_records`):
``[type index, record_id, source, table, pk, time delta, [type, value, ...], *extra]``.
Times are integer microseconds since the epoch, each as the delta to the previous record
(histories are in time order, so the deltas are small and compress well); identifiers are
a flat list; ``extra`` are the type's own fields (a consent's pairs as ``[key, value]``
lists). Low-cardinality strings (source, table, identifier type, currency) are interned on
decode, as the parser does. Format 1 (``record_to_data`` dicts) stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from sys import intern
from typing import Any

from app.domain.records import (
    RECORD_CLASSES,
    ConsentChanged,
    Identifier,
    PurchaseCompleted,
    Record,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
TYPES = RECORD_CLASSES  # the index is the stored type tag
_TAG = {cls: i for i, cls in enumerate(TYPES)}
_EXTRA: dict[type[Record], tuple[str, ...]] = {cls: cls.__slots__ for cls in TYPES}


def to_us(at: datetime) -> int:
    """Integer microseconds since the epoch (exact)."""
    return (at - EPOCH) // _US


def from_us(us: int) -> datetime:
    """Inverse of :func:`to_us`: an aware UTC datetime."""
    return EPOCH + _US * us


def encode_records(records: Iterable[Record]) -> list[list[Any]]:
    """Rows of the compact form (see the module docstring)."""
    rows: list[list[Any]] = []
    prev = 0
    for r in records:
        cls = type(r)
        us = to_us(r.occurred_at)
        ids: list[str] = []
        for i in r.identifiers:
            ids += i
        row = [_TAG[cls], r.record_id, r.source, r.table, r.pk, us - prev, ids]
        prev = us
        row += [getattr(r, name) for name in _EXTRA[cls]]
        rows.append(row)
    return rows


def decode_records(rows: Iterable[list[Any]]) -> list[Record]:
    """Records of rows written by :func:`encode_records`, in the same order."""
    out: list[Record] = []
    prev = 0
    for row in rows:
        cls = TYPES[row[0]]
        prev += row[5]
        flat = row[6]
        ids = tuple(
            Identifier(intern(flat[k]), flat[k + 1]) for k in range(0, len(flat), 2)
        )
        extra = row[7:]
        if cls is ConsentChanged:
            extra = [tuple((k, v) for k, v in extra[0])]
        elif cls is PurchaseCompleted:
            extra[2] = intern(extra[2])
        out.append(
            cls(row[1], intern(row[2]), intern(row[3]), row[4], EPOCH + _US * prev, ids, *extra)
        )
    return out
